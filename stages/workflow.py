"""The stages `dydis run` can put in a workflow.yaml: one entry per stage.

The runner (``dydis.workflow``) lives in the library, which never imports stages; this table
is how it learns each stage's config class, run function, artifact kind and which config keys
take earlier stages' artifacts. Adding a stage to workflows is adding its entry here.
"""

from __future__ import annotations

from dydis.config import (DownstreamGBTConfig, EvalMetricsConfig, PrepareDataConfig, ReportConfig, TrainLDMConfig,
                          TrainVQGANConfig, VisualizeConfig)
from dydis.stages import downstream_gbt, eval_metrics, prepare_data, report, train_ldm, train_vqgan, visualize
from dydis.workflow import StageSpec

STAGES: dict[str, StageSpec] = {
    prepare_data.STAGE: StageSpec(PrepareDataConfig, prepare_data.run, kind="dataset"),
    train_vqgan.STAGE: StageSpec(TrainVQGANConfig, train_vqgan.run, kind="vqgan", inputs={"data": "dataset"},
                                 trains=True),
    train_ldm.STAGE: StageSpec(TrainLDMConfig, train_ldm.run, kind="ldm",
                               inputs={"data": "dataset", "vqgan": "vqgan"}, trains=True),
    eval_metrics.STAGE: StageSpec(EvalMetricsConfig, eval_metrics.run, kind="metrics",
                                  inputs={"data": "dataset", "models": "ldm"}),
    downstream_gbt.STAGE: StageSpec(DownstreamGBTConfig, downstream_gbt.run, kind="downstream",
                                    inputs={"data": "dataset", "models": "ldm"}),
    visualize.STAGE: StageSpec(VisualizeConfig, visualize.run, kind="viz", inputs={"data": "dataset", "models": "ldm"}),
    report.STAGE: StageSpec(ReportConfig, report.run, kind="report",
                            inputs={"metrics": "metrics", "downstream": "downstream"}, compares_points=True),
}
