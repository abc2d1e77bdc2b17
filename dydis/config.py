"""Typed stage configuration: dataclass defaults, a YAML file, command-line flags, `--set`.

Every stage has one frozen dataclass. A resolved config is built from, in increasing
precedence: the dataclass defaults, the ``--config`` YAML file, the stage's own command-line
flags, and ``--set key.sub=value`` overrides. Every value is checked against the field's type
annotation, so an unknown key or a wrong type is a ``ConfigError`` that names the key, never a
stack trace from deep inside a stage.

A key added to a config after runs have recorded theirs goes into its class's ``added_keys``
with the value that does what configs without it did (``without_neutral``): left at that value
it changes no fingerprint and no resume check. tests/config_keys.json holds every other key, so
a key added without one fails a test instead of silently invalidating every cached run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from dydis.artifacts import plain
from dydis.errors import ConfigError
from dydis.models.config import (FEATURE_EXTRACTOR_PRESETS, UNET_PRESETS, VQGAN_PRESETS, DiffusionConfig,
                                 FeatureExtractorConfig, FSQConfig, UNetConfig, VQGANConfig, VQLossConfig)

T = TypeVar("T")
# Adam rates above 1 only diverge; far above (about 1e37) Adam's first step overflows float32 inside
# torch.optim, an internal error instead of a configuration one.
MAX_LR = 1.0


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file that must hold a YAML mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError("config file not found", path) from None
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"not a readable YAML file ({err.__class__.__name__})", path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a YAML mapping of config keys, found {type(data).__name__}", path)
    return data


def parse_value(raw: str) -> Any:
    """A command-line value as YAML reads it (``0.2`` a float, ``[1, 2]`` a list); text that is
    not YAML stays the text it is, an empty value the empty string."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def parse_overrides(assignments: list[str] | None) -> dict[str, Any]:
    """Turn ``["a.b=3", "c=x"]`` into a nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for assignment in assignments or []:
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {assignment!r}")
        value = parse_value(raw)
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is a value, not a group of keys")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base`` (nested dicts merge, values replace)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(
    cls: type[T],
    *,
    file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> T:
    """Resolve a stage config from its sources (see module docstring for precedence).

    ``flags`` holds the stage's command-line options; ``None`` values mean "not given".
    """
    data: dict[str, Any] = load_yaml(file) if file else {}
    data = merge(data, {k: v for k, v in (flags or {}).items() if v is not None})
    data = merge(data, parse_overrides(overrides))
    if hasattr(cls, "with_preset_defaults"):  # a preset supplies the defaults of nested model configs
        data = cls.with_preset_defaults(data)
    return from_dict(cls, data)


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, found {data!r}")
    data = _renamed(cls, data, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known keys: {known})")
    values = {name: _coerce(hints[name], data[name], prefix + name) for name in fields if name in data}
    return cls(**values)


def _renamed(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A key a config renamed (its ``renamed_keys``, old -> new) still works for one release,
    with a one-line warning, so existing config files and --set lines keep running."""
    out = dict(data)
    for old, new in getattr(cls, "renamed_keys", {}).items():
        if old in out:
            if new in out:
                raise ConfigError(f"config keys {prefix}{old} and {prefix}{new}: one setting under two names; "
                                  f"keep {prefix}{new}")
            logging.getLogger("dydis").warning("config key %s%s is renamed %s%s; the old name goes in the next "
                                               "release", prefix, old, prefix, new)
            out[new] = out.pop(old)
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain YAML-safe data (tuples become lists, paths strings)."""
    return plain(dataclasses.asdict(config))


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two configs as plain dicts."""
    changed = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += changed_keys(a, b, f"{prefix}{key}.")
        elif key not in old or key not in new or a != b:
            changed.append(prefix + key)
    return changed


def neutral_values(cls: type, prefix: str = "") -> dict[str, Any]:
    """The dotted keys of ``cls`` (nested configs included) added after runs were first made,
    each with the value that does what a config without the key did (a class's ``added_keys``)."""
    found = {prefix + key: value for key, value in getattr(cls, "added_keys", {}).items()}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found.update(neutral_values(hints[f.name], f"{prefix}{f.name}."))
    return found


def without_neutral(data: dict[str, Any], neutral: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``data`` (a config as plain data) without the added keys that hold their neutral value.

    What identifies a run (the workflow's fingerprints, whether a checkpoint may be resumed)
    compares configs in this form, so that a release that adds a key keeps every cached
    artifact up to date and every checkpoint resumable while the key is left at that value.
    """
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out[key] = without_neutral(value, neutral, f"{prefix}{key}.")
        elif not (prefix + key in neutral and value == neutral[prefix + key]):
            out[key] = value
    return out


def comparable(config: Any) -> dict[str, Any]:
    """``to_dict(config)`` in the form that identifies a run (``without_neutral``)."""
    return without_neutral(to_dict(config), neutral_values(type(config)))


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


class _NotFinite(ConfigError):
    """A float field given NaN or an infinity: the message to show even when the field also allows null."""


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in the field's type."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        named = any(typing.get_origin(arg) is Literal and value in typing.get_args(arg) for arg in args)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and not named):
            if type(None) in args:  # a choice spelled "none" (dyga.merge) stays that choice
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except _NotFinite:
                raise
            except ConfigError:
                continue
        raise ConfigError(f"config key {key}: expected {_type_name(tp)}, found {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"config key {key}: expected one of {', '.join(map(str, choices))}, found {value!r}")
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
            value = [yaml.safe_load(v) for v in value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key}: expected {_type_name(tp)}, found {value!r}")
        return tuple(_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "2e-5" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):  # nan and inf pass every range check, then wreck a run
            return number
        if number is not None:
            raise _NotFinite(f"config key {key}: expected a finite number, found {value!r}")
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `--set name=2024` parses as an int but means the string
    elif tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    else:
        raise TypeError(f"config field {key} has unsupported type {tp!r}")
    raise ConfigError(f"config key {key}: expected {_type_name(tp)}, found {value!r}")


# ---- stage configs ------------------------------------------------------------------------

Dataset = Literal["synthetic", "shapes3d", "mpi3d-toy", "mpi3d-realistic", "mpi3d-real", "cars3d", "celeba",
                  "dsprites"]


@dataclasses.dataclass(frozen=True)
class PrepareDataConfig:
    """What `prepare-data` reads and how (DESIGN section 4)."""

    dataset: Dataset = "synthetic"
    source: str | None = None  # the original download; default: where `dydis download` puts it; not used by `synthetic`
    subset: int | None = None  # keep this many seeded random rows (CI smoke runs)
    fraction: float | None = None  # or this fraction of the rows
    factor_sizes: tuple[int, ...] | None = None  # a reduced grid for datasets whose factors come from row order
    grid: tuple[int, ...] | None = None  # synthetic: factor sizes of the rendered grid, e.g. 4,4,4,3,4,5
    crop: Literal["diffae", "center148"] = "diffae"  # CelebA: Diff-AE's 128x128 box, or a central 148 crop
    compression: Literal["none", "lzf", "gzip"] = "none"  # HDF5 filter of the images in data.h5
    workers: int | None = None  # CelebA decoding processes; default: every core
    seed: int = 0

    def __post_init__(self) -> None:
        if self.subset is not None and self.subset < 1:
            raise ConfigError(f"config key subset: expected a positive number of rows, found {self.subset}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ConfigError(f"config key fraction: expected a value in (0, 1], found {self.fraction}")
        if self.subset is not None and self.fraction is not None:
            raise ConfigError("config keys subset and fraction: give one of them, not both")
        if self.grid is not None and self.dataset != "synthetic":
            raise ConfigError(f"config key grid: only the synthetic dataset is rendered on a grid, not {self.dataset}")
        if self.factor_sizes is not None and not (self.dataset.startswith("mpi3d") or self.dataset == "cars3d"):
            raise ConfigError(f"config key factor_sizes: {self.dataset} takes its factors from its own labels; "
                              "only mpi3d-* and cars3d accept a declared grid")
        for key in ("grid", "factor_sizes"):
            sizes = getattr(self, key)
            if sizes is not None and (not sizes or any(s < 1 for s in sizes)):
                raise ConfigError(f"config key {key}: expected positive factor sizes, found {list(sizes)}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"config key workers: expected at least 1, found {self.workers}")


Preset = Literal["paper", "small", "tiny"]


@dataclasses.dataclass(frozen=True)
class TrainVQGANConfig:
    """`train-vqgan`: the first stage (Table 7; the authors' taming-transformers settings)."""

    data: str = ""  # dataset artifact: path, stage/name or stage/name@vN
    preset: Preset = "paper"
    model: VQGANConfig = dataclasses.field(default_factory=VQGANConfig)
    loss: VQLossConfig = dataclasses.field(default_factory=VQLossConfig)
    batch_size: int = 128  # per process
    accumulate: int = 2  # gradient accumulation, as the authors' config
    base_lr: float = 4.5e-6  # lr = base_lr x batch_size x accumulate x processes (taming's rule)
    max_steps: int | None = None  # optimiser updates; or give epochs
    epochs: float | None = None
    holdout: int = 1024  # images never trained on, for the reconstruction PSNR
    dead_code_restart: int = 0  # every N steps, re-seed unused codes from batch encodings (0 = off, as the authors)
    gpus: int = 0  # 0 = CPU; N = one process per GPU (DDP)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    lpips_vgg: str | None = None  # torchvision vgg16-397923af.pth; default: the torch hub cache if present
    lpips_heads: str | None = None  # LPIPS v0.1 vgg.pth (the lpips package's weights/v0.1/vgg.pth)
    lpips: bool = True  # the perceptual loss; false trains without it on purpose (the paper preset needs it)
    log_every: int = 10
    checkpoint_every: int = 200
    seed: int = 42

    @staticmethod
    def with_preset_defaults(data: dict[str, Any]) -> dict[str, Any]:
        preset = data.get("preset", "paper")
        if preset in VQGAN_PRESETS and isinstance(data.get("model", {}), dict):
            data = merge(data, {"model": merge(dataclasses.asdict(VQGAN_PRESETS[preset]), data.get("model", {}))})
        return data

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("config key data: name the dataset artifact to train on (--data)")
        if self.max_steps is None and self.epochs is None:
            raise ConfigError("config keys max_steps / epochs: say how long to train (--max-steps or --epochs)")
        if self.dead_code_restart < 0:
            raise ConfigError(f"config key dead_code_restart: expected 0 (off) or a step interval, found "
                              f"{self.dead_code_restart}")
        for key in ("batch_size", "accumulate", "log_every", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key {key}: expected at least 1, found {getattr(self, key)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"config key max_steps: expected at least 1, found {self.max_steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"config key epochs: expected a positive number, found {self.epochs}")
        if self.gpus < 0:
            raise ConfigError(f"config key gpus: expected 0 (CPU) or more, found {self.gpus}")
        if self.holdout < 1:
            raise ConfigError(f"config key holdout: expected at least 1 image, found {self.holdout}")
        if not 0 < self.base_lr <= MAX_LR:
            raise ConfigError(f"config key base_lr: expected a rate in (0, {MAX_LR:g}], found {self.base_lr}")


@dataclasses.dataclass(frozen=True)
class DyGARunConfig:
    """When and how `train-ldm` fits and applies the anchors (paper section 3.2, DESIGN section 6)."""

    mode: Literal["paper", "official"] = "paper"
    every: int | None = None  # r: epochs between anchor rounds, aligning from epoch r on; None = dataset default
    subsample: int = 100_000  # seeded training rows whose features each round fits (all rows if fewer)
    lam: float = 0.1  # lambda of eq. (6)
    tau: float = 1e-4  # Gumbel-softmax temperature of Algorithm 3
    # gradient through eq. (6)'s delta: "detach" (a coefficient; bounded on a ReLU extractor's
    # tiny features) or "full" (through its 1/c, as the released code); None: the mode's
    # (paper: detach, official: full). See dydis/dyga/align.py.
    delta_grad: Literal["detach", "full"] | None = None
    n_init: int = 8
    max_components: int = 32
    max_iter: int = 30
    # Algorithm 2's split threshold on a cluster's density (eq. 5), in the [-1, 0]-scaled features
    psi: float = 0.5
    # "valley": settle the anchors on the modes of each unit's features; "none": Algorithm 2 alone
    # (more anchors); None: the mode's (paper: valley, official: none). See dydis/dyga/anchors.py.
    merge: Literal["valley", "none"] | None = None
    feature_batch: int = 1024  # images per feature-extractor pass while collecting a round's features

    added_keys = {"psi": 0.5, "merge": None}  # added after the first studies; these values change nothing

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise ConfigError(f"config key dyga.every: expected at least 1 epoch, found {self.every}")
        for key in ("subsample", "n_init", "max_components", "max_iter", "feature_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key dyga.{key}: expected at least 1, found {getattr(self, key)}")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"config key dyga.lam: expected a factor in [0, 1], found {self.lam}")
        if self.tau <= 0:
            raise ConfigError(f"config key dyga.tau: expected a positive temperature, found {self.tau}")
        if self.psi < 0:
            raise ConfigError(f"config key dyga.psi: expected a density threshold >= 0, found {self.psi}")


# Paper defaults that differ per dataset (section 4.1, appendix C): Cars3D refits anchors every
# 5 epochs; CelebA trains with batch 64.
DATASET_DEFAULTS: dict[str, dict[str, int]] = {"cars3d": {"dyga_every": 5}, "celeba": {"batch_size": 64}}


@dataclasses.dataclass(frozen=True)
class TrainLDMConfig:
    """`train-ldm`: the diffusion model with the feature extractor, DyGA and Skip Dropout."""

    dataset: str = ""  # a dataset name: data/vqgan default to prepare-data/<it> and train-vqgan/<it>
    data: str = ""  # dataset artifact
    vqgan: str = ""  # vqgan artifact trained on that dataset (its cached latents and decoder)
    preset: Preset = "paper"
    feature_extractor: FeatureExtractorConfig = dataclasses.field(default_factory=FeatureExtractorConfig)
    unet: UNetConfig = dataclasses.field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    quantizer: Literal["dyga", "fsq", "none"] = "dyga"  # none + unet.skip_dropout 0 = the EncDiff baseline
    dyga: DyGARunConfig = dataclasses.field(default_factory=DyGARunConfig)
    fsq: FSQConfig = dataclasses.field(default_factory=FSQConfig)
    batch_size: int | None = None  # per process; None = the dataset's default (512; CelebA 64)
    lr: float = 1e-4  # constant, as the authors
    weight_decay: float = 0.01
    warmup_steps: int = 0  # linear lr warm-up (off, as the authors)
    ema_decay: float = 0.9999
    max_steps: int | None = None
    epochs: float | None = None
    gpus: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False  # torch.compile the U-Net
    log_every: int = 10
    checkpoint_every: int = 500
    sample_images: int = 8  # images in samples.png
    eval_every: int = 0  # steps between FactorVAE / DCI / MIG of the extractor on a subsample; 0 = off
    eval_rows: int = 2_000  # that subsample's rows (seeded, the same all run); the metrics' sample counts scale to it
    eval_metrics: tuple[Literal["factor_vae", "dci", "mig"], ...] = ("factor_vae", "dci", "mig")  # DCI: most of the time
    seed: int = 42

    @staticmethod
    def with_preset_defaults(data: dict[str, Any]) -> dict[str, Any]:
        preset = data.get("preset", "paper")
        if preset in FEATURE_EXTRACTOR_PRESETS:
            for key, presets in (("feature_extractor", FEATURE_EXTRACTOR_PRESETS), ("unet", UNET_PRESETS)):
                if isinstance(data.get(key, {}), dict):
                    data = merge(data, {key: merge(dataclasses.asdict(presets[preset]), data.get(key, {}))})
        return data

    def __post_init__(self) -> None:
        if not self.data and not self.dataset:
            raise ConfigError("config keys data / dataset: name the dataset artifact (--data) or the dataset "
                              "(--dataset) to train on")
        if self.max_steps is None and self.epochs is None:
            raise ConfigError("config keys max_steps / epochs: say how long to train (--max-steps or --epochs)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"config key max_steps: expected at least 1, found {self.max_steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"config key epochs: expected a positive number, found {self.epochs}")
        for key in ("log_every", "checkpoint_every", "sample_images"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key {key}: expected at least 1, found {getattr(self, key)}")
        if self.eval_every < 0 or self.eval_rows < 10 or not self.eval_metrics:
            raise ConfigError(f"config keys eval_every / eval_rows / eval_metrics: expected eval_every >= 0 (0 = off), "
                              f"eval_rows >= 10 and a metric, found {self.eval_every}, {self.eval_rows} and "
                              f"{list(self.eval_metrics)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"config key batch_size: expected at least 1, found {self.batch_size}")
        if not 0 < self.lr <= MAX_LR:
            raise ConfigError(f"config key lr: expected a rate in (0, {MAX_LR:g}], found {self.lr}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("config keys weight_decay / warmup_steps: expected numbers >= 0")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"config key ema_decay: expected a value in [0, 1], found {self.ema_decay}")
        if self.gpus < 0:
            raise ConfigError(f"config key gpus: expected 0 (CPU) or more, found {self.gpus}")
        if self.compile and self.gpus == 0:  # why: inductor's CPU build of the U-Net fails after minutes
            raise ConfigError("config key compile: torch.compile of the U-Net runs on the GPU only; drop --compile "
                              "or train with --gpus 1 or more")
        if self.unet.context_dim != self.feature_extractor.unit_dim:
            raise ConfigError(f"config key unet.context_dim: {self.unet.context_dim} must equal "
                              f"feature_extractor.unit_dim {self.feature_extractor.unit_dim} (the unit tokens "
                              "are the cross-attention context)")

    def for_dataset(self, dataset: str) -> "TrainLDMConfig":
        """Fill the settings left to the dataset (batch size, anchor interval) with its paper values."""
        defaults = DATASET_DEFAULTS.get(dataset, {})
        batch = self.batch_size if self.batch_size is not None else defaults.get("batch_size", 512)
        every = self.dyga.every if self.dyga.every is not None else defaults.get("dyga_every", 1)
        return dataclasses.replace(self, dataset=dataset, batch_size=batch,
                                   dyga=dataclasses.replace(self.dyga, every=every))


def check_representation_sources(cfg: Any) -> None:
    """eval-metrics and downstream-gbt score ldm artifacts (``models``) or files (``reps``)."""
    if not cfg.reps and not cfg.models:
        raise ConfigError("config keys models / reps: give an ldm artifact (--model) or a representation file "
                          "(--reps codes.npz)")
    if cfg.reps and cfg.models:
        raise ConfigError("config keys models / reps: give ldm artifacts or representation files, not both")
    if not cfg.data and not cfg.models:
        raise ConfigError("config key data: name the dataset artifact the representations belong to (--data)")
    if cfg.batch_size < 2 or cfg.gpus < 0:
        raise ConfigError(f"config keys batch_size / gpus: expected >= 2 and >= 0, found {cfg.batch_size}, {cfg.gpus}")


# conditioning: not a disentanglement metric but how much a trained model's U-Net reads its units
# (dydis.training.conditioning); like fid it needs the model, so only --model inputs have it
MetricName = Literal["factor_vae", "dci", "mig", "sap", "modularity", "infomec", "tad", "fid", "conditioning"]


@dataclasses.dataclass(frozen=True)
class EvalMetricsConfig:
    """`eval-metrics`: disentanglement metrics of representations (DESIGN section 7)."""

    renamed_keys = {"dci_backend": "gbt_backend"}  # one name in eval-metrics and downstream-gbt
    data: str = ""  # dataset artifact with the ground truth; default: the models' training data
    models: tuple[str, ...] = ()  # ldm artifacts: their representation of every dataset row is computed
    reps: tuple[str, ...] = ()  # or: .npz files with `codes` aligned with the dataset rows (one per model/seed)
    metrics: tuple[MetricName, ...] | None = None  # default: every metric the dataset and inputs allow
    reduce: Literal["pca", "scalar", "none"] = "pca"  # vector units -> one scalar each (PCA(1) per unit: the paper)
    tad_protocol: Literal["dis-dis", "nashae"] = "dis-dis"
    infomec_active: Literal["iqr", "range"] = "iqr"  # the authors' vendored rule, or latent_quantization's
    gbt_backend: Literal["fast", "sklearn"] = "fast"  # DCI's boosted trees: scikit-learn's, grown from presorted columns; "sklearn" fits its own, 5-7x slower
    n_jobs: int = -1  # parallel fits (joblib); -1 = every core
    fid_weights: str | None = None  # pt_inception-2015-12-05-6726825d.pth; default: the torch hub cache
    fid_samples: int = 50_000  # generated images, each conditioned on a random training image (the authors')
    fid_reference: int | None = None  # real images for FID (seeded subsample); None = every dataset image
    fid_steps: int = 100  # DDIM steps (eta 0) of the generated images
    fid_cache: bool = True  # keep the real images' statistics in <root>/.cache/fid for the next evaluation
    batch_size: int = 256  # images per pass when computing representations, samples and Inception features
    gpus: int = 0  # 0 = CPU; >= 1 = run the models on the GPU
    seed: int = 0  # each metric draws from a fresh RandomState(seed)

    def __post_init__(self) -> None:
        check_representation_sources(self)
        for needs_model in ("fid", "conditioning"):
            if self.metrics and needs_model in self.metrics and not self.models:
                raise ConfigError(f"config key metrics: {needs_model} needs a generative model (--model), not --reps")
        for key in ("fid_samples", "fid_steps"):
            if getattr(self, key) < 2:
                raise ConfigError(f"config key {key}: expected at least 2, found {getattr(self, key)}")
        if self.fid_reference is not None and self.fid_reference < 2:
            raise ConfigError(f"config key fid_reference: expected at least 2 images, found {self.fid_reference}")


@dataclasses.dataclass(frozen=True)
class DownstreamGBTConfig:
    """`downstream-gbt`: GBT sample efficiency of representations (the paper's Table 5, DESIGN section 9)."""

    renamed_keys = {"backend": "gbt_backend"}  # one name in eval-metrics and downstream-gbt
    data: str = ""  # dataset artifact with the ground truth; default: the models' training data
    models: tuple[str, ...] = ()  # ldm artifacts: their representation of every dataset row is computed
    reps: tuple[str, ...] = ()  # or: .npz files with `codes` aligned with the dataset rows (one per model)
    reduce: Literal["pca", "scalar", "none"] = "pca"  # vector units -> one scalar each, as eval-metrics
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # evaluation seeds; each draws every size from a fresh RandomState
    sizes: tuple[int, ...] = (10_000, 1_000, 100)  # training sizes, drawn in this order; ratios are to the largest
    test_size: int = 5_000  # fresh test points after each training set (disentanglement_lib)
    gbt_backend: Literal["fast", "sklearn"] = "fast"  # the boosted trees, as eval-metrics' gbt_backend
    n_jobs: int = -1  # parallel factor fits (joblib); -1 = every core
    batch_size: int = 256  # images per pass when computing a model's representation
    gpus: int = 0  # 0 = CPU; >= 1 = run the models on the GPU

    def __post_init__(self) -> None:
        check_representation_sources(self)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"config key seeds: expected one or more distinct seeds, found {list(self.seeds)}")
        if len(set(self.sizes)) < 2 or min(self.sizes) < 1 or len(set(self.sizes)) != len(self.sizes):
            raise ConfigError(f"config key sizes: expected two or more distinct positive training sizes (the ratios "
                              f"compare them), found {list(self.sizes)}")
        if self.test_size < 1:
            raise ConfigError(f"config key test_size: expected at least 1 test point, found {self.test_size}")
        if self.n_jobs == 0:
            raise ConfigError("config key n_jobs: expected a number of parallel fits or -1 (every core), found 0")


VizWhat = Literal["interchange", "attention", "interpolate", "units", "curves"]


@dataclasses.dataclass(frozen=True)
class VisualizeConfig:
    """`visualize`: the paper's figures from ldm artifacts (Figs. 1, 3, 4, 6-11)."""

    renamed_keys = {"steps": "frames"}  # it counts images, and read like the sampler's steps (ddim_steps)
    what: VizWhat | None = None  # which figure
    models: tuple[str, ...] = ()  # ldm artifacts; several only for curves (one loss line each)
    data: str = ""  # dataset artifact the images come from; default: the model's training data
    pairs: int = 4  # source/target pairs (interchange, interpolate), seeded picks
    images: int = 4  # images, one row each (attention)
    frames: int = 8  # images on each interpolation line, both ends included (interpolate)
    points: int = 2_000  # images whose units the units plot embeds (seeded subsample; all if fewer)
    ddim_steps: int = 100  # the paper's DDIM sampling (eta 0)
    embedding: Literal["auto", "pacmap", "pca"] = "auto"  # units plot; auto = PaCMAP (as Fig. 1) if installed
    batch_size: int = 64  # images per DDIM batch or feature pass
    gpus: int = 0  # 0 = CPU; >= 1 = the first GPU (one device is all a figure needs)
    seed: int = 0  # the image picks and the starting noise

    def __post_init__(self) -> None:
        if self.what is None:
            raise ConfigError("config key what: say which figure: interchange, attention, interpolate, units or "
                              "curves")
        if not self.models:
            raise ConfigError("config key models: give the ldm artifact to visualise (--model)")
        if len(self.models) > 1 and self.what != "curves":
            raise ConfigError(f"config key models: {self.what} shows one model, found {len(self.models)}; only "
                              "curves compares several")
        for key in ("pairs", "images", "points", "ddim_steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key {key}: expected at least 1, found {getattr(self, key)}")
        if self.frames < 2:
            raise ConfigError(f"config key frames: expected at least 2 (both ends), found {self.frames}")
        if self.gpus < 0:
            raise ConfigError(f"config key gpus: expected 0 (CPU) or more, found {self.gpus}")


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """`report`: the variants of a sweep side by side, from the artifacts that scored their models."""

    metrics: tuple[str, ...] = ()  # eval-metrics artifacts; a glob in the name takes every match: eval-metrics/study-*
    downstream: tuple[str, ...] = ()  # downstream-gbt artifacts, likewise
    baseline: str | None = None  # the variant the others are compared with; default: the first one read
    bootstrap: int = 10_000  # resamples of each difference's bootstrap interval
    seed: int = 0  # the bootstrap's random stream

    def __post_init__(self) -> None:
        if not self.metrics and not self.downstream:
            raise ConfigError("config keys metrics / downstream: give the eval-metrics (--metrics) or downstream-gbt "
                              "(--downstream) artifacts to report on")
        if self.bootstrap < 100:
            raise ConfigError(f"config key bootstrap: expected at least 100 resamples, found {self.bootstrap}")
