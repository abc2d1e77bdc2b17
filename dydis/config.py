"""Typed stage configuration: dataclass defaults, a YAML file, command-line flags, `--set`.

Every stage has one frozen dataclass. A resolved config is built from, in increasing
precedence: the dataclass defaults, the ``--config`` YAML file, the stage's own command-line
flags, and ``--set key.sub=value`` overrides. Every value is checked against the field's type
annotation, so an unknown key or a wrong type is a ``ConfigError`` that names the key, never a
stack trace from deep inside a stage.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from dydis.artifacts import plain
from dydis.errors import ConfigError
from dydis.models.config import VQGAN_PRESETS, VQGANConfig, VQLossConfig

T = TypeVar("T")


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


def parse_overrides(assignments: list[str] | None) -> dict[str, Any]:
    """Turn ``["a.b=3", "c=x"]`` into a nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for assignment in assignments or []:
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {assignment!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
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
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known keys: {known})")
    values = {name: _coerce(hints[name], data[name], prefix + name) for name in fields if name in data}
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain YAML-safe data (tuples become lists, paths strings)."""
    return plain(dataclasses.asdict(config))


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in the field's type."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
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
    source: str | None = None  # the original download; not used by `synthetic`
    subset: int | None = None  # keep this many seeded random rows (CI smoke runs)
    fraction: float | None = None  # or this fraction of the rows
    factor_sizes: tuple[int, ...] | None = None  # a reduced grid for datasets whose factors come from row order
    grid: tuple[int, ...] | None = None  # synthetic: factor sizes of the rendered grid, e.g. 4,4,4,3,4,5
    crop: Literal["diffae", "center148"] = "diffae"  # CelebA: Diff-AE's 128x128 box, or a central 148 crop
    compression: Literal["none", "lzf", "gzip"] = "none"  # HDF5 filter of the images in data.h5
    workers: int | None = None  # CelebA decoding processes; default: every core
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset != "synthetic" and not self.source:
            raise ConfigError(f"config key source: {self.dataset} is prepared from its original download; "
                              "pass --source PATH")
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
        if self.base_lr <= 0:
            raise ConfigError(f"config key base_lr: expected a positive rate, found {self.base_lr}")


MetricName = Literal["factor_vae", "dci", "mig", "sap", "modularity", "infomec", "tad", "fid"]


@dataclasses.dataclass(frozen=True)
class EvalMetricsConfig:
    """`eval-metrics`: disentanglement metrics of representations (DESIGN section 7)."""

    data: str = ""  # dataset artifact with the ground truth
    reps: tuple[str, ...] = ()  # .npz files with `codes` aligned with the dataset rows (one per model/seed)
    metrics: tuple[MetricName, ...] | None = None  # default: every metric the dataset allows
    reduce: Literal["pca", "scalar", "none"] = "pca"  # vector units -> one scalar each (PCA(1) per unit: the paper)
    tad_protocol: Literal["dis-dis", "nashae"] = "dis-dis"
    infomec_active: Literal["iqr", "range"] = "iqr"  # the authors' vendored rule, or latent_quantization's
    dci_backend: Literal["fast", "sklearn"] = "fast"  # same trees as scikit-learn's from presorted columns; "sklearn" fits its own, 5-7x slower
    n_jobs: int = -1  # parallel fits (joblib); -1 = every core
    seed: int = 0  # each metric draws from a fresh RandomState(seed)

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("config key data: name the dataset artifact the representations belong to (--data)")
        if not self.reps:
            raise ConfigError("config key reps: give at least one representation file (--reps codes.npz)")
