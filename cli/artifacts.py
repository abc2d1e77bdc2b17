"""`dydis artifacts list|show`: browse the artifact store."""

from __future__ import annotations

import json
from typing import Annotated

import typer
import yaml
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

from dydis.cli.common import DebugOpt, ReadableCommand, RootOpt, console, emit_result, handle_errors, store_for

app = typer.Typer(help="Browse the artifact store.", no_args_is_help=True)


def _size(artifact) -> str:
    total = sum(entry["bytes"] for entry in (artifact.manifest.get("files") or {}).values())
    for unit in ("B", "KB", "MB", "GB"):
        if total < 1024 or unit == "GB":
            return f"{total:,.0f} {unit}" if unit == "B" else f"{total:,.1f} {unit}"
        total /= 1024
    return ""


def _summary(artifact) -> str:
    results = artifact.results
    if artifact.kind == "dataset" and "n_images" in results:
        return f"{results['n_images']:,} images"
    if artifact.kind == "vqgan" and "psnr" in results:
        return f"PSNR {results['psnr']:.2f} dB, {results.get('codes_used', '?')} codes"
    if artifact.kind == "metrics" and isinstance(results.get("metrics"), dict):
        shown = [(k, v["mean"]) for k, v in results["metrics"].items() if k in ("factor_vae", "dci_disentanglement",
                                                                                 "mig", "tad")]
        return ", ".join(f"{k}={v:.3f}" for k, v in shown)
    numbers = {k: v for k, v in results.items() if isinstance(v, float)}
    return ", ".join(f"{k}={v:.3g}" for k, v in list(numbers.items())[:3])


@app.command("list", cls=ReadableCommand)
@handle_errors
def list_(
    root: RootOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON on stdout.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Every artifact in the store, as a table (or JSON with --json)."""
    store = store_for(root)
    artifacts = store.list()
    if as_json:
        typer.echo(json.dumps([{"ref": a.ref, "kind": a.kind, "path": str(a.path), "created": a.manifest.get("created"),
                                "results": a.results} for a in artifacts], default=str))
        return
    if not artifacts:
        console.print(f"no artifacts in {store.root}")
        return
    table = Table(title=f"artifacts in {store.root}")
    for column in ("artifact", "kind", "created (UTC)", "size", "summary"):
        table.add_column(column, justify="right" if column == "size" else "left",
                         no_wrap=column != "summary")
    for a in artifacts:
        created = str(a.manifest.get("created", ""))[:16].replace("T", " ")
        table.add_row(a.ref, a.kind, created, _size(a), _summary(a))
    console.print(table)


@app.command("show", cls=ReadableCommand)
@handle_errors
def show(
    ref: Annotated[str, typer.Argument(help="Artifact: a path, stage/name (latest) or stage/name@vN.")],
    root: RootOpt = None,
    verify: Annotated[bool, typer.Option(help="Check the files' sha256 against the manifest.")] = True,
    debug: DebugOpt = False,
) -> None:
    """One artifact's manifest and its lineage tree; prints its path on stdout."""
    store = store_for(root)
    artifact = store.load(ref, verify=verify)
    manifest = {k: v for k, v in artifact.manifest.items() if k != "results"}
    console.print(Syntax(yaml.safe_dump(manifest, sort_keys=False), "yaml", background_color="default"))
    results = artifact.results
    if results:
        console.print(Syntax(yaml.safe_dump({"results": _abridged(results)}, sort_keys=False), "yaml",
                             background_color="default"))
    tree = Tree(f"[bold]{artifact.ref}[/] ({artifact.kind})")
    nodes = {0: tree}
    for depth, entry, parent, intact in store.lineage(artifact):
        label = f"{entry.get('role', 'input')}: {entry.get('ref')} ({entry.get('kind')})"
        if parent is None:
            label += " [red]missing[/]"
        elif not intact:
            label += " [red]manifest changed since use[/]"
        nodes[depth + 1] = nodes[depth].add(label)
    console.print(tree)
    status = "files verified" if verify else "files not verified"
    console.print(f"[green]{status}[/]: {len(artifact.manifest.get('files') or {})} files")
    emit_result(artifact.path)


def _abridged(results: dict) -> dict:
    """Long lists (e.g. the 64 preview entries) shortened for the terminal."""
    out = {}
    for key, value in results.items():
        if isinstance(value, list) and len(value) > 6:
            out[key] = value[:3] + [f"... {len(value) - 3} more (see manifest.yaml)"]
        else:
            out[key] = value
    return out
