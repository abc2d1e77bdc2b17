from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Literal

import pytest

from dydis.config import (PrepareDataConfig, TrainLDMConfig, build_config, comparable, neutral_values, parse_overrides,
                          to_dict, without_neutral)
from dydis.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = 0.2
    levels: tuple[int, ...] = (1, 2)


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = "a"
    steps: int = 10
    mode: Literal["paper", "official"] = "paper"
    limit: int | None = None
    flag: bool = False
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_precedence_defaults_file_flags_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 20\nname: from-file\ninner:\n  rate: 0.5\n")
    cfg = build_config(Outer, file=path, flags={"steps": 30, "name": None}, overrides=["inner.levels=[4, 8]", "flag=true"])
    assert cfg.steps == 30  # flag beats file
    assert cfg.name == "from-file"  # an unset flag leaves the file's value
    assert cfg.inner == Inner(rate=0.5, levels=(4, 8))
    assert cfg.flag is True
    assert build_config(Outer, overrides=["steps=5"]).steps == 5


@pytest.mark.parametrize(
    "override, key",
    [("stepz=3", "stepz"), ("inner.ratez=1", "inner.ratez"), ("steps=abc", "steps"), ("steps=1.5", "steps"),
     ("mode=fast", "mode"), ("inner.levels=[1, x]", "inner.levels[1]"), ("flag=3", "flag")],
)
def test_unknown_key_or_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        build_config(Outer, overrides=[override])
    assert key in str(err.value)


def test_coercions():
    assert build_config(Outer, overrides=["inner.rate=2e-5"]).inner.rate == 2e-5
    cfg = build_config(Outer, overrides=["limit=null", "inner.levels=4,5,6", "inner.rate=1", "name=2024"])
    assert cfg.limit is None and cfg.inner.levels == (4, 5, 6) and cfg.inner.rate == 1.0 and cfg.name == "2024"
    assert isinstance(cfg.inner.rate, float)
    assert build_config(Outer, overrides=["limit=7"]).limit == 7


def test_set_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["steps"])
    with pytest.raises(ConfigError, match="not a group"):
        parse_overrides(["steps=1", "steps.x=2"])


def test_bad_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_config(Outer, file=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(Outer, file=bad)


def test_prepare_data_config_checks():
    assert PrepareDataConfig(dataset="shapes3d").source is None  # prepare-data then reads the download folder
    with pytest.raises(ConfigError, match="subset"):
        PrepareDataConfig(subset=0)
    with pytest.raises(ConfigError, match="not both"):
        PrepareDataConfig(subset=3, fraction=0.5)
    with pytest.raises(ConfigError, match="grid"):
        PrepareDataConfig(dataset="shapes3d", source="x.h5", grid=(2, 2, 2, 2, 2, 2))
    with pytest.raises(ConfigError, match="factor_sizes"):
        PrepareDataConfig(dataset="shapes3d", source="x.h5", factor_sizes=(2, 2))
    cfg = build_config(PrepareDataConfig, flags={"grid": "4,4,4,3,4,5"})
    assert cfg.grid == (4, 4, 4, 3, 4, 5)
    assert to_dict(cfg)["grid"] == [4, 4, 4, 3, 4, 5]


def _float_keys(cls: type, prefix: str = "") -> list[str]:
    """Every float field of a config dataclass and its nested ones, as dotted keys."""
    import typing

    keys = []
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += _float_keys(tp, f"{prefix}{name}.")
        elif tp is float or float in typing.get_args(tp):
            keys.append(prefix + name)
    return keys


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "inf", "-Infinity"])
def test_every_float_key_of_every_stage_refuses_nan_and_infinity(value):
    """NaN and infinity pass every range check (nan < 0 is false) and used to reach training."""
    from dydis.config import (DownstreamGBTConfig, EvalMetricsConfig, TrainLDMConfig, TrainVQGANConfig,
                              VisualizeConfig)

    required = {PrepareDataConfig: {}, TrainVQGANConfig: {"data": "d", "max_steps": 1},
                TrainLDMConfig: {"data": "d", "max_steps": 1}, EvalMetricsConfig: {"reps": ["r.npz"], "data": "d"},
                DownstreamGBTConfig: {"reps": ["r.npz"], "data": "d"}, VisualizeConfig: {"what": "units",
                                                                                        "models": ["m"]}}
    checked = 0
    for cls, flags in required.items():
        for key in _float_keys(cls):
            with pytest.raises(ConfigError, match=f"^config key {key}: expected a finite number, found "):
                build_config(cls, flags=flags, overrides=[f"{key}={value}"])
            checked += 1
    assert checked >= 20  # lr, base_lr, dropout rates, loss weights, epochs, fraction, ...


def test_a_float_given_as_a_python_value_is_checked_too():
    with pytest.raises(ConfigError, match="^config key inner.rate: expected a finite number, found inf$"):
        build_config(Outer, flags={"inner": {"rate": float("inf")}})
    assert build_config(Outer, overrides=["inner.rate=1e-3"]).inner.rate == 1e-3


def test_compile_needs_a_gpu():
    from dydis.config import TrainLDMConfig

    with pytest.raises(ConfigError, match="^config key compile: torch.compile of the U-Net runs on the GPU only"):
        build_config(TrainLDMConfig, flags={"data": "d", "max_steps": 1, "compile": True})
    assert build_config(TrainLDMConfig, flags={"data": "d", "max_steps": 1, "compile": True, "gpus": 1}).compile


@pytest.mark.parametrize("cls, key", [("TrainLDMConfig", "lr"), ("TrainVQGANConfig", "base_lr")])
@pytest.mark.parametrize("rate", [0.0, -1e-4, 1.5, 1e38])
def test_learning_rates_outside_0_1_are_refused(cls, key, rate):
    """1e38 used to pass and make Adam's first step overflow float32 inside torch.optim (exit 1)."""
    import dydis.config

    config = getattr(dydis.config, cls)
    with pytest.raises(ConfigError, match=rf"^config key {key}: expected a rate in \(0, 1\], found "):
        build_config(config, flags={"data": "d", "max_steps": 1, key: rate})
    assert getattr(build_config(config, flags={"data": "d", "max_steps": 1, key: 1.0}), key) == 1.0


@pytest.mark.parametrize("cls, old", [("EvalMetricsConfig", "dci_backend"), ("DownstreamGBTConfig", "backend")])
def test_the_tree_backend_has_one_name_and_the_old_one_still_works_with_a_warning(dydis_warnings, cls, old):
    import dydis.config as config

    sources = {"reps": ["r.npz"], "data": "d"}
    cfg = config.build_config(getattr(config, cls), flags=sources, overrides=[f"{old}=sklearn"])
    assert cfg.gbt_backend == "sklearn"
    assert [r.getMessage() for r in dydis_warnings.records] == [
        f"config key {old} is renamed gbt_backend; the old name goes in the next release"]
    with pytest.raises(ConfigError, match=f"config keys {old} and gbt_backend: one setting under two names"):
        config.build_config(getattr(config, cls), flags=sources, overrides=[f"{old}=sklearn", "gbt_backend=fast"])


def test_keys_added_since_the_first_runs_are_left_out_of_a_config_while_neutral():
    assert neutral_values(TrainLDMConfig) == {"dyga.psi": 0.5, "dyga.merge": None}
    default = TrainLDMConfig(dataset="synthetic", epochs=1)
    before_the_keys = to_dict(default)
    before_the_keys["dyga"] = {k: v for k, v in before_the_keys["dyga"].items() if k not in ("psi", "merge")}
    assert comparable(default) == before_the_keys  # what an older release's run recorded
    assert without_neutral(before_the_keys, neutral_values(TrainLDMConfig)) == before_the_keys
    assert to_dict(default)["dyga"]["psi"] == 0.5  # the artifact and the checkpoint still record every key
    set_ = build_config(TrainLDMConfig, flags={"dataset": "synthetic", "epochs": 1},
                        overrides=["dyga.merge=none", "dyga.psi=0.25"])
    assert comparable(set_)["dyga"]["merge"] == "none" and comparable(set_)["dyga"]["psi"] == 0.25
    null = build_config(TrainLDMConfig, flags={"dataset": "synthetic", "epochs": 1}, overrides=["dyga.merge=null"])
    assert null.dyga.merge is None  # a choice spelled "none" is that choice; null is the mode's
    with pytest.raises(ConfigError, match="config key dyga.psi: expected a density threshold >= 0, found -1"):
        build_config(TrainLDMConfig, flags={"dataset": "synthetic", "epochs": 1}, overrides=["dyga.psi=-1"])


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        nested = hints[f.name]
        found += _dotted_keys(nested, f"{prefix}{f.name}.") if dataclasses.is_dataclass(nested) else [prefix + f.name]
    return found


def test_every_new_config_key_says_what_runs_without_it_did():
    """A key that is neither in tests/config_keys.json (the keys every stage had when runs first
    recorded their configs) nor in its class's ``added_keys`` would change every fingerprint of its
    stage: `dydis run` would redo every cached artifact and restart every unfinished run of it."""
    from dydis.stages.workflow import STAGES

    recorded = json.loads((Path(__file__).parent / "config_keys.json").read_text())
    assert set(recorded) == set(STAGES)
    for stage, spec in STAGES.items():
        new = sorted(set(_dotted_keys(spec.config)) - set(recorded[stage]) - set(neutral_values(spec.config)))
        assert not new, (f"{stage}: config keys {new} are new; give each a neutral value in its class's added_keys "
                         "(the value that does what configs without it did), or, where a release means every run of "
                         "the stage to change, add them to tests/config_keys.json")
        gone = sorted(set(recorded[stage]) - set(_dotted_keys(spec.config)))
        assert not gone, (f"{stage}: config keys {gone} are gone, which changes every fingerprint of the stage; "
                          "remove them from tests/config_keys.json where that is meant")
