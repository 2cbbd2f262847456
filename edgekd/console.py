"""Rich rendering for the CLI: progress bars behind the library's Reporter protocol, and tables."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from edgekd.bench import stats
from edgekd.interrupts import raise_if_received


def _fields_text(fields: dict[str, Any]) -> str:
    return "  ".join(f"{k.replace('_', ' ')} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in fields.items() if v == v)  # v == v drops NaN


class _RichTask:
    def __init__(self, progress: Progress, task_id: Any) -> None:
        self._progress, self._id = progress, task_id

    def advance(self, steps: int = 1, **fields: Any) -> None:
        raise_if_received()
        self._progress.update(self._id, advance=steps, info=_fields_text(fields))

    def close(self) -> None:
        self._progress.stop_task(self._id)


class _LoggedTask:
    """A task on a console that is not a terminal (a log file, CI): a line when it starts and one when it
    ends, instead of bars that such a console only draws once, at the very end."""

    def __init__(self, console: Console, description: str, total: int | None) -> None:
        self._console, self._description, self._total = console, description, total
        self._done, self._info, self._started = 0, "", time.perf_counter()
        self._closed = False
        of = "" if total is None else f" ({total:,} steps)"
        console.print(f"{description}: started{of}", markup=False, highlight=False)

    def advance(self, steps: int = 1, **fields: Any) -> None:
        raise_if_received()
        self._done += steps
        self._info = _fields_text(fields) or self._info

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        count = f"{self._done:,}" + ("" if self._total is None else f"/{self._total:,}")
        info = f"  {self._info}" if self._info else ""
        self._console.print(f"{self._description}: {count} in {time.perf_counter() - self._started:.1f} s{info}",
                            markup=False, highlight=False)


class RichReporter:
    """Progress bars for long work (training, export, bench) and one-line notes; on a console that is not a
    terminal, a line as each piece of work starts and ends, so a log shows where a long run is."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console,
                                 transient=False, disable=not self.live)

    def __enter__(self) -> "RichReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def task(self, description: str, total: int | None) -> _RichTask | _LoggedTask:
        if not self.live:
            return _LoggedTask(self.console, description, total)
        return _RichTask(self.progress, self.progress.add_task(description, total=total, info=""))

    def note(self, message: str) -> None:
        style = "yellow" if message.startswith("[warning]") else "dim"
        self.progress.console.print(message.replace("[warning]", "warning:"), style=style, markup=False)


def _ci(values: list[float] | None) -> str:
    return f"[{values[0]:.2f}, {values[1]:.2f}]" if values else ""


def _uncut(column: str, names: list[str]) -> dict[str, Any]:
    """Column options that lose no text in a narrow console (a log is 160 wide): the artifact column as wide as its
    longest name (up to 40), any cell too long folded onto another line. Cut to `student-onnx-in…`, the INT8 and
    INT4 rows looked the same."""
    if column != "artifact":
        return {"overflow": "fold"}
    return {"overflow": "fold", "min_width": min(40, max(map(len, names), default=8))}


def summary_table(summary: dict[str, Any]) -> Table:
    """One row per artifact: accuracy, size, p50 with interval, speed-up vs teacher and its noise verdict."""
    from edgekd.bench.report import worst_class_text

    machine = summary.get("machine") or {}
    system = machine.get("system") or {}
    title = (f"{summary.get('run')}: teacher vs student on {machine.get('device')} "
             f"({system.get('cpu_model')}, {machine.get('threads')} thread, batch {machine.get('batch_size')})"
             if machine else f"{summary.get('run')}: teacher vs student (not benchmarked: bench.enabled is false)")
    table = Table(title=title, title_justify="left")
    for col in ("artifact", "params", "size KiB", "4-bit", "test acc", "agree", "p50 µs [95% CI]", "× floor",
                "vs teacher", "worst class Δ", "parity"):
        table.add_column(col, justify="left" if col in ("artifact", "parity", "worst class Δ") else "right",
                         **_uncut(col, [r["name"] for r in summary["rows"]]))
    for r in summary["rows"]:
        p50 = f"{r['p50_us']:.2f} {_ci(r.get('ci95_p50'))}" if r.get("p50_us") is not None else "–"
        if r.get("unstable"):
            p50 += " unstable"
        if r.get("resolution_limited"):
            p50 += stats.BELOW_RESOLUTION_MARK
        speed = r.get("speedup_vs_teacher")
        speed_txt = "–" if speed is None or r["role"] == "teacher" else (
            f"{speed:.2f}×" + ("" if r.get("speedup_significant") else
                               " (noise)" if r.get("speedup_ci95") else
                               f" ({r.get('speedup_no_interval') or 'one round'})"))
        worst = r.get("worst_class")
        worst_txt = worst_class_text(worst)
        parity = "ok" if r.get("parity_passed") else ("FAILED" if r.get("parity_passed") is False else "–")
        table.add_row(
            Text(r["name"]), f"{r['parameters']:,}" if r.get("parameters") is not None else "–",
            f"{r['size_bytes'] / 1024:.1f}",
            f"{r['share_4bit']:.0%}" if r.get("share_4bit") else "–",
            f"{r['accuracy']:.2%}" if r.get("accuracy") is not None else "–",
            f"{r['agreement']:.2%}" if r.get("agreement") is not None else "–",
            p50, f"{r['x_floor']:.2f}" if r.get("x_floor") else "–", speed_txt, worst_txt, parity,
            style="red" if r.get("parity_passed") is False else None,
        )
    return table


def model_table(summary: dict[str, Any]) -> Table | None:
    """The run's PyTorch models side by side (edgekd.bench.model_table); None when the summary holds none."""
    from edgekd.bench.model_table import model_cells

    header, rows = model_cells(summary)
    if not rows:
        return None
    table = Table(title="PyTorch models (test split)", title_justify="left")
    for col in header:
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in rows:
        table.add_row(*row)
    return table


def embedding_table(summary: dict[str, Any]) -> Table | None:
    """A text run's embeddings against the teacher's, one row per model (None for other runs)."""
    from edgekd.text.report import EMBEDDING_HEADER, embedding_caption, embedding_rows

    rows = embedding_rows(summary)
    if not rows:
        return None
    table = Table(title="embedding against the teacher", title_justify="left", caption=embedding_caption(summary),
                  caption_justify="left")
    for col in EMBEDDING_HEADER:
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in rows:
        table.add_row(Text(row[0]), *row[1:])  # names come from files: not markup
    return table


def _spread(rounds: list[float]) -> str:
    """How far the p50 moved between the fresh processes (rounds/sessions) of one result: their range and its ±
    (stats.round_spread_pct, which `edgekd compare` shows too)."""
    spread = stats.round_spread_pct(rounds)
    return "–" if spread is None else f"{min(rounds):.2f}–{max(rounds):.2f} (±{spread:.0f}%)"


def bench_table(results: list[Any]) -> Table:
    from edgekd.bench.report import model_memory_kb, peak_kb, peak_mib

    table = Table(title="benchmark (emulated devices: latency is not a board's latency)"
                  if any(r.device.get("emulated") for r in results) else "benchmark", title_justify="left")
    for col in ("artifact", "device", "runtime", "p50 µs [95% CI]", "round p50 spread",
                f"p99 µs (n ≥ {stats.MIN_P99_SAMPLES})", "runs", "peak MiB (+ over runtime)",
                "load ms", "device acc"):
        table.add_column(col, justify="left" if col in ("artifact", "device", "runtime") else "right",
                         **_uncut(col, [r.artifact.get("name") or "" for r in results]))
    for r in results:
        lat = r.latency_us
        peak = peak_kb(r.memory_kb)
        shown = stats.shown_p50(lat, r.round_p50_us)
        p50 = "–" if shown is None else f"{shown:.2f} {_ci(stats.shown_p50_interval(lat))}" + (
            " unstable" if lat.get("unstable") else "") + (
            stats.BELOW_RESOLUTION_MARK if lat.get("resolution_limited") else "")
        p99 = stats.shown_p99(lat)
        runs = str(lat.get("n") or "–")
        calls, sampled = (r.sustained or {}).get("calls"), (r.sustained or {}).get("sampled")
        if sampled and calls != sampled:  # --sustained: the percentiles are of a sample of the calls
            runs = f"{calls} ({sampled} sampled)"
        table.add_row(Text(r.artifact["name"]), Text(r.device["name"]),  # names come from files: not markup
                      f"{r.runtime.get('name')} {r.runtime.get('version') or ''}" + (
                          f" ({r.runtime.get('tool')})" if r.harness == "native" else ""),
                      p50, _spread(r.round_p50_us), "–" if p99 is None else f"{p99:.2f}",
                      runs, peak_mib(peak, model_memory_kb(r.memory_kb)),
                      f"{r.load_ms:.1f}" if r.load_ms else "–",
                      f"{r.device_accuracy['accuracy']:.2%} of {r.device_accuracy['samples']}"
                      if r.device_accuracy else "–")
    return table
