"""report/report.md beside index.html: the same tables and findings as Markdown (the design card's "Markdown +
self-contained HTML report"; only the HTML page was written), rendered from one set of cells
(edgekd.bench.report_tables) so the two pages cannot disagree."""

from __future__ import annotations

import html
import re

import pytest

from edgekd.bench import report_tables
from edgekd.bench.report import build_summary, write_pages

from test_report_edges import _parity, _runner_fields, make_run

TABLES = (report_tables.models_table, report_tables.artifacts_table, report_tables.embedding_table,
          report_tables.runtime_table, report_tables.compression_table, report_tables.int8_table,
          report_tables.per_class_table)
MODELS = {"teacher": {"parameters": 1000, "steps": 40, "test_accuracy": 0.9, "val_accuracy": 0.88},
          "student": {"parameters": 100, "steps": 80, "test_accuracy": 0.8, "labelled_samples": 12,
                      "test_correct": "1100"},
          "scratch": {"parameters": 100, "steps": 80, "test_accuracy": 0.7, "labelled_samples": 12,
                      "test_correct": "1000"}}


@pytest.fixture
def pages(tmp_path):
    run = make_run(tmp_path / "run", [("teacher-onnx-fp32", _runner_fields(40.0), _parity(0.9)),
                                      ("student-onnx-fp32", _runner_fields(10.0), _parity(0.8)),
                                      ("student-onnx-int8_dynamic", _runner_fields(12.0), _parity(0.75, False))])
    summary = build_summary(run, recipe={"name": "md"}, model_metrics=MODELS, class_names=["cat", "dog"])
    return summary, write_pages(summary, run)


def _table_lines(markdown: str, title: str) -> list[str]:
    section = markdown.split(f"## {title}\n\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def _cells(line: str) -> list[str]:
    """A Markdown table row's cells, an escaped '\\|' staying inside its cell, an escaped '\\<' read as '<'."""
    return [c.strip().replace("\\|", "|").replace("\\<", "<") for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_the_markdown_page_has_every_table_of_the_html_page_with_the_same_cells(pages):
    summary, written = pages
    page, markdown = written[0].read_text(), written[1].read_text()
    assert [p.name for p in written[:2]] == ["index.html", "report.md"]
    shown = 0
    for build in TABLES:
        table = build(summary)
        if not table.rows:
            assert f"## {table.title}" not in markdown
            continue
        lines = _table_lines(markdown, table.title)
        assert _cells(lines[0]) == list(table.header)
        assert [_cells(line) for line in lines[2:]] == [list(row) for row in table.rows]
        for row in table.rows:  # the HTML page renders the very same cells
            assert "".join(f"<td>{html.escape(c)}</td>" for c in row) in page
        shown += 1
    assert shown >= 4  # models, artifacts, INT8, per-class at least: the test checked something


def test_a_failed_parity_and_a_pipe_in_a_cell_keep_the_columns(pages):
    summary, written = pages
    markdown = written[1].read_text()
    lines = _table_lines(markdown, "Artifacts")
    assert len({len(_cells(line)) for line in lines}) == 1  # every row as wide as the header
    assert "max \\|err\\|" in lines[0]
    failed = next(line for line in lines if line.startswith("| student-onnx-int8_dynamic"))
    assert _cells(failed)[-1] == "FAILED: agreement 90% < 97%" and "90% < 97%" in failed  # no tag: not escaped


def test_findings_are_bullets_and_an_angle_bracket_is_kept_as_text(pages, tmp_path):
    from edgekd.bench.report_markdown import write_markdown

    summary, written = pages
    markdown = written[1].read_text()
    findings = markdown.split("## Findings\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(findings) == len(summary["findings"]) > 0 and all(f.startswith("- ") for f in findings)
    run = make_run(tmp_path / "other", [])
    text = write_markdown({**summary, "findings": ["see <run>/report"]}, run).read_text()
    assert "- see \\<run>/report" in text  # GitHub would take <run> for an HTML tag and drop it


def test_the_pareto_plot_is_linked_only_when_it_was_drawn(pages, tmp_path):
    from edgekd.bench.report_markdown import write_markdown

    summary, written = pages
    assert written[2].name == "pareto.png" and written[2].is_file()
    assert "![accuracy vs p50 and vs file size](pareto.png)" in written[1].read_text()
    assert "pareto.png" not in write_markdown(summary, make_run(tmp_path / "other", [])).read_text()


def test_a_run_reported_before_report_md_existed_writes_it_on_its_next_run(tmp_path, one_thread):
    """An upgrade adds a page to the report: the report stage's hash names its pages, so a run whose report was
    recorded without report.md writes it on its next run (seconds) instead of keeping the old report until some
    other input changes."""
    import edgekd
    from edgekd import __version__
    from edgekd.progress import SilentReporter
    from edgekd.rundir import hash_obj

    recipe = edgekd.load_recipe({
        "name": "pages", "seed": 0, "data": {"name": "digits", "label_fraction": 0.1},
        "teacher": {"model": {"family": "mlp", "params": {"width": 16}}, "train": {"epochs": 1}},
        "student": {"model": {"family": "mlp", "params": {"width": 8}}}, "distill": {"train": {"epochs": 1}},
        "scratch": {"enabled": False}, "bench": {"enabled": False},
        "export": {"formats": ["onnx"], "targets": {"teacher": [], "student": ["fp32"], "scratch": [],
                                                    "compressed": []}}})
    result = edgekd.run(recipe, output_dir=tmp_path, reporter=SilentReporter())
    rundir, markdown = result.rundir, result.rundir.report / "report.md"
    assert markdown in rundir.recorded_outputs("report", "*.md")
    stages = rundir.load_manifest()["stages"]
    inputs = {k: (stages.get(k) or {}).get("output_hash")
              for k in ("teacher", "distill", "scratch", "compress", "export", "bench")}
    # the hash is rebuilt here as the pipeline builds it (checked against the record), then without the pages
    assert stages["report"]["input_hash"] == hash_obj({"edgekd": __version__, **inputs,
                                                       "pages": ["index.html", "report.md"]})
    markdown.unlink()
    rundir.mark_done("report", hash_obj({"edgekd": __version__, **inputs}),
                     [rundir.results / "summary.json", rundir.report / "index.html"], 0.0)
    again = edgekd.run(recipe, output_dir=tmp_path, reporter=SilentReporter())
    assert again.stages["report"] == "ran" and again.stages["export"] == "skipped", again.stages
    assert markdown.is_file()


def test_edgekd_report_names_the_markdown_page(pages):
    from typer.testing import CliRunner

    from edgekd.cli import app
    from edgekd.rundir import atomic_write_json

    summary, written = pages
    run_dir = written[0].parent.parent
    atomic_write_json(run_dir / "results" / "summary.json", summary)
    result = CliRunner().invoke(app, ["report", str(run_dir)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert f"markdown: {written[1]}" in " ".join(result.output.split())
