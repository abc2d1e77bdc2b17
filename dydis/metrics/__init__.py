"""Disentanglement metrics: pure functions from (codes, ground truth) to a flat dict of floats.

Definitions and defaults follow the reference implementations (disentanglement_lib for
FactorVAE, DCI, MIG, SAP, Modularity/Explicitness; latent_quantization as vendored by the
paper's authors for InfoMEC; NashAE and the authors' evaluation for TAD); each module's
docstring lists the definition and any deliberate difference. The GBT downstream task
(``downstream_gbt``, disentanglement_lib's protocol) returns its per-seed scores and their
mean and spread instead, because its tables report them over seeds.
"""

from dydis.metrics._common import check_values, summarize
from dydis.metrics.dci import DCIFit, completeness, dci, dci_importance, disentanglement
from dydis.metrics.downstream import DownstreamResult, downstream_gbt, draw_splits
from dydis.metrics.evaluate import GRID_METRICS, METRICS, Scores, evaluate
from dydis.metrics.factor_vae import factor_vae, factor_vae_details
from dydis.metrics.fid import compute_features, feature_statistics, fid, frechet_distance
from dydis.metrics.ground_truth import GroundTruth, grid_factors
from dydis.metrics.infomec import infomec, infomec_details
from dydis.metrics.mig import mig
from dydis.metrics.modularity import modularity, modularity_explicitness
from dydis.metrics.reduce import REDUCTIONS, reduce_codes, reduce_units
from dydis.metrics.sap import sap, sap_score_matrix
from dydis.metrics.tad import tad, tad_details

__all__ = [
    "DCIFit", "DownstreamResult", "GRID_METRICS", "GroundTruth", "METRICS", "REDUCTIONS", "Scores",
    "check_values", "completeness", "compute_features", "dci", "dci_importance", "disentanglement", "downstream_gbt",
    "draw_splits", "evaluate", "factor_vae", "factor_vae_details", "feature_statistics", "fid", "frechet_distance",
    "grid_factors", "infomec", "infomec_details", "mig", "modularity", "modularity_explicitness",
    "reduce_codes", "reduce_units", "sap", "sap_score_matrix", "summarize", "tad", "tad_details",
]
