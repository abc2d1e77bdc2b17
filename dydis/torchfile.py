"""Reading the torch files dydis loads (models, checkpoints, downloaded weights) without running
code they may carry.

A torch file is a pickle: unpickled in full, it can call any Python function, so a model or
checkpoint that someone else could write (a shared store, a downloaded artifact) could run
code on load; a manifest hash does not help, since whoever writes the file can rewrite the
manifest. Every load therefore uses ``weights_only=True``, which admits tensors and plain
values (dicts, lists, tuples, numbers, strings, None) and nothing else, and what dydis saves
holds only those.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from dydis.errors import DataError


def load_torch_file(path: str | Path, what: str, *, mmap: bool = False) -> Any:
    """The contents of the torch file ``path`` on the CPU, tensors and plain values only.

    ``what`` names the expected file in errors (e.g. "ldm model file"). A missing, truncated or
    foreign file, or one holding other Python objects (refused unread), is a one-line
    ``DataError`` naming the file. ``mmap`` maps the tensors instead of reading them (cheap when
    only the plain values are wanted).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        # why: torch's message is many lines long and suggests the unsafe load; it names the
        # "GLOBAL" (a class or function) it refused, where a damaged file fails otherwise
        if "global" in str(err).lower():
            raise DataError(f"refused: expected only tensors and plain values in the {what}, found other Python "
                            "objects (loading them could run code)", path) from None
        raise DataError(f"not a readable {what} (UnpicklingError): truncated or not a torch file", path) from None
    except Exception as err:  # a truncated or foreign file raises several unrelated types
        raise DataError(f"not a readable {what} ({err.__class__.__name__}): truncated or not a torch file",
                        path) from None


def require_keys(saved: Any, keys: tuple[str, ...], what: str, path: str | Path) -> dict[str, Any]:
    """``saved`` as the dict of at least ``keys`` that a ``what`` holds, or a ``DataError``."""
    if not isinstance(saved, dict):
        raise DataError(f"expected the {what} to be a dict of {', '.join(keys)}, found a {type(saved).__name__}",
                        path)
    missing = [key for key in keys if key not in saved]
    if missing:
        raise DataError(f"expected the {what} to hold {', '.join(keys)}; {', '.join(missing)} missing", path)
    return saved


def load_weights(module: torch.nn.Module, weights: Any, path: str | Path) -> None:
    """``module.load_state_dict(weights)``, read from ``path``; weights of another shape or with other
    keys than the module built from the file's own config are a ``DataError``."""
    try:
        module.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:  # a wrong shape or key; not a mapping at all
        raise DataError(f"the weights do not fit the model of the config stored with them "
                        f"({str(err).strip().splitlines()[0]})", path) from None
