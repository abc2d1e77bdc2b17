"""Agreement with the reference implementations, re-computed the slow, literal way.

Each ``ref_*`` function below follows the loop structure of the reference
(disentanglement_lib's ``evaluation/metrics/*.py``, the authors' InfoMEC copy): codes-first
arrays, one ``np.var`` per vote, one classifier per pair, and a ground-truth object that
draws factors the way disentanglement_lib's ``SplitDiscreteStateSpace`` does and finds rows
the way its ``Shapes3D`` does (dot product with the factor bases). Our vectorised metrics must
give the same numbers from the same ``RandomState(0)``.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.feature_selection import mutual_info_classif
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, mutual_info_score, roc_auc_score
from sklearn.preprocessing import LabelEncoder, MultiLabelBinarizer, StandardScaler
from sklearn.svm import LinearSVC

from dydis.metrics import (
    GroundTruth, dci_importance, factor_vae, grid_factors, infomec_details, mig,
    modularity_explicitness, sap_score_matrix,
)
from dydis.metrics.dci import completeness, disentanglement

SIZES = (3, 4, 2, 5)
# the literal reference loops fit LinearSVC / LogisticRegression with their iteration limits
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


class RefData:
    """disentanglement_lib's ground truth for a full grid; an "observation" is a row index."""

    def __init__(self, sizes):
        self.factor_sizes = list(sizes)
        self.num_factors = len(sizes)
        self.factor_bases = np.prod(sizes) / np.cumprod(sizes)

    def sample_factors(self, num, random_state):
        factors = np.zeros((num, self.num_factors), dtype=np.int64)
        for i in range(self.num_factors):
            factors[:, i] = random_state.randint(self.factor_sizes[i], size=num)
        return factors

    def sample_observations_from_factors(self, factors, random_state):
        return np.array(np.dot(factors, self.factor_bases), dtype=np.int64)

    def sample(self, num, random_state):
        factors = self.sample_factors(num, random_state)
        return factors, self.sample_observations_from_factors(factors, random_state)

    def sample_observations(self, num, random_state):
        return self.sample(num, random_state)[1]


def ref_batch_factor_code(data, rep, num_points, random_state, batch_size):
    """generate_batch_factor_code: codes (num_codes, n), factors (num_factors, n)."""
    representations, factors, i = None, None, 0
    while i < num_points:
        m = min(num_points - i, batch_size)
        f, obs = data.sample(m, random_state)
        if i == 0:
            factors, representations = f, rep(obs)
        else:
            factors = np.vstack((factors, f))
            representations = np.vstack((representations, rep(obs)))
        i += m
    return np.transpose(representations), np.transpose(factors)


def ref_histogram_discretize(target, num_bins=20):
    discretized = np.zeros_like(target)
    for i in range(target.shape[0]):
        discretized[i, :] = np.digitize(target[i, :], np.histogram(target[i, :], num_bins)[1][:-1])
    return discretized


def ref_discrete_mutual_info(mus, ys):
    m = np.zeros([mus.shape[0], ys.shape[0]])
    for i in range(mus.shape[0]):
        for j in range(ys.shape[0]):
            m[i, j] = mutual_info_score(ys[j, :], mus[i, :])
    return m


def ref_factor_vae(data, rep, rs, batch_size, num_train, num_eval, num_var, threshold):
    global_var = np.var(rep(data.sample_observations(num_var, rs)), axis=0, ddof=1)
    active = np.sqrt(global_var) >= threshold

    def votes_for(num_points):
        votes = np.zeros((data.num_factors, global_var.shape[0]), dtype=np.int64)
        for _ in range(num_points):
            k = rs.randint(data.num_factors)
            factors = data.sample_factors(batch_size, rs)
            factors[:, k] = factors[0, k]
            reps = rep(data.sample_observations_from_factors(factors, rs))
            local_var = np.var(reps, axis=0, ddof=1)
            votes[k, np.argmin(local_var[active] / global_var[active])] += 1
        return votes

    train = votes_for(num_train)
    classifier = np.argmax(train, axis=0)
    other = np.arange(train.shape[1])
    evals = votes_for(num_eval)
    return np.sum(evals[classifier, other]) / np.sum(evals), int(active.sum())


def ref_dci(data, rep, rs, num_train, num_test):
    mus_train, ys_train = ref_batch_factor_code(data, rep, num_train, rs, 16)
    mus_test, ys_test = ref_batch_factor_code(data, rep, num_test, rs, 16)
    importance = np.zeros((mus_train.shape[0], ys_train.shape[0]))
    test_acc = []
    for i in range(ys_train.shape[0]):
        model = GradientBoostingClassifier(random_state=0)  # reference: None (tie order only)
        model.fit(mus_train.T, ys_train[i, :])
        importance[:, i] = np.abs(model.feature_importances_)
        test_acc.append(np.mean(model.predict(mus_test.T) == ys_test[i, :]))
    return importance, np.mean(test_acc)


def ref_entropy_scores(importance):
    from scipy.stats import entropy

    per_code = 1.0 - entropy(importance.T + 1e-11, base=importance.shape[1])
    per_factor = 1.0 - entropy(importance + 1e-11, base=importance.shape[0])
    d = np.sum(per_code * importance.sum(axis=1) / importance.sum())
    c = np.sum(per_factor * importance.sum(axis=0) / importance.sum())
    return d, c


def ref_mig(data, rep, rs, num_train):
    mus, ys = ref_batch_factor_code(data, rep, num_train, rs, 16)
    m = ref_discrete_mutual_info(ref_histogram_discretize(mus), ys)
    entropy = np.array([mutual_info_score(ys[j], ys[j]) for j in range(ys.shape[0])])
    sorted_m = np.sort(m, axis=0)[::-1]
    return np.mean(np.divide(sorted_m[0, :] - sorted_m[1, :], entropy[:]))


def ref_sap_matrix(data, rep, rs, num_train, num_test):
    mus, ys = ref_batch_factor_code(data, rep, num_train, rs, 16)
    mus_test, ys_test = ref_batch_factor_code(data, rep, num_test, rs, 16)
    score = np.zeros([mus.shape[0], ys.shape[0]])
    for i in range(mus.shape[0]):
        for j in range(ys.shape[0]):
            clf = LinearSVC(C=0.01, class_weight="balanced", random_state=0)
            clf.fit(mus[i, :][:, np.newaxis], ys[j, :])
            score[i, j] = np.mean(clf.predict(mus_test[i, :][:, np.newaxis]) == ys_test[j, :])
    return score


def ref_modularity_explicitness(data, rep, rs, num_train, num_test):
    mus_train, ys_train = ref_batch_factor_code(data, rep, num_train, rs, 16)
    mus_test, ys_test = ref_batch_factor_code(data, rep, num_test, rs, 16)
    mi = ref_discrete_mutual_info(ref_histogram_discretize(mus_train), ys_train)
    sq = np.square(mi)
    top = np.max(sq, axis=1)
    per_code = 1.0 - (np.sum(sq, axis=1) - top) / (top * (sq.shape[1] - 1.0))
    per_code[top == 0.0] = 0.0
    mean, std = np.mean(mus_train, axis=1), np.std(mus_train, axis=1)
    x_train = ((mus_train - mean[:, None]) / std[:, None]).T
    x_test = ((mus_test - mean[:, None]) / std[:, None]).T
    aucs = []
    for i in range(ys_train.shape[0]):
        clf = LogisticRegression().fit(x_train, ys_train[i])
        mlb = MultiLabelBinarizer()
        aucs.append(roc_auc_score(mlb.fit_transform(np.expand_dims(ys_test[i], 1)),
                                  clf.predict_proba(x_test)))
    return np.mean(per_code), np.mean(aucs)


def ref_infomec(data, rep, rs, test_size, noise_seeds):
    latents, source = ref_batch_factor_code(data, rep, test_size, rs, 16)
    latents, source = latents.T, source.T
    sources = np.stack([LabelEncoder().fit_transform(s) for s in source.T], axis=1)
    z = np.concatenate([StandardScaler().fit_transform(latents[:, j][:, None])
                        for j in range(latents.shape[1])], axis=1)
    nmi = np.empty((sources.shape[1], z.shape[1]))
    for i in range(sources.shape[1]):
        for j in range(z.shape[1]):
            nmi[i, j] = mutual_info_classif(
                z[:, j][:, None], sources[:, i], discrete_features=False, n_neighbors=10,
                random_state=np.random.RandomState(noise_seeds[i, j]))[0]
        nmi[i, :] /= mutual_info_score(sources[:, i], sources[:, i])
    q = np.quantile(latents, q=[0.25, 0.75], axis=0)
    iqr = q[1] - q[0]
    active = iqr > np.max(iqr) / 10
    pruned = nmi[:, active]
    k, n_act = sources.shape[1], active.sum()
    infom = (np.mean(np.max(pruned, axis=0) / np.sum(pruned, axis=0)) - 1 / k) / (1 - 1 / k)
    infoc = (np.mean(np.max(pruned, axis=1) / (np.sum(pruned, axis=1) + 1e-6)) - 1 / n_act) / (
        1 - 1 / n_act)
    x = StandardScaler().fit_transform(latents)
    ratios = []
    for i in range(sources.shape[1]):
        losses = []
        for inp in (x, np.zeros_like(latents)):
            model = LogisticRegression(C=np.inf, class_weight="balanced", max_iter=100).fit(
                inp, sources[:, i])
            losses.append(log_loss(sources[:, i], model.predict_proba(inp)))
        ratios.append((losses[1] - losses[0]) / losses[1])
    return infom, np.mean(ratios), infoc, nmi, active


@pytest.fixture(scope="module")
def setup():
    factors = grid_factors(SIZES)
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(len(SIZES), 6))
    codes = factors @ mixing + 0.3 * rng.normal(size=(len(factors), 6))
    codes[:, 5] = 0.01 * rng.normal(size=len(factors))  # a code that FactorVAE prunes
    return GroundTruth(factors, SIZES), codes, RefData(SIZES), lambda obs: codes[obs]


def test_factor_vae_matches_reference_loop(setup):
    gt, codes, data, rep = setup
    ours = factor_vae(codes, gt, n_train=400, n_eval=300, n_variance=500)
    score, active = ref_factor_vae(data, rep, np.random.RandomState(0), 64, 400, 300, 500, 0.05)
    assert ours["factor_vae"] == score
    assert ours["factor_vae_active"] == active == 5


def test_factor_vae_matches_reference_loop_float32(setup):
    gt, codes, data, _ = setup
    codes32 = codes.astype(np.float32)
    ours = factor_vae(codes32, gt, n_train=300, n_eval=200, n_variance=400, seed=3)
    score, _ = ref_factor_vae(data, lambda obs: codes32[obs], np.random.RandomState(3),
                              64, 300, 200, 400, 0.05)
    assert ours["factor_vae"] == score


def test_dci_matches_reference_loop(setup):
    gt, codes, data, rep = setup
    fit = dci_importance(codes[:, :3], gt, n_train=300, n_test=200, n_jobs=2, backend="sklearn")
    importance, informativeness = ref_dci(data, lambda obs: codes[obs, :3],
                                          np.random.RandomState(0), 300, 200)
    np.testing.assert_allclose(fit.importance, importance, rtol=1e-12, atol=1e-15)
    assert np.mean(fit.test_accuracy) == pytest.approx(informativeness, abs=1e-12)
    d, c = ref_entropy_scores(importance)
    assert disentanglement(importance) == pytest.approx(d, rel=1e-12)
    assert completeness(importance) == pytest.approx(c, rel=1e-12)


def test_mig_matches_reference_loop(setup):
    gt, codes, data, rep = setup
    assert mig(codes, gt, n_samples=700)["mig"] == pytest.approx(
        ref_mig(data, rep, np.random.RandomState(0), 700), rel=1e-12)
    codes32 = codes.astype(np.float32)
    assert mig(codes32, gt, n_samples=700, seed=5)["mig"] == pytest.approx(
        ref_mig(data, lambda obs: codes32[obs], np.random.RandomState(5), 700), rel=1e-12)


def test_sap_matches_reference_loop(setup):
    gt, codes, data, rep = setup
    ours = sap_score_matrix(codes, gt, n_train=400, n_test=300, n_jobs=2)
    np.testing.assert_array_equal(ours, ref_sap_matrix(data, rep, np.random.RandomState(0), 400, 300))


def test_modularity_explicitness_matches_reference_loop(setup):
    gt, codes, data, rep = setup
    ours = modularity_explicitness(codes, gt, n_train=500, n_test=400, n_jobs=2)
    mod, expl = ref_modularity_explicitness(data, rep, np.random.RandomState(0), 500, 400)
    assert ours["modularity"] == pytest.approx(mod, rel=1e-12)
    assert ours["explicitness"] == pytest.approx(expl, rel=1e-9)


def test_infomec_matches_authors_loop(setup):
    gt, codes, data, rep = setup
    ours = infomec_details(codes, gt, n_samples=400, n_jobs=2)
    rs = np.random.RandomState(0)
    ref_batch_factor_code(data, rep, 400, rs, 16)  # advance past the sampling ...
    seeds = rs.randint(np.iinfo(np.int32).max, size=(len(SIZES), codes.shape[1]))  # ... to the MI seeds
    infom, infoe, infoc, nmi, active = ref_infomec(data, rep, np.random.RandomState(0), 400, seeds)
    np.testing.assert_allclose(ours["nmi"], nmi, rtol=1e-12)
    np.testing.assert_array_equal(ours["active"], active)
    assert ours["infom"] == pytest.approx(infom, rel=1e-12)
    assert ours["infoc"] == pytest.approx(infoc, rel=1e-12)
    assert ours["infoe"] == pytest.approx(infoe, rel=1e-9)


def test_infomec_active_rules(setup):
    gt, codes, _, _ = setup
    scaled = codes[:, :5] * np.array([1.0, 1.0, 1.0, 1.0, 0.07]) / codes[:, :5].std(0)
    iqr = infomec_details(scaled, gt, n_samples=300, active="iqr", n_jobs=1)["active"]
    spread = infomec_details(scaled, gt, n_samples=300, active="range", n_jobs=1)["active"]
    assert iqr.tolist() == [True] * 4 + [False]  # IQR 0.07 of the largest: below 1/10
    assert spread.tolist() == [True] * 5  # range 0.07 of the largest: above 1/20
    flat = infomec_details(np.ones_like(codes), gt, n_samples=300, n_jobs=1)
    assert (flat["infom"], flat["infoe"], flat["infoc"]) == (0.0, 0.0, 0.0)
