"""The report's files: report.md, report.html (self-contained) and the long report.csv.

Both documents are written from one list of blocks (headings, paragraphs, tables, images), so
they say the same thing: the markdown links the PNGs beside it in the artifact, the HTML
embeds them as base64 data URIs and carries its CSS inline, so it opens anywhere on its own.
"""

from __future__ import annotations

import base64
import csv
import html
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dydis.report.stats import Comparison, Row, Summary, in_order

CSV_COLUMNS = ("variant", "seed", "metric", "value")


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    caption: str
    file: str  # relative to the report's directory


Block = Heading | Paragraph | Table | Figure


@dataclass(frozen=True)
class Report:
    """What the report says, before it is written in either format."""

    title: str
    sources: list[str]  # refs of the artifacts it read
    rows: list[Row]
    baseline: str
    summary: dict[tuple[str, str], Summary]
    comparisons: list[Comparison]
    training: Table | None  # each variant's training steps, time, speed and final loss; None without models
    sharing: Table | None  # each variant's factors that share FactorVAE's code; None without its votes
    curves: list[Figure]  # one per metric
    no_curves: str  # why there are none, when there are none
    figures: list[Figure]  # each variant's interchange and units figures found in the store


def blocks(report: Report) -> list[Block]:
    """The report as headings, paragraphs, tables and figures, in reading order."""
    variants = in_order([row.variant for row in report.rows])
    metrics = in_order([row.metric for row in report.rows])
    counts = {v: max(s.n for (variant, _), s in report.summary.items() if variant == v) for v in variants}
    out: list[Block] = [
        Heading(f"Report: {report.title}", 1),
        Paragraph(f"Inputs: {', '.join(report.sources)}."),
        Paragraph("Mean ± std (ddof 0) of each variant's models; a variant is the models that differ only in their "
                  "seed, n is how many."),
        Table(["metric", *(f"{v} (n={counts[v]})" for v in variants)],
              [[metric, *(_mean_std(report.summary.get((v, metric))) for v in variants)] for metric in metrics]),
    ]
    others = [v for v in variants if v != report.baseline]
    if others:
        cells = {(c.variant, c.metric): _difference(c) for c in report.comparisons}
        out += [Heading(f"Each variant minus the baseline ({report.baseline})"),
                Paragraph("Each cell: the variant's mean minus the baseline's, its 95% bootstrap interval, and the "
                          "two-sided p-value of a paired t-test over the models of equal seed (only when both "
                          "variants have the same seeds)."),
                Table(["metric", *others], [[metric, *(cells.get((v, metric), "") for v in others)]
                                            for metric in metrics])]
    if report.training is not None:
        out += [Heading("Training"),
                Paragraph("Mean ± std over each variant's models of what their train-ldm artifacts record. The "
                          "minutes are wall-clock over all of a run's sessions, with the DyGA rounds and the "
                          "evaluations while training; images/s counts the training steps alone (of a run's "
                          "last session); the loss is the training loss of the last steps, with Skip Dropout "
                          "on where a variant has it."),
                report.training]
    if report.sharing is not None:
        out += [Heading("Factors that share a unit"),
                Paragraph("From FactorVAE's evaluation votes: factors whose votes go mostly to the same code. "
                          "FactorVAE's majority vote gives that code to one of them, so with one such pair among "
                          "k factors the score stays near (k - 1) / k however well the rest is separated."),
                report.sharing]
    out.append(Heading("Disentanglement during training"))
    out += report.curves or [Paragraph(report.no_curves)]
    if report.figures:
        out.append(Heading("Figures"))
        out += report.figures
    return out


def _mean_std(summary: Summary | None) -> str:
    return "" if summary is None else f"{summary.mean:.3f} ± {summary.std:.3f}"


def _difference(c: Comparison) -> str:
    test = f", p={c.p_value:.3g} ({c.pairs} pairs)" if c.p_value is not None else ""
    return f"{c.difference:+.3f} [{c.low:+.3f}, {c.high:+.3f}]{test}"


def markdown(report_blocks: list[Block]) -> str:
    lines = []
    for block in report_blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            cells = [[cell.replace("|", "\\|") for cell in row] for row in (block.header, *block.rows)]
            lines += ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(row) + " |" for row in cells[1:]] + [""]
        else:
            lines += [f"![{block.caption}]({block.file})", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f2f2f2}
figure{display:inline-block;margin:.5em 1em .5em 0}figcaption{font-size:.9em;color:#555}
img{max-width:100%}"""


def to_html(report_blocks: list[Block], directory: Path) -> str:
    """The blocks as one HTML page whose images are embedded from ``directory``."""
    title = next((b.text for b in report_blocks if isinstance(b, Heading)), "report")
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>"]
    for block in report_blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(c)}</th>" for c in block.header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            data = base64.b64encode((directory / block.file).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_rows(rows: list[Row], path: Path) -> None:
    """report.csv: one row per model and score, columns exactly variant, seed, metric, value."""
    with open(path, "w", newline="") as handle:
        table = csv.writer(handle)
        table.writerow(CSV_COLUMNS)
        table.writerows([row.variant, "" if row.seed is None else row.seed, row.metric, row.value]
                        for row in rows)


def shrink_png(source: Path, target: Path, max_side: int = 720) -> None:
    """A copy of a PNG at most ``max_side`` pixels wide and high, so the report stays small."""
    with Image.open(source) as image:
        image.thumbnail((max_side, max_side))
        image.save(target, optimize=True)
