"""Feature alignment, eq. (6) / Algorithm 3, in both modes."""

from __future__ import annotations

import warnings

import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from dydis.dyga import DyGA
from dydis.dyga.align import DeltaStats, alignment_delta, choose_anchor_weights, gumbel_softmax

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


CENTRES = torch.tensor([[[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]], [[2.0, 0.5, 1.0], [0.5, 2.0, 4.0]]], dtype=F64)


def two_blob_units(seed: int = 0) -> torch.Tensor:
    """[2, 400, 3] positive features: each unit has two tight blobs (``CENTRES``)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(2).repeat_interleave(200)
    return CENTRES[:, labels] + 0.05 * torch.randn(2, 400, 3, generator=g, dtype=F64)


@pytest.fixture(scope="module")
def fitted() -> dict[str, DyGA]:
    """Two Gaussians per unit, started near the blobs: with two random starting points in
    one blob, 30 EM iterations may not pull the two (nearly equal) Gaussians apart."""
    x = two_blob_units()
    start = CENTRES + 0.2
    return {mode: DyGA(mode, max_components=2, random_split=0.0, means_init=start).fit(x.transpose(0, 1))
            for mode in ("paper", "official")}


def batch() -> torch.Tensor:
    """[B=3, U=2, D=3] features near known blobs."""
    return torch.tensor([[[1.1, 0.9, 1.0], [2.1, 0.4, 1.1]],
                         [[2.8, 3.1, 3.0], [0.4, 2.2, 3.9]],
                         [[1.0, 1.2, 0.8], [0.6, 1.9, 4.1]]], dtype=F64)


def test_paper_alignment_matches_eq6_by_hand(fitted):
    model = fitted["paper"]
    c = batch()
    # anchors in raw feature space, one per blob
    anchors = model.anchors_
    blob = torch.tensor([[0, 0], [1, 1], [0, 1]])  # which blob each (sample, unit) sits in
    for u in range(2):
        order = torch.cdist(CENTRES[u], anchors[u]).argmin(1)
        blob[:, u] = order[blob[:, u]]
    want = torch.empty_like(c)
    for b in range(3):
        for u in range(2):
            mu = anchors[u, blob[b, u]]
            delta = 0.1 * torch.exp(-((c[b, u] - mu) / c[b, u]).abs().mean())
            want[b, u] = c[b, u] + delta * (mu - c[b, u])
    torch.testing.assert_close(model.align(c, hard=True), want)
    # Gumbel-softmax with tau = 1e-4 picks the same anchors for confidently assigned points
    soft = model.align(c, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(soft, want)
    assert torch.equal(model.predict(c), blob)


def test_official_alignment_mixes_normalised_anchors_with_one_batch_scalar(fitted):
    model = fitted["official"]
    c = batch()
    hi = c.amax((0, 2))
    scale = hi - c.amin((0, 2)) + 1e-6
    z = (c - hi[:, None]) / scale[:, None]  # the batch's own statistics
    k = model.predict(c)
    cq = torch.stack([model.means_[u, k[:, u]] for u in range(2)], 1)  # anchors in the [-1, 0] space
    lam = 0.1 * torch.exp(-((c - cq) / c).abs().mean())
    torch.testing.assert_close(model.align(c), c + lam * (cq - c))
    assert (z >= -1).all() and (z <= 0).all()
    # exactly one ReLU zero anywhere makes the released code's delta vanish for the whole batch
    zeroed = c.clone()
    zeroed[0, 0, 0] = 0.0
    torch.testing.assert_close(model.align(zeroed), zeroed)


def test_alignment_passes_gradients_to_the_features(fitted):
    for mode, model in fitted.items():
        c = batch().requires_grad_()
        out = model.align(c, generator=torch.Generator().manual_seed(1))
        (out * torch.linspace(0.5, 1.5, out.numel(), dtype=F64).view_as(out)).sum().backward()
        assert c.grad is not None and torch.isfinite(c.grad).all() and c.grad.abs().sum() > 0, mode
    # the hard-assignment path is differentiable where the argmax does not change: check exactly
    model = fitted["paper"]
    assert torch.autograd.gradcheck(lambda c: model.align(c, hard=True, delta_grad="full"),
                                    (batch().requires_grad_(),))


def test_a_detached_delta_is_a_coefficient(fitted):
    # paper mode's default: with the anchor fixed (argmax), d c~ / d c = (1 - delta) I exactly
    model = fitted["paper"]
    c = batch()
    delta = model.alignment(c, hard=True).delta  # [B, U, 1]
    jacobian = torch.autograd.functional.jacobian(lambda c: model.align(c, hard=True), c)  # [B, U, D, B, U, D]
    want = torch.diag_embed((1 - delta).expand_as(c).flatten())
    torch.testing.assert_close(jacobian.reshape(c.numel(), c.numel()), want)
    assert model.settings_["delta_grad"] == "detach" and fitted["official"].settings_["delta_grad"] == "full"


def test_relu_zeros_give_a_vanishing_but_finite_delta(fitted):
    c = batch()
    c[0, 1, 2] = 0.0
    out = fitted["paper"].align(c, hard=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 1], c[0, 1])  # delta ~ 0.1 exp(-1e6 / 3)
    assert not torch.equal(out[1], c[1])  # other samples still move


def test_delta_is_bounded_by_lambda_and_shrinks_with_distance():
    c = torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]]])
    mu = torch.tensor([[[1.0, 1.0]], [[3.0, 1.0]]])
    delta = alignment_delta(c, mu, 0.1)
    assert delta[0].item() == pytest.approx(0.1)
    assert delta[1].item() == pytest.approx(0.1 * torch.exp(torch.tensor(-1.0)).item())
    batch_delta = alignment_delta(c, mu, 0.1, scope="batch")  # the mean ratio over everything is 0.5
    assert batch_delta.item() == pytest.approx(0.1 * torch.exp(torch.tensor(-0.5)).item())


def test_gumbel_softmax_is_one_hot_at_tiny_temperature_and_samples_the_posterior():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1])).expand(4000, 3)
    y = gumbel_softmax(logits, 1e-4, g)
    assert torch.allclose(y.sum(-1), torch.ones(4000))
    assert ((y > 0.999).sum(-1) == 1).all()
    freq = y.argmax(-1).bincount(minlength=3) / 4000.0
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03, rtol=0)


def test_probability_logits_make_the_choice_nearly_uniform():
    # Algorithm 3 as written feeds responsibilities (not their logs) to the Gumbel-softmax
    log_resp = torch.log(torch.tensor([1.0 - 1e-9, 1e-9])).expand(4000, 2)
    valid = torch.ones(2, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    as_log = choose_anchor_weights(log_resp, valid, hard=False, tau=1e-4, logits="log", generator=g)
    as_prob = choose_anchor_weights(log_resp, valid, hard=False, tau=1e-4, logits="prob", generator=g)
    assert as_log[:, 0].mean() > 0.999
    expected = torch.e / (torch.e + 1)  # softmax of (1, 0)
    assert abs(as_prob[:, 0].mean().item() - expected) < 0.03


def test_alignment_keeps_the_extractors_gradient_bounded_on_relu_features():
    # A ReLU layer whose units sit near 1 in most coordinates and at the ReLU's kink in four:
    # exact zeros and tiny values, like a ReLU extractor's. Eq. 6's delta divides by c, so its
    # gradient grows like mu / c^2 there.
    U, D, H, B = 4, 32, 8, 128
    g = torch.Generator().manual_seed(0)
    scale = torch.full((U, D), 0.3)
    scale[:, :4] = 0.005
    weight = (torch.randn(H, U * D, generator=g) * scale.flatten() / H ** 0.5).requires_grad_()
    bias = torch.ones(U, D)
    bias[:, :4] = 0.0
    bias = bias.flatten().requires_grad_()

    def layer(z):
        return torch.relu(z @ weight + bias).view(-1, U, D)

    with torch.no_grad():
        features = layer(torch.randn(2000, H, generator=g))
    assert 0.02 < float((features == 0).float().mean()) < 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = DyGA("paper", random_state=0).fit(features)

    def gradient_norm(z, upstream, **align):
        weight.grad = bias.grad = None
        c = layer(z)
        out = model.align(c, generator=torch.Generator().manual_seed(0), **align) if align else c
        (out * upstream).sum().backward()
        return float(torch.cat([weight.grad.flatten(), bias.grad.flatten()]).norm())

    bounded, through_delta = [], []
    for _ in range(4):
        z, upstream = torch.randn(B, H, generator=g), torch.randn(B, U, D, generator=g)
        plain = gradient_norm(z, upstream)
        bounded.append(gradient_norm(z, upstream, lam=0.1) / plain)  # the default: delta detached
        through_delta.append(gradient_norm(z, upstream, lam=0.1, delta_grad="full") / plain)
    assert max(bounded) <= 2.0, bounded
    assert sum(through_delta) / len(through_delta) > 2.0, through_delta


def test_delta_statistics_average_over_pairs_and_start_afresh_when_read():
    stats = DeltaStats()
    assert stats.read() == {}
    stats.add(torch.tensor([[[0.1], [0.0]], [[0.05], [1e-4]]]))  # [B=2, U=2, 1]
    stats.add(torch.full((1, 2, 1), 0.02, requires_grad=True))
    got = stats.read()
    assert got["delta_mean"] == pytest.approx((0.1 + 0.05 + 1e-4 + 0.04) / 6)
    assert got["delta_below_1e-3"] == pytest.approx(2 / 6)
    assert stats.read() == {}
