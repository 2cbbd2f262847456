"""report/report.md: the report's findings and tables as GitHub-flavoured Markdown, to paste into a pull request,
an issue or a wiki page, or to diff between runs. The tables are the HTML page's (edgekd.bench.report_tables); the
Pareto plot is linked as the file beside it, not embedded."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edgekd.bench import report_tables as tables
from edgekd.bench.report import MARKDOWN_NAME, machine_text
from edgekd.rundir import RunDir, atomic_write

_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def write_markdown(summary: dict[str, Any], rundir: RunDir, pareto: Path | None = None) -> Path:
    """Write report/report.md; `pareto` is the plot file beside it, linked when given."""
    lines = [f"# Teacher vs student: {_text(str(summary.get('run')))}", "", _text(machine_text(summary)), "",
             "The plots are in index.html beside this file.", "", "## Findings", ""]
    lines += [f"- {_text(finding)}" for finding in summary.get("findings", [])] or ["(none)"]
    for build in tables.BEFORE_PLOTS + tables.AFTER_PLOTS:
        lines += _table_markdown(build(summary))
    if pareto is not None:
        lines += ["", "## Accuracy vs latency and file size", "", f"![accuracy vs p50 and vs file size]({pareto.name})",
                  "", "The Pareto front: no other artifact is both faster (or smaller) and more accurate."]
    return atomic_write(rundir.report / MARKDOWN_NAME, "\n".join(lines) + "\n")


def _table_markdown(table: tables.Table) -> list[str]:
    """A table as a Markdown section: nothing for a table without rows. Numbers align right, as on the page."""
    if not table.rows:
        return []
    lines = ["", f"## {_text(table.title)}", "", _row(table.header),
             "|" + "|".join([" --- "] + [" ---: "] * (len(table.header) - 1)) + "|"]
    lines += [_row(row) for row in table.rows]
    if table.notes:
        lines += ([""] + ([_text(table.notes_title)] if table.notes_title else [])
                  + [f"- {_text(n)}" for n in table.notes])
    if table.caption:
        lines += ["", _text(table.caption)]
    return lines


def _row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(_text(c).replace("|", "\\|") for c in cells) + " |"


def _text(text: str) -> str:
    """One line of text Markdown shows as written: a '<' before a letter opens an HTML tag (a path like <run>/x
    vanished); '90% < 97%' stays as it is."""
    return _TAG_START.sub(r"\\<", " ".join(text.split()))
