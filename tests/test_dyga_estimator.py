"""The DyGA estimator: scikit-learn contract, modes, persistence, degenerate units."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from dydis.dyga import DyGA, DyGAInputError, DyGAParameterError
from dydis.errors import ConfigError, DataError

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def units(U=3, n=300, D=4, seed=0) -> torch.Tensor:
    """[n, U, D] latent-unit-like features: a scalar with 5 values pushed through a small ReLU map."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 5, (U, n), generator=g).double() / 2 + 0.02 * torch.randn(U, n, generator=g, dtype=F64)
    w = torch.randn(U, 1, D, generator=g, dtype=F64)
    b = 0.3 * torch.randn(U, 1, D, generator=g, dtype=F64)
    x = torch.relu(s.unsqueeze(-1) * w + b) + 0.01 * torch.randn(U, n, D, generator=g, dtype=F64)
    return x.transpose(0, 1).contiguous()


@pytest.fixture(scope="module")
def fitted() -> DyGA:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return DyGA(max_components=8).fit(units())


def test_init_only_stores_and_fit_returns_self():
    model = DyGA("official", n_init=4, max_components=6, psi=0.3)
    assert model.get_params()["n_init"] == 4 and not hasattr(model, "means_")
    assert clone(model).get_params() == model.get_params()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert model.fit(units(U=1, n=100)) is model


def test_unfitted_model_refuses_to_work():
    model = DyGA()
    with pytest.raises(NotFittedError):
        model.align(torch.zeros(2, 3, 4))
    with pytest.raises(NotFittedError):
        model.responsibilities(torch.zeros(2, 3, 4))
    with pytest.raises(NotFittedError):
        model.state_dict()


@pytest.mark.parametrize("params", [dict(mode="both"), dict(phi=0.3), dict(covariance="diag"), dict(max_iter=0),
                                    dict(random_split=1.5), dict(reg_covar=0.0), dict(hard="yes"),
                                    dict(n_jobs=0)])
def test_bad_parameters_raise_a_config_error(params):
    with pytest.raises(DyGAParameterError) as err:
        DyGA(**params).fit(units(U=1, n=20))
    assert isinstance(err.value, ConfigError) and isinstance(err.value, ValueError)


def test_bad_features_raise_a_data_error():
    x = units(U=1, n=20)
    x[3, 0, 1] = float("nan")
    for bad in (x, units(U=1, n=20)[:, 0], torch.zeros(0, 2, 4), torch.zeros(5, 2, 4, dtype=torch.long)):
        with pytest.raises(DyGAInputError) as err:
            DyGA().fit(bad)
        assert isinstance(err.value, DataError) and isinstance(err.value, ValueError)


def test_fit_takes_points_units_dims_and_names_the_transpose_for_units_points_dims():
    x = units(U=3, n=40)  # [points, units, dims], the layout of align and of the extractor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = DyGA(max_components=4).fit(x)
    assert model.n_units_ == 3 and model.responsibilities(x[:5]).shape[:2] == (5, 3)
    with pytest.raises(DyGAInputError, match=r"more units \(40\) than points \(3\).*transpose\(0, 1\)"):
        DyGA().fit(x.transpose(0, 1))  # the old [units, points, dims] layout


def test_fitted_state_is_padded_per_unit(fitted):
    K = fitted.means_.shape[1]
    assert fitted.means_.shape == (3, K, 4) and fitted.weights_.shape == (3, K)
    assert fitted.n_components_.tolist() == fitted.component_mask_.sum(1).tolist()
    assert torch.allclose(fitted.weights_.sum(1), torch.ones(3, dtype=F64))
    assert (fitted.weights_[~fitted.component_mask_] == 0).all()
    assert (fitted.noise_variances_[fitted.component_mask_] > 0).all()  # HDDC b_k
    assert (fitted.intrinsic_dims_[fitted.component_mask_] >= 1).all()
    assert fitted.covariances_.shape == (3, K, 4, 4)
    assert fitted.settings_["covariance"] == "hddc" and fitted.settings_["hard"] is False


def test_responsibilities_sum_to_one_and_skip_padded_slots(fitted):
    c = units(seed=1)[:50]  # [B, U, D]
    r = fitted.responsibilities(c)
    assert r.shape == (50, 3, fitted.means_.shape[1])
    torch.testing.assert_close(r.sum(-1), torch.ones(50, 3, dtype=F64))
    assert (r[:, ~fitted.component_mask_] == 0).all()
    assert torch.equal(fitted.predict(c), r.argmax(-1))


def test_fitting_is_deterministic_for_a_fixed_seed():
    x = units()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a, b = DyGA(max_components=10, random_state=3).fit(x), DyGA(max_components=10, random_state=3).fit(x)
        c = DyGA(max_components=10, random_state=4).fit(x)
    for name in ("means_", "weights_", "covariances_", "log_likelihood_"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.n_splits_, c.n_splits_) or not torch.allclose(a.log_likelihood_, c.log_likelihood_)


@pytest.mark.parametrize("mode", ["paper", "official"])
def test_a_units_anchors_do_not_depend_on_how_units_are_grouped(mode):
    # each unit draws from its own stream: fitting the units in one batch, in two groups on
    # two threads, or in groups of 1, 1 and 2 units on three threads gives the same fit
    x = units(U=4, n=300)
    n_init = 2 if mode == "paper" else 8  # paper mode needs no split from 8 starts on 5 values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        batched = DyGA(mode, n_init=n_init, max_components=10, n_jobs=1).fit(x)
        pairs = DyGA(mode, n_init=n_init, max_components=10, n_jobs=2).fit(x)
        uneven = DyGA(mode, n_init=n_init, max_components=10, n_jobs=3).fit(x)
    assert batched.n_splits_.sum() > 0  # splits (random draws) took part
    for model in (pairs, uneven):
        assert torch.equal(model.n_components_, batched.n_components_)
        assert torch.equal(model.n_splits_, batched.n_splits_) and torch.equal(model.n_merged_, batched.n_merged_)
        torch.testing.assert_close(model.anchors_, batched.anchors_, rtol=0, atol=1e-9)
        torch.testing.assert_close(model.log_likelihood_, batched.log_likelihood_, rtol=0, atol=1e-9)
    # a process fitting units 1 and 3 only (as one rank of several) gets their anchors of the full fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        part = DyGA(mode, n_init=n_init, max_components=10).fit(x[:, [1, 3]], units=[1, 3])
    assert torch.equal(part.n_components_, batched.n_components_[[1, 3]])
    k = int(part.n_components_.max())
    torch.testing.assert_close(part.anchors_[:, :k], batched.anchors_[[1, 3], :k], rtol=0, atol=1e-9)
    with pytest.raises(DyGAInputError):
        DyGA(mode).fit(x[:, [1, 3]], units=[1, 1])


def test_state_dict_round_trips_through_torch_save(fitted):
    buffer = io.BytesIO()
    torch.save(fitted.state_dict(), buffer)
    buffer.seek(0)
    restored = DyGA("official").load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.get_params() == fitted.get_params() and restored.settings_ == fitted.settings_
    c = units(seed=2)[:20]
    torch.testing.assert_close(restored.responsibilities(c), fitted.responsibilities(c))
    for seed in range(2):
        torch.testing.assert_close(restored.align(c, generator=torch.Generator().manual_seed(seed)),
                                   fitted.align(c, generator=torch.Generator().manual_seed(seed)))
    with pytest.raises(DyGAInputError):
        DyGA().load_state_dict({"format": 99})


def test_a_format_1_state_keeps_the_gradient_through_delta_it_was_trained_with(fitted):
    state = fitted.state_dict()
    state["format"] = 1
    state["settings"] = {k: v for k, v in state["settings"].items() if k not in ("merge", "delta_grad")}
    del state["n_merged"]
    restored = DyGA().load_state_dict(state)
    assert restored.settings_["delta_grad"] == "full" and restored.settings_["merge"] == "none"
    assert restored.n_merged_.tolist() == [0, 0, 0]
    assert fitted.state_dict()["format"] == 2 and fitted.settings_["delta_grad"] == "detach"


def test_official_mode_and_single_switches():
    x = units(U=2, n=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        official = DyGA("official", max_components=6).fit(x)
        mixed = DyGA("official", max_components=6, covariance="hddc", hard=False).fit(x)
    assert official.settings_ == dict(covariance="full", init_scale="identity", child_init="random",
                                      split_rule="official", merge="none", child_weights="half", align_stats="batch", hard=True,
                                      delta_scope="batch", anchor_space="normalized", delta_grad="full",
                                      gumbel_logits="log")
    assert (official.noise_variances_ == 0).all() and (official.intrinsic_dims_[official.component_mask_] == 4).all()
    assert mixed.settings_["covariance"] == "hddc" and mixed.settings_["split_rule"] == "official"
    assert (mixed.noise_variances_[mixed.component_mask_] > 0).all()


def test_non_convergence_is_a_warning():
    with pytest.warns(ConvergenceWarning):
        model = DyGA(max_iter=1, tol=0.0).fit(units(U=1, n=100))
    assert not model.converged_.any() and model.n_iter_.tolist() == [1]


def test_degenerate_units_degrade_gracefully():
    # unit 0: constant features; unit 1: fewer points (5) than starting Gaussians (8)
    x = torch.stack([torch.full((5, 4), 0.7, dtype=F64), units(U=1, n=5)[:, 0]], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = DyGA(n_init=8).fit(x)
    assert (model.n_components_ >= 1).all() and (model.n_components_ <= 5).all()
    assert torch.isfinite(model.means_).all() and torch.isfinite(model.log_likelihood_).all()
    torch.testing.assert_close(model.anchors_[0][model.component_mask_[0]],
                               torch.full((int(model.n_components_[0]), 4), 0.7, dtype=F64))
    c = x[:3]
    assert torch.isfinite(model.align(c)).all()
    # a single point still fits one Gaussian
    assert DyGA().fit(x[:1, :1]).n_components_.tolist() == [1]


def test_float32_features_fit_in_float32():
    x = units(U=2, n=200).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = DyGA(max_components=6).fit(x)
    assert model.means_.dtype == torch.float32
    c = x[:8].clone().requires_grad_()
    out = model.align(c)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert torch.isfinite(c.grad).all()


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## DyGA on its own", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # the example saves anchors.pt
    names: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # uniform noise needs more than 30 iterations
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, "README.md", "exec"), names)
    dyga, batch = names["dyga"], names["batch"]
    assert names["aligned"].shape == batch.shape
    names["aligned"].sum().backward()
    assert batch.grad is not None and bool(batch.grad.abs().sum() > 0)
    torch.testing.assert_close(names["resp"].sum(-1), torch.ones(64, 4))
    restored = DyGA().load_state_dict(torch.load(tmp_path / "anchors.pt", weights_only=True))
    torch.testing.assert_close(restored.responsibilities(batch.detach()), names["resp"])
    assert dyga.n_components_.shape == (4,)
