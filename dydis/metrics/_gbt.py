"""scikit-learn's ``GradientBoostingClassifier()`` with default settings, rebuilt for speed.

DCI fits one boosted classifier per factor on the same 10,000 x n_codes training matrix:
for Shapes3D that is 57 one-class trees per stage x 100 stages, and scikit-learn spends
almost all of its ~2 minutes re-sorting the same feature columns at every tree node. This
module grows the same trees from columns sorted once: a node's samples stay in sorted order
when the node is split (a stable partition), so every split search is a cumulative sum.

What is reproduced, from scikit-learn 1.9 (``ensemble/_gb.py``, ``tree/_splitter.pyx``,
``tree/_criterion.pyx``, ``tree/_tree.pyx``), for ``loss="log_loss"``, ``learning_rate=0.1``,
``n_estimators=100``, ``max_depth=3``, ``subsample=1``, ``max_features=None``:

- features as float32; the initial raw score from the class priors (clipped to
  [eps, 1 - eps], symmetric multinomial logit, or the logit for two classes);
- per stage, the negative gradient of the multinomial (binomial) deviance at the stage's
  start, one squared-error regression tree per class (one for two classes);
- the split search of ``BestSplitter``: candidate positions between sorted values that differ
  by more than ``FEATURE_THRESHOLD`` (1e-7, in float32), the proxy
  ``sum_l^2 / n_l + sum_r^2 / n_r``, thresholds at the midpoint, a node is a leaf at depth 3,
  below 2 samples, at impurity <= machine epsilon, or when no feature can be split;
- the order in which the splitter visits features, which decides between equally good splits:
  the Fisher-Yates draws of scikit-learn's xorshift generator, seeded per tree from the
  boosting's ``RandomState``, with its bookkeeping of constant features;
- the leaf values of one Newton step, ``(K-1)/K * mean(residual) / mean(p (1 - p))``
  (``(K-1)/K`` dropped for two classes), and the impurity-based feature importances averaged
  over the non-trivial trees.

What differs: floating-point rounding. scikit-learn sums a node's residuals in the order its
in-place sorts leave the samples (and its exp is libm's); we sum in sorted order. Splits whose
gains are equal up to the last bits can therefore go the other way; once one does, later
trees differ slightly. scikit-learn's own choice there depends on its feature order, which
disentanglement_lib leaves unseeded, and the effect on DCI is below scikit-learn's
seed-to-seed spread (see ``dydis.metrics.dci``). The tests check tree-for-tree identity on the
first stages, the exact sharing of importance between duplicated codes (which only the
replayed feature order decides), and agreement of predictions and importances after that.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import numpy as np
from scipy.special import logit
from scipy.stats import gmean

FEATURE_THRESHOLD = np.float32(1e-7)  # sklearn.tree._partitioner
EPSILON = np.finfo(np.float64).eps  # sklearn.tree._tree
RAND_R_MAX = 2147483647  # sklearn.utils._random
MAX_DEPTH = 3
LEARNING_RATE = 0.1
N_ESTIMATORS = 100
_LEAF = -1


class Presorted(NamedTuple):
    """Feature columns sorted once; shared by every tree grown on the same matrix."""

    x: np.ndarray  # (n, F) float32
    order: np.ndarray  # (F, n) sample indices, each row sorted by that feature (stable)
    values: np.ndarray  # (F, n) float32, x[order[f], f]


def presort(x: np.ndarray) -> Presorted:
    """Cast to float32 as scikit-learn's trees do and sort every column (stable)."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    order = np.ascontiguousarray(np.argsort(x32, axis=0, kind="stable").T)  # intp: fast take
    values = np.take_along_axis(x32.T, order, axis=1)
    return Presorted(x32, order, values)


class Tree(NamedTuple):
    """One fitted regression tree, nodes in scikit-learn's depth-first order."""

    feature: np.ndarray  # (n_nodes,) split feature, -1 at leaves
    threshold: np.ndarray  # (n_nodes,) float64
    left: np.ndarray  # (n_nodes,) child index, -1 at leaves
    right: np.ndarray
    value: np.ndarray  # (n_nodes,) leaf values after the Newton step


class BoostedClassifier(NamedTuple):
    classes: np.ndarray  # (K,)
    init: np.ndarray  # (n_trees_per_stage,) initial raw score
    trees: list[list[Tree]]  # [stage][class]
    feature_importances: np.ndarray  # (F,)

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Raw scores (n, n_trees_per_stage), as scikit-learn's ``_raw_predict``."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        raw = np.tile(self.init, (len(x32), 1))
        rows = np.arange(len(x32))[None, :]
        for stage in self.trees:  # all trees of a stage at once: arrays (trees, n)
            width = max(len(t.feature) for t in stage)
            feature, threshold, left, right, value = (
                np.stack([np.pad(getattr(t, name), (0, width - len(t.feature)))
                          for t in stage])
                for name in ("feature", "threshold", "left", "right", "value")
            )
            node = np.zeros((len(stage), len(x32)), dtype=np.intp)
            for _ in range(MAX_DEPTH):
                feat = np.take_along_axis(feature, node, axis=1)
                inner = feat >= 0
                go_left = x32[rows, np.where(inner, feat, 0)] <= np.take_along_axis(
                    threshold, node, axis=1)
                child = np.where(go_left, np.take_along_axis(left, node, axis=1),
                                 np.take_along_axis(right, node, axis=1))
                node = np.where(inner, child, node)
            raw += LEARNING_RATE * np.take_along_axis(value, node, axis=1).T
        return raw

    def predict(self, x: np.ndarray) -> np.ndarray:
        raw = self.decision_function(x)
        if raw.shape[1] == 1:
            return self.classes[(raw[:, 0] >= 0).astype(int)]
        return self.classes[np.argmax(raw, axis=1)]


def fit_boosted_classifier(
    x: np.ndarray | Presorted, y: np.ndarray, *, random_state: int = 0
) -> BoostedClassifier:
    """Fit the equivalent of ``GradientBoostingClassifier(random_state=random_state)``.

    Parameters
    ----------
    x : (n, F) float, or its ``presort`` (to share the sorting between several targets)
    y : (n,) class labels, at least two distinct
    random_state : int
        Seeds the feature visiting order exactly as scikit-learn's ``random_state`` does.
    """
    data = x if isinstance(x, Presorted) else presort(x)
    classes, y_enc = np.unique(np.asarray(y), return_inverse=True)
    n, n_classes = len(y_enc), len(classes)
    if n_classes < 2:
        raise ValueError("y contains 1 class, while a minimum of 2 classes are required")
    rng = np.random.RandomState(random_state)

    eps = np.finfo(np.float64).eps
    prior = np.clip(np.bincount(y_enc, minlength=n_classes) / n, eps, 1 - eps)
    if n_classes == 2:
        init = np.array([logit(prior[1])])
        targets = [(y_enc == 1).astype(np.float64)]
    else:
        init = np.log(prior / gmean(prior[None, :], axis=1))
        targets = [(y_enc == k).astype(np.float64) for k in range(n_classes)]
    raw = np.tile(init, (n, 1))

    cache = _NodeCache(data)
    trees: list[list[Tree]] = []
    importances: list[np.ndarray] = []
    for _ in range(N_ESTIMATORS):
        neg_gradient = _negative_gradient(raw, y_enc, n_classes)
        stage = []
        for k, target in enumerate(targets):
            seed = int(rng.randint(0, RAND_R_MAX))  # Splitter.init, one draw per tree
            grown = _grow_tree(neg_gradient[:, k], cache, seed)
            value = _newton_leaf_values(grown, target, neg_gradient[:, k], n_classes)
            raw[:, k] += LEARNING_RATE * value.take(grown.leaf_of)
            stage.append(Tree(grown.feature, grown.threshold, grown.left, grown.right, value))
            if len(grown.feature) > 1:
                importances.append(grown.importance)
        trees.append(stage)

    if importances:
        mean = np.mean(importances, axis=0, dtype=np.float64)
        feature_importances = mean / np.sum(mean)
    else:
        feature_importances = np.zeros(data.x.shape[1])
    return BoostedClassifier(classes, init, trees, feature_importances)


def _negative_gradient(raw: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Minus the gradient of the half multinomial (binomial) deviance, (n, trees per stage)."""
    if n_classes == 2:
        r = raw[:, 0]
        yt = (y == 1).astype(np.float64)
        with np.errstate(over="ignore"):
            e = np.exp(-r)
            grad = np.where(r > -37, ((1 - yt) - yt * e) / (1 + e), np.exp(r) - yt)
        return -grad[:, None]
    exps = np.exp(raw - raw.max(axis=1, keepdims=True))
    total = exps[:, 0].copy()
    for k in range(1, n_classes):  # why: scikit-learn sums the classes in order, not pairwise
        total += exps[:, k]
    prob = exps / total[:, None]
    return (y[:, None] == np.arange(n_classes)[None, :]) - prob


class _Grown(NamedTuple):
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf_of: np.ndarray  # (n,) leaf node of every training sample
    importance: np.ndarray  # (F,) unnormalised, per scikit-learn's compute_feature_importances


class _FeatureOrder:
    """The splitter's feature permutation state and xorshift generator, one per tree."""

    def __init__(self, n_features: int, seed: int):
        self.features = list(range(n_features))
        self.constant = [0] * n_features
        self.state = seed

    def _rand(self) -> int:
        s = self.state or 1
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.state = s
        return s % (RAND_R_MAX + 1)

    def visit(self, is_constant: np.ndarray, n_known: int) -> tuple[list[int], int]:
        """Features evaluated at a node, in visiting order; and the node's constant count."""
        features, n_features = self.features, len(self.features)
        f_i, n_visited, n_found, n_drawn, n_total = n_features, 0, 0, 0, n_known
        visited = []
        while f_i > n_total and (n_visited < n_features or n_visited <= n_found + n_drawn):
            n_visited += 1
            f_j = n_drawn + self._rand() % (f_i - n_found - n_drawn)
            if f_j < n_known:
                features[n_drawn], features[f_j] = features[f_j], features[n_drawn]
                n_drawn += 1
                continue
            f_j += n_found
            if is_constant[features[f_j]]:
                features[f_j], features[n_total] = features[n_total], features[f_j]
                n_found += 1
                n_total += 1
                continue
            f_i -= 1
            features[f_i], features[f_j] = features[f_j], features[f_i]
            visited.append(features[f_i])
        features[:n_known] = self.constant[:n_known]
        self.constant[n_known:n_total] = features[n_known:n_total]
        return visited, n_total


class _Node(NamedTuple):
    """A node's samples in every feature's sorted order, and what the split search reuses."""

    idx: np.ndarray  # (F, m) sample indices, row f sorted by feature f
    vals: np.ndarray  # (F, m) float32 feature values in the same order
    penalty: np.ndarray  # (F, m - 1) 0 where a split after position p is allowed, else -inf
    constant: np.ndarray  # (F,) the feature is constant on this node (max - min <= 1e-7)


def _make_node(idx: np.ndarray, vals: np.ndarray) -> _Node:
    # float32 arithmetic, as the splitter's `Xf[p] <= Xf[p - 1] + FEATURE_THRESHOLD`
    invalid = vals[:, 1:] <= vals[:, :-1] + FEATURE_THRESHOLD
    penalty = np.where(invalid, -np.inf, 0.0)  # why: adding it is 10x faster than a masked write
    constant = vals[:, -1] <= vals[:, 0] + FEATURE_THRESHOLD
    return _Node(idx, vals, penalty, constant)


class _NodeCache:
    """Sorted columns of the nodes, keyed by their path of splits from the root.

    The trees of one boosting run keep choosing the same few splits near the root (one per
    class, stage after stage), so their children's sorted columns are computed once.
    """

    def __init__(self, data: Presorted, max_entries: int = 64):
        self.n = data.x.shape[0]
        self.root = _make_node(data.order, data.values)
        self.entries: OrderedDict[tuple, tuple[_Node, _Node]] = OrderedDict()
        self.max_entries = max_entries
        # why: scratch space for the split search; fresh multi-megabyte temporaries would
        # cost page faults at every node
        size = data.order.size
        self.scratch = [np.empty(size) for _ in range(3)]
        self.n_left = np.arange(1, self.n, dtype=np.float64)

    def buffers(self, rows: int, cols: int) -> list[np.ndarray]:
        """Three contiguous (rows, cols) float64 scratch arrays."""
        return [b[: rows * cols].reshape(rows, cols) for b in self.scratch]

    def children(self, key: tuple, node: _Node, feature: int, n_left: int) -> tuple[_Node, _Node]:
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        goes_left = np.zeros(self.n, dtype=bool)
        goes_left[node.idx[feature, :n_left]] = True
        mask = goes_left[node.idx]  # a stable partition keeps every row sorted
        n_features = node.idx.shape[0]
        pair = tuple(
            _make_node(node.idx[m].reshape(n_features, -1), node.vals[m].reshape(n_features, -1))
            for m in (mask, ~mask)
        )
        self.entries[key] = pair
        if len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return pair


def _grow_tree(r: np.ndarray, cache: _NodeCache, seed: int) -> _Grown:
    """Grow one depth-3 squared-error tree on residuals ``r`` (n,), depth first."""
    n_features, n = cache.root.idx.shape
    squares = r * r
    order = _FeatureOrder(n_features, seed)
    feature, threshold, left, right, impurity, weight = [], [], [], [], [], []
    leaf_of = np.empty(n, dtype=np.intp)

    def add_node(parent: int, is_left: bool, node_impurity: float, m: int) -> int:
        node_id = len(feature)
        feature.append(_LEAF)
        threshold.append(-2.0)
        left.append(_LEAF)
        right.append(_LEAF)
        impurity.append(node_impurity)
        weight.append(m)
        if parent >= 0:
            (left if is_left else right)[parent] = node_id
        return node_id

    root_total = np.cumsum(r)[-1]  # why: sequential, as the criterion's init loop
    root_impurity = np.cumsum(squares)[-1] / n - (root_total / n) ** 2
    # stack entries: node, path key, depth, parent, is_left, impurity, n_constant
    stack = [(cache.root, (), 0, -1, False, root_impurity, 0)]
    while stack:
        node, key, depth, parent, is_left, node_impurity, n_known = stack.pop()
        m = node.idx.shape[1]
        node_id = add_node(parent, is_left, node_impurity, m)
        split = None
        if depth < MAX_DEPTH and m >= 2 and node_impurity > EPSILON:
            total = root_total if depth == 0 else None
            split = _best_split(r, squares, node, order, n_known, node_impurity, n, cache, total)
        if split is None:
            leaf_of[node.idx[0]] = node_id
            continue
        f, n_left, thr, imp_left, imp_right, n_const = split
        feature[node_id], threshold[node_id] = f, thr
        if depth + 1 == MAX_DEPTH:  # the children are leaves: only their samples matter
            leaf_of[node.idx[f, :n_left]] = add_node(node_id, True, imp_left, n_left)
            leaf_of[node.idx[f, n_left:]] = add_node(node_id, False, imp_right, m - n_left)
            continue
        child_key = key + ((f, n_left),)
        left_node, right_node = cache.children(child_key, node, f, n_left)
        stack.append((right_node, child_key + (1,), depth + 1, node_id, False, imp_right, n_const))
        stack.append((left_node, child_key + (0,), depth + 1, node_id, True, imp_left, n_const))

    feature_a = np.array(feature, dtype=np.intp)
    left_a, right_a = np.array(left, dtype=np.intp), np.array(right, dtype=np.intp)
    imp_a, w_a = np.array(impurity), np.array(weight, dtype=np.float64)
    importance = np.zeros(n_features)
    for node_id in np.flatnonzero(feature_a >= 0):  # node order, as compute_feature_importances
        importance[feature_a[node_id]] += (
            w_a[node_id] * imp_a[node_id] - w_a[left_a[node_id]] * imp_a[left_a[node_id]]
            - w_a[right_a[node_id]] * imp_a[right_a[node_id]]
        )
    importance /= w_a[0]
    return _Grown(feature_a, np.array(threshold), left_a, right_a, leaf_of, importance)


def _best_split(r, squares, node: _Node, order: _FeatureOrder, n_known, node_impurity, n_root,
                cache: _NodeCache, total=None):
    """scikit-learn's ``node_split_best`` on one node; None when nothing can be split.

    ``total`` is the node's sum of residuals if known in scikit-learn's summation order (at
    the root: sample order); elsewhere the order scikit-learn's in-place sorts leave is not
    reproducible and the sum is taken in the first feature's sorted order.

    Returns (feature, n_left, threshold, impurity_left, impurity_right, n_constant).
    """
    m = node.idx.shape[1]
    visited, n_const = order.visit(node.constant, n_known)
    if not visited:
        return None
    # all features at once (a constant one has no valid position), visiting order applied after
    n_features = node.idx.shape[0]
    res_buf, sum_left, proxy = cache.buffers(n_features, m)
    res = np.take(r, node.idx, out=res_buf)  # (F, m) residuals in each feature's sorted order
    sum_left, proxy = sum_left[:, : m - 1], proxy[:, : m - 1]
    _row_cumsum(res[:, :-1], out=sum_left)  # split after position p: left = [0, p]
    if total is None:
        total = sum_left[0, -1] + res[0, -1]  # the sequential sum, continued
    n_left = cache.n_left[: m - 1]
    np.multiply(sum_left, sum_left, out=proxy)
    proxy /= n_left
    right = np.subtract(total, sum_left, out=res[:, :-1])  # res is no longer needed
    right *= right
    right /= m - n_left
    proxy += right
    proxy += node.penalty
    pos = proxy.argmax(axis=1)  # first best position of each feature
    feats = np.array(visited)
    best = proxy[feats, pos[feats]]
    if not np.isfinite(best.max()):
        return None
    j = int(np.flatnonzero(best == best.max())[0])  # first visited feature wins ties
    f = int(feats[j])
    p = int(pos[f])
    nl, nr = p + 1, m - p - 1
    thr = float(node.vals[f, p]) / 2.0 + float(node.vals[f, p + 1]) / 2.0
    sl = sum_left[f, p]
    sr = total - sl
    sq_left = np.cumsum(squares[node.idx[f, :nl]])[-1]
    sq_total = np.cumsum(squares[node.idx[f]])[-1]
    imp_left = sq_left / nl - (sl / nl) ** 2
    imp_right = (sq_total - sq_left) / nr - (sr / nr) ** 2
    improvement = (m / n_root) * (node_impurity - nr / m * imp_right - nl / m * imp_left)
    if improvement + EPSILON < 0.0:
        return None
    return f, nl, thr, imp_left, imp_right, n_const


def _row_cumsum(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Prefix sums along the rows of a (F, m) float64 array, summed in order like np.cumsum.

    Row by row in torch: its 1-D cumsum is the same sequential sum, 2-3x faster than numpy's
    accumulate, and a 1-D scan never wakes torch's thread pool (which a 2-D one does, at a
    large cost on a busy machine).
    """
    import torch  # why: imported here, so that `import dydis.metrics` stays free of torch

    src, dst = torch.from_numpy(a), torch.from_numpy(out)
    for i in range(a.shape[0]):
        torch.cumsum(src[i], dim=0, out=dst[i])
    return out


def _newton_leaf_values(grown: _Grown, target: np.ndarray, neg_gradient: np.ndarray,
                        n_classes: int) -> np.ndarray:
    """One Newton step per leaf (scikit-learn's ``_update_terminal_regions``)."""
    value = np.zeros(len(grown.feature))
    factor = (n_classes - 1) / n_classes if n_classes > 2 else None
    # samples grouped by leaf, ascending within a leaf (scikit-learn's np.nonzero order)
    by_leaf = np.argsort(grown.leaf_of.astype(np.int8), kind="stable")
    counts = np.bincount(grown.leaf_of, minlength=len(grown.feature))
    starts = np.concatenate([[0], np.cumsum(counts)])
    neg_g_sorted, target_sorted = neg_gradient.take(by_leaf), target.take(by_leaf)
    for leaf in np.flatnonzero(grown.feature == _LEAF):
        a, b = starts[leaf], starts[leaf + 1]
        neg_g = neg_g_sorted[a:b]
        prob = target_sorted[a:b] - neg_g
        numerator = neg_g.sum() / (b - a)  # np.average with unit weights
        if factor is not None:
            numerator *= factor
        denominator = (prob * (1 - prob)).sum() / (b - a)
        value[leaf] = 0.0 if abs(denominator) < 1e-150 else float(numerator) / float(denominator)
    return value
