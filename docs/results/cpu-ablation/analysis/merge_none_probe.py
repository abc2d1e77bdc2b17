"""Session 18's probe, kept as the record of how its number was made; since then the same run is
`--set train-ldm.dyga.merge=none` (the key session 19 added). A probe, not a dydis command (train-ldm
had no dyga.merge key): dyga-u20 at one seed with DyGA's paper
mode fitting without our "valley" merge (Algorithm 2 alone), by changing the mode's default in this
process before the CLI runs the study's workflow. The artifact's config is dyga-u20's; its anchors'
stored settings record merge "none".

    python merge_none_probe.py SEED ART_ROOT RUN_ROOT    # from the repository root, e.g. 44 scratch/art scratch/runs
"""
import sys

import dydis.dyga.estimator as estimator
from dydis.cli.main import app

seed, root, runs = sys.argv[1:]
estimator.MODES["paper"]["merge"] = "none"
app(["run", "workflow.yaml", "--profile", "cpu-ablation", "--set", "dataset=synthetic", "--seeds", seed,
     "--until", "eval-metrics", "--root", root, "--runs", runs,
     "--variant", "dyga-mergenone-u20:train-ldm.quantizer=dyga,train-ldm.unet.skip_dropout=0"])
