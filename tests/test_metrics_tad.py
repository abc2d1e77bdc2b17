"""TAD: a hand-computed table, and agreement with a literal torch transcription of the
authors' ``evaluate_renew.py`` / ``ae_utils_exp.py`` (float32, loops, as they ran it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dydis.errors import ConfigError, DataError
from dydis.metrics import tad, tad_details

A0 = np.array([0, 0, 0, 0, 1, 1, 1, 1])
A1 = np.array([0, 1, 0, 1, 0, 1, 0, 1])
A2 = np.array([0, 0, 1, 1, 0, 0, 1, 1])


def hand_table():
    """3 codes x 4 attributes whose AUROCs are worked out in the test's comments."""
    codes = np.stack([A0 * 1.0, A1 * 0.5, A2 * 0.1], axis=1)  # code 2's range 0.1 <= 0.2: skipped
    attributes = np.stack([A0, A1, A2, A0], axis=1) * 2 - 1  # +-1 as in CelebA's file
    return codes, attributes


@pytest.mark.parametrize("protocol", ["dis-dis", "nashae"])
def test_hand_computed_table(protocol):
    codes, attributes = hand_table()
    d = tad_details(codes, attributes, protocol=protocol)
    # code 0 separates attribute 0 exactly: "code >= thr" gives (FPR, TPR) = (1, 1) at t = 0
    # and (0, 1) above, so the right-endpoint area is 1. Against an independent attribute it
    # gives (1, 1) and (0.5, 0.5): area 0.5 upwards, 0.25 downwards; the AUROC is 0.5.
    expected = np.array([
        [1.0, 0.5, 0.5],
        [0.5, 1.0, 0.5],
        [0.5, 0.5, 0.5],  # code 2 would separate it, but is skipped
        [1.0, 0.5, 0.5],
    ])
    np.testing.assert_allclose(d["auroc"], expected, atol=1e-12)
    np.testing.assert_allclose(d["gap"], [0.5, 0.5, 0.0, 0.5], atol=1e-12)
    # attributes 0 and 3 are copies: each explains all of the other's entropy
    np.testing.assert_allclose(d["entropy_share"], [1.0, 0.0, 0.0, 1.0], atol=1e-12)
    assert d["captured"].tolist() == [False, True, False, False]
    assert tad(codes, attributes, protocol=protocol) == {"tad": 0.5, "tad_captured": 1.0}


def test_zero_one_and_pm_one_attributes_agree():
    codes, attributes = hand_table()
    assert tad(codes, (attributes > 0).astype(int)) == tad(codes, attributes)


def ref_calculate_auroc(targ, targ_ind, lat_ind, z, _ma, _mi, stepsize):
    """ae_utils_exp.calculate_auroc, on CPU."""
    thr = torch.arange(0.0, 1.0001, step=stepsize)
    total = targ.shape[0]
    pos_total = targ.sum(dim=0)[targ_ind]
    neg_total = total - pos_total
    p_fpr_tpr = torch.zeros((thr.shape[0], 2))
    n_fpr_tpr = torch.zeros((thr.shape[0], 2))
    for i, t in enumerate(thr):
        ma, mi = _ma[lat_ind], _mi[lat_ind]
        th = t * (ma - mi) + mi
        for is_pos, store in ((True, p_fpr_tpr), (False, n_fpr_tpr)):
            pred = torch.ones((z.shape[0], targ.shape[1]))
            pred[:, targ_ind] = (z[:, lat_ind] >= th if is_pos else z[:, lat_ind] < th).type(torch.int)
            tp = torch.logical_and(pred == targ, pred).sum(dim=0)[targ_ind]
            fp = torch.logical_and(pred != targ, pred).sum(dim=0)[targ_ind]
            store[i][0] = fp / neg_total
            store[i][1] = tp / pos_total
    areas = []
    for fpr_tpr in (p_fpr_tpr, n_fpr_tpr):
        s = fpr_tpr.sort(dim=0)[0]
        areas.append((s[1:, 1] * (s[1:, 0] - s[:-1, 0])).sum())
    return max(areas[0], areas[1])


def ref_tad(z, targ, stepsize):
    """The TAD part of evaluate_renew.evaluate_tad (after the PCA)."""
    n_attr = targ.shape[1]
    _ma, _mi = z.max(dim=0)[0], z.min(dim=0)[0]
    au = torch.ones((n_attr, z.shape[1])) * 0.5
    for i in range(n_attr):
        for j in range(z.shape[1]):
            if _ma[j] - _mi[j] > 0.2:
                au[i, j] = ref_calculate_auroc(targ, i, j, z, _ma, _mi, stepsize)
    max_aur, argmax_aur = torch.max(au, dim=1)
    diffs = torch.zeros(n_attr)
    for ind in range(n_attr):
        nxt = au[ind].clone()
        nxt[argmax_aur[ind]] = 0.0
        diffs[ind] = max_aur[ind] - nxt.max()
    not_targ = 1 - targ
    j_prob = lambda x, y: torch.logical_and(x, y).sum() / x.numel()
    mi = lambda jp, px, py: 0.0 if jp == 0.0 or px == 0.0 or py == 0.0 else jp * torch.log(jp / (px * py))
    mi_mat = torch.zeros((n_attr, n_attr))
    for i in range(n_attr):
        i_mp = targ[:, i].sum() / targ.shape[0]
        for j in range(n_attr):
            j_mp = targ[:, j].sum() / targ.shape[0]
            for a, b, pi, pj in ((not_targ, not_targ, 1 - i_mp, 1 - j_mp), (not_targ, targ, 1 - i_mp, j_mp),
                                 (targ, not_targ, i_mp, 1 - j_mp), (targ, targ, i_mp, j_mp)):
                mi_mat[i][j] += mi(j_prob(a[:, i], b[:, j]), pi, pj)
    mi_maxes = (mi_mat * (1 - torch.eye(n_attr))).max(dim=1)[0]
    ent_red_prop = 1.0 - (mi_mat.diag() - mi_maxes) / mi_mat.diag()
    filt = (max_aur >= 0.75).logical_and(ent_red_prop <= 0.2)
    return au, diffs[filt].sum().item(), int(filt.sum())


@pytest.mark.parametrize("protocol, step", [("dis-dis", 0.1), ("nashae", 0.01)])
def test_matches_the_authors_torch_code(protocol, step):
    rng = np.random.default_rng(0)
    n = 400
    latent = rng.normal(size=(n, 4))
    attributes = np.stack([
        latent[:, 0] > 0, latent[:, 1] > 0.5, (latent[:, 0] + latent[:, 2]) > 0,
        rng.random(n) < 0.3, latent[:, 3] + 0.8 * rng.normal(size=n) > 0,
    ], axis=1).astype(np.int64)
    codes = np.concatenate([latent + 0.3 * rng.normal(size=latent.shape),
                            0.04 * rng.normal(size=(n, 2))], axis=1).astype(np.float32)
    au, tad_ref, captured_ref = ref_tad(torch.from_numpy(codes), torch.from_numpy(attributes), step)
    d = tad_details(codes, attributes, protocol=protocol)
    np.testing.assert_allclose(d["auroc"], au.numpy(), atol=2e-6)
    assert d["tad"] == pytest.approx(tad_ref, abs=1e-5)
    assert d["tad_captured"] == captured_ref >= 2


def test_draws_the_protocol_number_of_images_and_reduces_vectors():
    rng = np.random.default_rng(1)
    n = 1500
    attr = (rng.random((n, 3)) < 0.5).astype(np.int64)
    units = attr[:, :, None] * rng.normal(size=(1, 3, 4)) + 0.2 * rng.normal(size=(n, 3, 4))
    a = tad_details(units, attr, protocol="nashae", seed=0)  # 1000 of the 1500 images, PCA on them
    b = tad_details(units, attr, protocol="nashae", seed=1)
    assert a["tad_captured"] == b["tad_captured"] == 3.0
    assert a["tad"] != b["tad"]  # another draw of images
    assert tad(units, attr, protocol="dis-dis") == tad(units, attr, protocol="dis-dis", seed=5)  # all rows


def test_bad_inputs():
    codes, attributes = hand_table()
    with pytest.raises(ConfigError, match="protocol"):
        tad(codes, attributes, protocol="encdiff")
    with pytest.raises(DataError, match="binary"):
        tad(codes, attributes * 2)
    with pytest.raises(DataError, match="aligned"):
        tad(codes[:5], attributes)
