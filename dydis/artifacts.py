"""The versioned artifact store (DESIGN section 3).

Every stage writes exactly one artifact, a directory ``<root>/<stage>/<name>/v<N>/`` whose
``manifest.yaml`` records what it is (kind, schema), how it was made (config, inputs with
their manifest hashes, environment, seed) and what it holds (file hashes, results). It is
assembled in a temporary directory and renamed into place only when complete, so a crash
never leaves half an artifact, and it is never modified afterwards.

A manifest records each input by its path relative to the store root (``stage/name/vN``) and
is read against the store that holds it, so a store can be moved or copied whole: a copy
reads its own inputs, never the original's.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

import dydis
from dydis.errors import ArtifactError

MANIFEST = "manifest.yaml"
ROOT_ENV = "DYDIS_ARTIFACTS"
DEFAULT_ROOT = "artifacts"

# The newest format version of each artifact kind this dydis can read. A stage that changes
# what it writes bumps its kind's number (and keeps a reader for the old one).
SCHEMAS: dict[str, int] = {
    "dataset": 1,
    "vqgan": 1,
    "ldm": 1,
    "metrics": 1,
    "downstream": 1,
    "viz": 1,
    "report": 1,
}

_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_REF = re.compile(r"^(?P<stage>[A-Za-z0-9._-]+)/(?P<name>[A-Za-z0-9][A-Za-z0-9._+-]*)(?:@v(?P<version>[1-9][0-9]*))?$")
# An input's place in the store holding the manifest, as recorded: <stage>/<name>/v<N>.
_STORE_PATH = re.compile(r"^(?!\.\.?/)[A-Za-z0-9._-]+/[A-Za-z0-9][A-Za-z0-9._+-]*/v[1-9][0-9]*$")
# A staging folder: <stage>-<name>@<host>@<pid>-<token>, so that a later writer can tell
# whether the process that made it is still running.
_STAGING = re.compile(r"^[^@]+@(?P<host>[^@]+)@(?P<pid>[0-9]+)-[0-9a-f]{12}$")


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def plain(value: Any) -> Any:
    """Recursively convert numpy scalars/arrays, tuples and paths to YAML-safe values."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class Artifact:
    """A published artifact: its directory and its manifest."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def ref(self) -> str:
        return f"{self.stage}/{self.name}@v{self.version}"

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config") or {}

    @property
    def results(self) -> dict[str, Any]:
        return self.manifest.get("results") or {}

    def inputs(self, role: str) -> list[dict[str, Any]]:
        """The manifest's entries of the artifacts this one was made from in ``role`` (``data``, ``vqgan``)."""
        return [entry for entry in self.manifest.get("inputs") or [] if entry.get("role") == role]

    def input_path(self, entry: dict[str, Any]) -> Path:
        """Directory of the input that ``entry`` (one of the manifest's ``inputs``) records.

        A relative path is the input's place in the store that holds this artifact
        (``<root>/<stage>/<name>/v<N>``), wherever that store now is. An absolute path comes
        from a manifest written before paths were relative, or names an artifact outside the
        store; the holding store's artifact of the same ref is preferred when its manifest is
        the one recorded, so that a moved or copied old store reads its own inputs too.
        """
        recorded = str(entry.get("path", ""))
        root = self.path.parent.parent.parent
        if not Path(recorded).is_absolute():
            if not _STORE_PATH.match(recorded):
                raise ArtifactError(f"input path {recorded!r} in the manifest is not <stage>/<name>/v<N>",
                                    self.path / MANIFEST)
            return root / recorded
        ref = _REF.match(str(entry.get("ref", "")))
        if ref and ref["version"]:
            here = root / ref["stage"] / ref["name"] / f"v{ref['version']}"
            if (here / MANIFEST).is_file() and sha256_file(here / MANIFEST) == entry.get("manifest_sha256"):
                return here
        return Path(recorded)

    def file(self, name: str) -> Path:
        """Path of one of the artifact's files; an error if the manifest does not list it."""
        if name not in (self.manifest.get("files") or {}):
            raise ArtifactError(f"artifact has no file {name!r} (a {self.kind} artifact from {self.stage})", self.path)
        return self.path / name

    def manifest_sha256(self) -> str:
        return sha256_file(self.path / MANIFEST)

    def verify(self, hashes: bool = True) -> None:
        """Check every listed file exists with the recorded size (and sha256 when ``hashes``)."""
        for name, entry in (self.manifest.get("files") or {}).items():
            path = self.path / name
            if not path.is_file():
                raise ArtifactError(f"file {name} listed in the manifest is missing", self.path)
            if path.stat().st_size != entry["bytes"]:
                raise ArtifactError(
                    f"expected {entry['bytes']} bytes as the manifest records, found {path.stat().st_size}", path
                )
            if hashes and sha256_file(path) != entry["sha256"]:
                raise ArtifactError("sha256 differs from the manifest's: the file was modified or corrupted", path)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        manifest = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"not an artifact: no {MANIFEST} in it", directory) from None
    except (OSError, yaml.YAMLError) as err:
        raise ArtifactError(f"unreadable manifest ({err.__class__.__name__})", path) from None
    required = ("kind", "schema", "stage", "name", "version", "files")
    if not isinstance(manifest, dict) or any(k not in manifest for k in required):
        raise ArtifactError(f"manifest lacks one of the keys {', '.join(required)}", path)
    return manifest


class ArtifactStore:
    """Artifacts under one root directory (``--root``, ``$DYDIS_ARTIFACTS`` or ./artifacts).

    ``workflow``, when given, is recorded as the ``workflow`` entry of every manifest this store
    writes: the workflow runner's fingerprint of the step, which it looks for to skip steps
    that are up to date without repeating what each stage fills into its stored config.
    """

    def __init__(self, root: str | Path | None = None, *, workflow: dict[str, Any] | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.workflow = workflow

    # ---- reading -------------------------------------------------------------------------

    def versions(self, stage: str, name: str) -> list[int]:
        directory = self.root / stage / name
        if not directory.is_dir():
            return []
        found = (_VERSION_DIR.match(p.name) for p in directory.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def resolve(self, ref: str | Path) -> Path:
        """Directory of an artifact named by path, ``stage/name`` (latest) or ``stage/name@vN``."""
        text = str(ref)
        as_path = Path(text).expanduser()
        if (as_path / MANIFEST).is_file():
            return as_path
        match = _REF.match(text)
        if match is None:
            if as_path.exists():
                raise ArtifactError(f"not an artifact: no {MANIFEST} in it", as_path)
            raise ArtifactError(
                "no such artifact: expected a directory holding manifest.yaml, stage/name or stage/name@vN", text
            )
        stage, name, version = match["stage"], match["name"], match["version"]
        versions = self.versions(stage, name)
        if not versions:
            raise ArtifactError(f"no artifact {stage}/{name} in the store {self.root}", text)
        if version is None:
            return self.root / stage / name / f"v{versions[-1]}"
        if int(version) not in versions:
            have = ", ".join(f"v{v}" for v in versions)
            raise ArtifactError(f"no version v{version} of {stage}/{name} (have {have})", text)
        return self.root / stage / name / f"v{version}"

    def load(self, ref: str | Path, kind: str | None = None, *, verify: bool = True) -> Artifact:
        """Resolve and validate an artifact: kind, known schema, files and their hashes."""
        path = self.resolve(ref)
        manifest = read_manifest(path)
        artifact = Artifact(path=path, manifest=manifest)
        if kind is not None and artifact.kind != kind:
            raise ArtifactError(
                f"expected a {kind} artifact, found a {artifact.kind} artifact written by {artifact.stage}", path
            )
        known = SCHEMAS.get(artifact.kind)
        if known is None:
            raise ArtifactError(f"unknown artifact kind {artifact.kind!r}", path)
        if not isinstance(manifest["schema"], int) or not 1 <= manifest["schema"] <= known:
            raise ArtifactError(
                f"{artifact.kind} schema {manifest['schema']!r} is not one this dydis reads (1..{known}); "
                "upgrade dydis or re-run the stage",
                path,
            )
        if verify:
            artifact.verify()
        return artifact

    def list(self) -> list[Artifact]:
        """Every published artifact in the store, ordered by stage, name and version."""
        found = []
        if not self.root.is_dir():
            return found
        for manifest_path in sorted(self.root.glob(f"*/*/v*/{MANIFEST}")):
            if _VERSION_DIR.match(manifest_path.parent.name):
                try:
                    found.append(Artifact(manifest_path.parent, read_manifest(manifest_path.parent)))
                except ArtifactError:
                    continue
        found.sort(key=lambda a: (a.stage, a.name, a.version))
        return found

    def input_of(self, artifact: Artifact, role: str, kind: str) -> Artifact:
        """The artifact ``artifact`` was made from in ``role`` (``data``, ``vqgan``), loaded and
        checked: its manifest must still be the one whose sha256 ``artifact`` recorded, or the
        input is no longer what ``artifact`` was made from."""
        entries = artifact.inputs(role)
        if not entries:
            raise ArtifactError(f"the manifest names no {role} input", artifact.path)
        found = self.load(artifact.input_path(entries[0]), kind=kind)
        if found.manifest_sha256() != entries[0].get("manifest_sha256"):
            raise ArtifactError(f"sha256 differs from the one {artifact.ref} recorded when it was made from it: "
                                "the manifest was changed since", found.path / MANIFEST)
        return found

    def lineage(self, artifact: Artifact) -> Iterator[tuple[int, dict[str, Any], Artifact | None, bool]]:
        """Depth-first walk of the inputs: (depth, input entry, loaded artifact or None, hash ok)."""

        def walk(current: Artifact, depth: int):
            for entry in current.manifest.get("inputs") or []:
                try:
                    path = current.input_path(entry)
                    parent = Artifact(path, read_manifest(path))
                    intact = parent.manifest_sha256() == entry.get("manifest_sha256")
                except ArtifactError:
                    parent, intact = None, False
                yield depth, entry, parent, intact
                if parent is not None:
                    yield from walk(parent, depth + 1)

        yield from walk(artifact, 0)

    # ---- writing -------------------------------------------------------------------------

    def create(
        self,
        *,
        stage: str,
        name: str,
        kind: str,
        config: dict[str, Any],
        inputs: dict[str, Artifact] | None = None,
        seed: int | None = None,
        device: str = "cpu",
    ) -> "ArtifactWriter":
        """Start a new version of ``stage/name``; use as a context manager."""
        if kind not in SCHEMAS:
            raise ValueError(f"unknown artifact kind {kind!r}")
        if not _NAME.match(name):
            raise ArtifactError(
                "artifact names use letters, digits and . _ + - and start with a letter or digit", name
            )
        return ArtifactWriter(self, stage=stage, name=name, kind=kind, config=config,
                              inputs=inputs or {}, seed=seed, device=device)


class ArtifactWriter:
    """Collects an artifact's files in a private temporary directory, then publishes it.

    ``with store.create(...) as writer:`` write files into ``writer.dir`` and results into
    ``writer.results``. On a clean exit the manifest is written, files are made read-only
    and the directory is renamed to the next free ``v<N>``; on an exception the temporary
    directory is removed and nothing is published.
    """

    def __init__(self, store, *, stage, name, kind, config, inputs, seed, device):
        self.store, self.stage, self.name, self.kind = store, stage, name, kind
        self.config, self.inputs, self.seed, self.device = config, inputs, seed, device
        self.results: dict[str, Any] = {}
        self.dir: Path | None = None
        self.artifact: Artifact | None = None

    def __enter__(self) -> "ArtifactWriter":
        staging = self.store.root / ".staging"
        try:
            staging.mkdir(parents=True, exist_ok=True)
            remove_abandoned_staging(staging)
            self.dir = staging / f"{self.stage}-{self.name}@{_host()}@{os.getpid()}-{uuid.uuid4().hex[:12]}"
            self.dir.mkdir()
        except OSError as err:
            raise ArtifactError(f"cannot write to the artifact store ({err.strerror})", self.store.root) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._discard()
            return False
        try:
            self.artifact = self._publish()
        except BaseException:
            self._discard()
            raise
        return False

    def _discard(self) -> None:
        if self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        try:
            (self.store.root / ".staging").rmdir()  # only succeeds when nothing else is staging
        except OSError:
            pass

    def _manifest(self) -> dict[str, Any]:
        """The manifest, with the version left for ``_publish`` to fill in."""
        files = {}
        for path in sorted(p for p in self.dir.rglob("*") if p.is_file()):
            rel = path.relative_to(self.dir).as_posix()
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        import torch  # deferred: importing torch costs a second and most readers never need it

        return plain({
            "kind": self.kind,
            "schema": SCHEMAS[self.kind],
            "stage": self.stage,
            "name": self.name,
            "version": None,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "dydis_version": dydis.__version__,
            "git": git_commit(),
            "torch": str(torch.__version__),
            "device": self.device,
            "seed": self.seed,
            "config": self.config,
            "inputs": [
                {"role": role, "ref": art.ref, "path": self._recorded_path(art), "kind": art.kind,
                 "manifest_sha256": art.manifest_sha256()}
                for role, art in self.inputs.items()
            ],
            **({"workflow": self.store.workflow} if self.store.workflow else {}),
            "files": files,
            "results": self.results,
        })

    def _recorded_path(self, art: Artifact) -> str:
        """An input's path relative to the store root when it is one of this store's artifacts
        (the new one will sit beside it), else absolute."""
        path = art.path.resolve()
        try:
            relative = path.relative_to(self.store.root.resolve()).as_posix()
        except ValueError:
            return str(path)
        return relative if _STORE_PATH.match(relative) else str(path)

    def _publish(self) -> Artifact:
        parent = self.store.root / self.stage / self.name
        parent.mkdir(parents=True, exist_ok=True)
        manifest = self._manifest()  # files hashed once, before manifest.yaml joins them
        for path in self.dir.rglob("*"):
            if path.is_file():
                path.chmod(0o444)
        manifest_path = self.dir / MANIFEST
        for _attempt in range(100):
            version = (self.store.versions(self.stage, self.name) or [0])[-1] + 1
            manifest["version"] = version
            if manifest_path.exists():
                manifest_path.chmod(0o644)
            manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
            manifest_path.chmod(0o444)
            try:
                os.rename(self.dir, parent / f"v{version}")
            except OSError:  # another process published this version first: take the next one
                continue
            self._discard()
            final = parent / f"v{version}"
            return Artifact(final, manifest)
        raise ArtifactError("could not find a free version number after 100 attempts", parent)


def _host() -> str:
    """This machine's name as it may appear in a staging folder's name (no ``@`` or ``/``)."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: checks that the process exists, sends nothing
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        return True
    return True


def remove_abandoned_staging(staging: Path) -> None:
    """Remove the staging folders whose writer died without cleaning up (kill -9, power loss).

    Each folder's name carries its writer's host and process id. Only folders made on this
    host by a process that no longer exists are removed: a live writer's folder, one from
    another host (whose processes cannot be checked from here) and one in an older naming
    are left alone. A reused process id keeps a stale folder until that process ends too.
    """
    host = _host()
    for folder in staging.iterdir():
        match = _STAGING.match(folder.name)
        if match and match["host"] == host and not _process_alive(int(match["pid"])):
            shutil.rmtree(folder, ignore_errors=True)


def git_commit() -> str | None:
    """Commit of the dydis source tree when it is a git checkout (with ``+dirty`` if modified)."""
    source = Path(dydis.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None
