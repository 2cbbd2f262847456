"""The `edgekd` command line: parses, calls the library, renders with rich. No logic of its own.

Imports nothing heavy at module level, so `edgekd --help` is instant (torch loads only when a command needs it).
Exit codes: 0 ok, 1 internal error, 2 user error (an EdgeKDError: what / why / fix), 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, List, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from edgekd.errors import BenchError, EdgeKDError, first_line, machine_limit, path_problem, printable

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distill a teacher into a small student, export it (ONNX, TFLite), verify it and benchmark it.")
def _console(stderr: bool = False) -> Console:
    """A console that does not fold tables and messages at 80 columns when piped or logged."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=160)


console = _console()
err_console = _console(stderr=True)
_state = {"debug": False}


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="show tracebacks of errors")) -> None:
    _state["debug"] = debug


def _handles_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn EdgeKDError into one clear block + exit 2, anything else into exit 1 (traceback with --debug)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from edgekd import interrupts

        try:
            with interrupts.installed():
                return command(*args, **kwargs)
        except typer.Exit:
            raise
        except EdgeKDError as exc:
            _fail(exc)
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, interrupts.Terminated)
            kept = getattr(exc, "resume", None) or interrupts.STOPPED
            err_console.print(interrupts.stop_message(terminated, kept), markup=False, highlight=False)
            raise typer.Exit(143 if terminated else 130) from None
        except Exception as exc:  # an edgekd bug, not a user mistake, unless the machine ran out of room or the
            limit = machine_limit(exc) or path_problem(exc)  # OS refused a path as written (a name too long)
            if limit is not None:
                _fail(limit)
            if _state["debug"]:
                raise
            err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}", highlight=False)
            err_console.print("  rerun with --debug for the traceback, and please report it")
            raise typer.Exit(1) from None

    return wrapper


def _fail(exc: EdgeKDError) -> NoReturn:
    """Say a user-facing error as one block and exit with its code; with --debug, the traceback first (the
    exit code stays the error's: --debug made every mistake exit 1, which the README's table does not say)."""
    if _state["debug"]:
        traceback.print_exc()  # the exception being handled (this runs inside the except block)
    err_console.print(f"[bold red]error:[/] {escape(printable(exc.what))}", highlight=False, markup=True)
    if exc.why:  # may quote a device's stderr: no escape sequence of its reaches the terminal
        err_console.print(f"  why: {printable(exc.why)}", highlight=False, markup=False)
    if exc.fix:
        err_console.print(f"  fix: {printable(exc.fix)}", highlight=False, markup=False)
    raise typer.Exit(exc.exit_code) from None


def _run_and_show(recipe_source: Any, output_dir: Optional[Path], force: List[str],
                  allow_generation: bool = False) -> None:
    from edgekd.console import RichReporter
    from edgekd.pipeline import run
    from edgekd.recipe import load_recipe
    from edgekd.rundir import read_json

    recipe = load_recipe(recipe_source)
    if allow_generation:
        recipe.distill.allow_generation = True
    try:
        with RichReporter(console) as reporter:
            result = run(recipe, force=set(force), reporter=reporter, output_dir=output_dir)
    except KeyboardInterrupt as exc:  # a run has stages, and resumes (the other commands have neither)
        exc.resume = "finished stages are kept; run the same command again to resume"  # type: ignore[attr-defined]
        raise
    if result.rank != 0:  # rank 0 reports: this rank ends mid-run, and a summary there now is an earlier run's
        return
    if result.summary_path.is_file():
        summary = read_json(result.summary_path)
        _print_summary(_summary_tables(summary), summary)
    from edgekd.bench.report import MARKDOWN_NAME

    markdown = result.report_path.with_name(MARKDOWN_NAME)
    console.print(f"run directory: {result.rundir.root}   report: {result.report_path}"
                  + (f"   markdown: {markdown}" if markdown.is_file() else ""))


def _summary_tables(summary: dict[str, Any]) -> list[Any]:
    """The run's PyTorch models, its artifact table and, for a text run, its embedding table."""
    from edgekd.console import embedding_table, model_table, summary_table

    return [table for table in (model_table(summary), summary_table(summary), embedding_table(summary))
            if table is not None]


def _print_summary(tables: list[Any], summary: dict[str, Any]) -> None:
    for table in tables:
        console.print(table)
    for finding in summary.get("findings", []):
        console.print(f"• {finding}", highlight=False)


def _folder_given(value: "str | Path") -> Path:
    """An output folder or file as typed; an empty one (often an unset shell variable) is refused, not read as '.'.
    Typer passes the option's default through here too, as the Path it is."""
    if isinstance(value, Path):
        return value
    if not value.strip():
        raise typer.BadParameter("is empty (an unset shell variable?); give a path, or '.' for the current folder")
    return Path(value)


_FORCE = typer.Option([], "--force",
                      help="rerun this stage even if it is up to date (repeatable; 'all' for every stage)")
_OUTPUT = typer.Option(None, "--output-dir", parser=_folder_given,
                       help="root folder for run directories (default: the recipe's output_dir)")


@app.command()
@_handles_errors
def demo(output_dir: Optional[Path] = _OUTPUT, force: List[str] = _FORCE) -> None:
    """Run the built-in demo recipe (digits teacher → KD student → ONNX + TFLite, FP32/INT8/INT4 → bench → report)."""
    from edgekd.recipe import builtin_recipe_path

    _run_and_show(builtin_recipe_path("demo"), output_dir, force)


@app.command("run")
@_handles_errors
def run_cmd(recipe: Path = typer.Argument(..., help="recipe YAML file (or a built-in name such as 'demo')"),
            output_dir: Optional[Path] = _OUTPUT, force: List[str] = _FORCE,
            allow_generation: bool = typer.Option(False, "--allow-generation",
                                                  help="allow a teacher of generation >= 2 (a distilled "
                                                       "student's student)")) -> None:
    """Run every stage of a recipe into <output_dir>/<name>/; finished stages are skipped.

    Under `torchrun --nproc-per-node N` the student trains with DistributedDataParallel (gloo)."""
    _run_and_show(recipe, output_dir, force, allow_generation)


@app.command()
@_handles_errors
def layers(teacher: str = typer.Argument(..., help="teacher: an image model family (see the recipes; at its "
                                                   "default sizes) or a checkpoint (./NAME for a file named as a "
                                                   "family)"),
           student: str = typer.Argument(..., help="student: an image model family (at its default sizes) or a "
                                                   "checkpoint"),
           data: Optional[str] = typer.Option(None, "--data", help="data set that fixes the input shape of a model "
                                              "family given by name (default: digits); a checkpoint records its "
                                              "own")) -> None:
    """List candidate teacher/student layer pairs for feature KD, with shapes and the adapter each needs."""
    from rich.table import Table

    from edgekd.distill.features import PAIR_TABLE_HEADER, candidate_pairs, format_pairs
    from edgekd.models import layer_models

    built = layer_models(teacher, student, data)
    in_shape = built["teacher"].edgekd_spec["in_shape"]
    table = Table(*PAIR_TABLE_HEADER, title=f"{teacher} → {student}: layers by relative depth")
    for row in format_pairs(candidate_pairs(built["teacher"], built["student"], tuple(in_shape))):
        table.add_row(*row)
    console.print(table)
    console.print("use them in a recipe: distill.features: [{loss: hint, student: S, teacher: T}]")


@app.command()
@_handles_errors
def export(checkpoint: Path = typer.Argument(..., help="a checkpoint of an image run (<run>/checkpoints/*.pt); a "
                                              "text run exports its own: edgekd run RECIPE --force export"),
           output_dir: Path = typer.Option(Path("export/artifacts"), "--output-dir", parser=_folder_given,
                                           help="where artifact folders go"),
           fmt: List[str] = typer.Option(["onnx"], "--format",
                                         help="onnx or tflite (repeatable; tflite needs the \\[tflite] extra)"),
           precision: List[str] = typer.Option(["fp32", "int8_static", "int8_dynamic"], "--precision",
                                               help="fp32, int8_static, int8_dynamic or int4 (repeatable)"),
           min_agreement: float = typer.Option(0.99, min=0.0, max=1.0,
                                               help="parity threshold of FP32 and INT8 artifacts: top-1 agreement with "
                                                    "PyTorch (INT4 artifacts need 0.97)"),
           device: List[str] = typer.Option([], "--device", help="device profile the artifacts are for "
                                            "(repeatable): ONNX INT8 picks its weight grid for that CPU; "
                                            "without one, 7-bit weights, right on every CPU")) -> None:
    """Export an image run's checkpoint to ONNX / TFLite artifacts, each verified against the PyTorch model."""
    from edgekd.console import RichReporter
    from edgekd.exporter import export_checkpoint
    from edgekd.rundir import tentative_dir

    try:
        with tentative_dir(output_dir, fix="choose a writable folder with --output-dir"), \
                RichReporter(console) as reporter:
            artifacts = export_checkpoint(checkpoint, output_dir, formats=list(fmt), precisions=list(precision),
                                          min_agreement=min_agreement, devices=list(device), reporter=reporter)
    except KeyboardInterrupt as exc:  # no stages and no resume: say what Ctrl-C leaves and what a rerun does
        finished = sorted(p.parent.name for p in output_dir.glob("*/artifact.json")) if output_dir.is_dir() else []
        kept = (f"the artifacts finished so far are kept in {output_dir} ({', '.join(finished)})" if finished
                else "no artifact was finished")
        exc.resume = (f"{kept}; run the same command again to export them "  # type: ignore[attr-defined]
                      "all (every one is exported again)")
        raise
    for a in artifacts:
        p = a.parity
        console.print(f"{a.name}: {a.size_bytes / 1024:.1f} KiB, accuracy {p.accuracy:.2%}, agreement "
                      f"{p.agreement:.2%} → {'ok' if p.passed else 'FAILED: ' + str(p.reason)}   {a.path}",
                      markup=False, highlight=False)
    if any(not a.ok for a in artifacts):
        raise typer.Exit(1)


@app.command()
@_handles_errors
def bench(artifacts: List[Path] = typer.Argument(...,
                                                 help="artifact folders, artifact.json files, .onnx or .tflite files"),
          device: List[str] = typer.Option(["host"], "--device", help="device profile name or path (repeatable)"),
          threads: Optional[int] = typer.Option(None, min=1, help="intra-op threads (default: the device "
                                                "profile's threads:, 1 without one)"),
          batch_size: int = typer.Option(1, min=1, help="batch size (bare model files get synthetic inputs)"),
          dim: List[str] = typer.Option([], "--dim", help="NAME=SIZE: the size of a dynamic dimension, by its "
                                        "name or, for one without a name, by input and position as INPUT:INDEX "
                                        "(repeatable; e.g. --dim length=128 or --dim input_ids:1=128 for a text "
                                        "model file without its record; a text artifact's example sentence is cut "
                                        "or padded to it)"),
          input_file: List[str] = typer.Option([], "--input", help="NAME=FILE.npy: time the model on your data, "
                                               "input NAME fed from a .npy file (repeatable; FILE.npy alone feeds "
                                               "the first input); inputs not given are made up"),
          min_seconds: float = typer.Option(1.0, min=0, help="time each artifact at least this long (all rounds; "
                                            "a round also stops at 200,000 calls, and says so)"),
          rounds: Optional[int] = typer.Option(None, min=1, help="fresh processes per artifact, interleaved "
                                               "across artifacts (default 5)"),
          sessions: Optional[int] = typer.Option(None, min=1, help="like --rounds, with --cooldown between them; "
                                                 "the result reports the spread between sessions"),
          cooldown: float = typer.Option(0.0, min=0, help="seconds to pause between rounds/sessions"),
          sustained: Optional[float] = typer.Option(None, min=1, help="minutes of continuous load: latency over "
                                                    "time, to see thermal throttling"),
          results_dir: Path = typer.Option(Path("export/results"), parser=_folder_given,
                                            help="where BenchResult JSON files are saved"),
          resume: bool = typer.Option(False, "--resume", help="skip artifacts that already have a complete result"),
          history: Path = typer.Option(Path("export/history.sqlite"), parser=_folder_given,
                                        help="SQLite history the results are added to"),
          check_threads: Optional[int] = typer.Option(None, min=2, help="only check that N intra-op threads "
                                                      "change the latency vs 1 thread (on each artifact)"),
          eval_samples: Optional[int] = typer.Option(None, min=0, help="score the artifacts of a run on the device "
                                                     "with the first N samples of its test split (default: all; 0: "
                                                     "none)"),
          eval_inputs: Optional[Path] = typer.Option(None, help="test inputs (.npy, one sample per row) to score "
                                                     "every artifact with on the device, with --eval-labels"),
          eval_labels: Optional[Path] = typer.Option(None, help="their class labels (.npy), with --eval-inputs"),
          ) -> None:
    """Benchmark artifacts on devices: latency percentiles with intervals, peak memory, load time."""
    from edgekd.bench.harness import RESUME_ADVICE, BenchSettings, bench_devices
    from edgekd.console import RichReporter, bench_table

    from edgekd.bench.harness import sustained_settings, sustained_text

    _one_of(rounds=rounds, sessions=sessions)
    _one_of(check_threads=check_threads, sustained=sustained)
    # --min-seconds past the default cap raises the cap with it: the user asked for that much timing
    settings = BenchSettings(threads=threads, batch_size=batch_size, min_seconds=min_seconds,
                             max_seconds=max(BenchSettings.max_seconds, min_seconds), rounds=sessions or rounds or 5,
                             cooldown_seconds=cooldown, dims=_dim_sizes(dim), eval_samples=eval_samples)
    eval_data = _eval_pair(eval_inputs, eval_labels)
    inputs = _input_files(input_file)
    if check_threads and inputs is not None:
        raise BenchError("--input and --check-threads cannot be used together",
                         why="the thread check times each artifact on made-up inputs of its own shape",
                         fix="drop --input for --check-threads")
    if check_threads:
        from edgekd.bench import stats
        from edgekd.bench.harness import check_threads as run_check

        for name in device:
            for artifact in artifacts:
                c = run_check(artifact, name, check_threads, settings)
                interval = (f" [{c['speedup_ci95'][0]:.2f}, {c['speedup_ci95'][1]:.2f}]" if c["speedup_ci95"]
                            else f", no interval: {stats.why_no_interval(c['no_interval'])}")
                console.print(f"{c['artifact']} on {c['device']}: 1 thread {c['p50_us'][0]:.2f} µs, {check_threads} "
                              f"threads {c['p50_us'][1]:.2f} µs ({c['speedup']:.2f}×{interval}) → "
                              + ("the thread setting takes effect" if c["took_effect"] else
                                 "no difference beyond the noise (too small to split, or threads not applied)"),
                              markup=False, highlight=False)
        return
    from edgekd.rundir import tentative_dir

    if sustained:
        settings = sustained_settings(sustained, settings)
    try:  # a bench that fails before it saves a result (an unknown device) leaves no new empty results folder
        with tentative_dir(results_dir, fix="choose a writable folder with --results-dir"), \
                RichReporter(console) as reporter:
            results = bench_devices(artifacts, list(device), settings=settings, results_dir=results_dir,
                                    history=history, resume=resume, reporter=reporter, eval_data=eval_data,
                                    inputs=inputs)
    except KeyboardInterrupt as exc:  # the harness kept what was measured: say where, and that --resume resumes
        if getattr(exc, "kept", None):
            exc.resume = f"{exc.kept}; {RESUME_ADVICE}"  # type: ignore[attr-defined]
        else:  # no stages here, and no round had finished: there is nothing to resume
            exc.resume = "no result was finished; run the same command again"  # type: ignore[attr-defined]
        raise
    console.print(bench_table(results))
    if any(r.cross_arch_parity for r in results):
        console.print(_cross_arch_table(results))
    for r in results:
        if r.sustained:
            console.print(f"{r.artifact['name']} on {r.device['name']}: {sustained_text(r.sustained)}", markup=False,
                          highlight=False)


def _eval_pair(inputs: Path | None, labels: Path | None) -> tuple[Path, Path] | None:
    """--eval-inputs and --eval-labels: both or neither (the files themselves are checked by the bench)."""
    if (inputs is None) != (labels is None):
        given, missing = ("inputs", "labels") if labels is None else ("labels", "inputs")
        raise BenchError(f"--eval-{given} needs --eval-{missing}",
                         why="the device's outputs on the test inputs are scored against their labels",
                         fix="give both .npy files (inputs one sample per row, labels in the same order), or "
                             "neither")
    return None if inputs is None else (inputs, labels)


def _input_files(given: list[str]) -> Path | dict[str, Path] | None:
    """--input options: one FILE.npy (the first input), or NAME=FILE.npy for each input named (the files
    themselves are checked by the bench)."""
    if not given:
        return None
    named = [text.partition("=") for text in given]
    if len(given) == 1 and not named[0][1]:
        return Path(given[0])
    files: dict[str, Path] = {}
    for text, (name, sign, path) in zip(given, named):
        if not sign or not name or not path or name in files:
            raise BenchError(f"--input {text!r} is not NAME=FILE.npy",
                             why="with more than one --input, each names its input, once",
                             fix="e.g. --input input_ids=ids.npy --input attention_mask=mask.npy (a model's input "
                                 "names are in its artifact.json, or in the bench's warning)")
        files[name] = Path(path)
    return files


def _dim_sizes(given: list[str]) -> dict[str, int]:
    """--dim NAME=SIZE options as {name: size}."""
    sizes: dict[str, int] = {}
    for text in given:
        name, _, size = text.rpartition("=")  # an input's name may hold '=', a size does not
        if not name or not size.isdigit() or int(size) < 1 or name in sizes:
            raise BenchError(f"--dim {text!r} is not NAME=SIZE", why="each named dimension once, sized 1 or more",
                             fix="e.g. --dim length=128, or --dim INPUT:1=128 for an unnamed dimension (a "
                                 "model's input dimensions are in its artifact.json)")
        sizes[name] = int(size)
    return sizes


def _one_of(**options: Any) -> None:
    """Options that mean different runs: refuse both rather than silently honour one."""
    given = [name for name, value in options.items() if value is not None]
    if len(given) > 1:
        from edgekd.errors import EdgeKDError as _Err

        flags = [f"--{name.replace('_', '-')}" for name in given]
        raise _Err(f"{' and '.join(flags)} cannot be used together", why="each asks for a different kind of run",
                   fix=f"keep one of {', '.join(flags)}")


def _cross_arch_table(results: list[Any]) -> Any:
    """Device vs this host on the same test inputs (devices of another architecture, or emulated)."""
    from rich.table import Table

    table = Table(title="cross-architecture parity: the device's outputs vs this host's, same test inputs",
                  title_justify="left")
    for col in ("artifact", "device", "arch (device vs host)", "emulated", "runtime (device vs host)", "agreement",
                "max |err|", "parity"):
        table.add_column(col, justify="right" if col in ("agreement", "max |err|") else "left")
    for r in results:
        p = r.cross_arch_parity
        if not p:
            continue
        verdict = p["error"] if "error" in p else ("ok" if p["passed"] else "DIFFERS")
        table.add_row(r.artifact["name"], r.device["name"], f"{p['device_arch']} vs {p['host_arch']}",
                      "yes" if r.emulated else "no", f"{p['device_runtime']} vs {p.get('host_runtime', '–')}",
                      f"{p['agreement']:.2%}" if "agreement" in p else "–",
                      f"{p['max_abs_error']:.2e}" if "max_abs_error" in p else "–", verdict,
                      style="red" if verdict != "ok" else None)
    return table


@app.command("history")
@_handles_errors
def history_cmd(device: Optional[str] = typer.Option(None, "--device", help="only this device"),
                history: Path = typer.Option(Path("export/history.sqlite"), help="the SQLite history")) -> None:
    """List past bench sessions (newest first)."""
    from rich.table import Table

    from edgekd.bench.history import sessions

    found = sessions(history, device)
    if not found:
        console.print(f"no bench sessions{f' on device {device}' if device else ''} in {history}", highlight=False)
        return
    table = Table(title=f"bench history ({history})", title_justify="left")
    for col in ("session", "when", "device", "results", "runs"):
        table.add_column(col)
    for s in found:  # names come from files: not markup
        table.add_row(s["session"], s["created_at"], Text(s["device"]), str(s["results"]),
                      Text(", ".join(s["runs"]) or "–"))
    console.print(table)


def _plusminus(spread: float | None) -> str:
    """A round spread as the bench table shows it (±, half the range: stats.round_spread_pct)."""
    return "–" if spread is None else f"±{spread:.0f}%"


def _file_change(label: str, row: dict[str, Any]) -> str | None:
    """For a pair of different files, the runs that exported each side (so the change can be traced to what was
    done between them), said under the table; None for the same file, or when neither side recorded a run."""
    if row["same_file"] or not (row["run_a"] or row["run_b"]):
        return None
    a, b = (f"run {run}" if run else "no run recorded" for run in (row["run_a"], row["run_b"]))
    runs = f"{a} → {b}" if a != b else f"both from {a}, re-exported"
    return f"file changed: {label}: {runs} ({row['a']} → {row['b']})"


@app.command()
@_handles_errors
def compare(a: Optional[str] = typer.Argument(None, help="earlier session (default: the last one before B on B's "
                                                        "device that measured any of B's artifacts the same way)"),
            b: Optional[str] = typer.Argument(None, help="later session (default: the newest)"),
            device: Optional[str] = typer.Option(None, "--device", help="pick sessions of this device"),
            history: Path = typer.Option(Path("export/history.sqlite"), help="the SQLite history")) -> None:
    """Compare two bench sessions: p50 change per artifact with its 95% interval, and whether it exceeds the noise."""
    from rich.table import Table

    from edgekd.bench import stats
    from edgekd.bench.history import compare as compare_sessions

    found = compare_sessions(a, b, path=history, device=device)
    table = Table(title=f"{found['a']} → {found['b']}", title_justify="left")
    for col in ("artifact", "p50 before µs", "p50 after µs", "change [95% CI]", "round p50 spread", "verdict"):
        table.add_column(col, justify="left" if col in ("artifact", "verdict") else "right")
    notes: list[str] = []
    for r in found["rows"]:
        interval = r["p50_change_pct_ci95"]
        change = f"{r['p50_change_pct']:+.1f}%" + (f" [{interval[0]:+.1f}, {interval[1]:+.1f}]" if interval else "")
        verdict = (("faster" if r["p50_change_pct"] < 0 else "slower") if r["significant"] else
                   "within noise" if interval else
                   f"no verdict: {stats.why_no_interval(r['no_interval'])}"
                   + (" (bench --rounds 3 or more)" if r["no_interval"] == "one round" else ""))
        ident = r["identity"]
        what = " ".join(str(v) for v in (ident.get("format"), ident.get("precision")) if v)
        label = f"{r['artifact']} ({what})" if what else r["artifact"]
        changed = _file_change(label, r)
        notes += [changed] if changed else []
        table.add_row(Text(label + ("" if r["same_file"] else " (file changed)")), f"{r['p50_a_us']:.2f}",
                      f"{r['p50_b_us']:.2f}", change, _plusminus(r["round_spread_plusminus_pct"]), verdict)
    console.print(table)
    for note in notes:
        console.print(note, markup=False, highlight=False)
    for r in found["rows"]:
        if r["unrecorded"]:
            console.print(f"note: {r['artifact']}: {', '.join(r['unrecorded'])} not recorded in one session "
                          "(an older history); paired on the rest", markup=False, highlight=False)
    for u in found["unpaired"]:
        if u["side"] == "both":
            console.print(f"not compared: {u['artifact']}: {u['reason']} (a different measurement, not a change)",
                          markup=False, highlight=False)
    for side, session in (("a", found["a"]), ("b", found["b"])):
        only = sorted({u["artifact"] for u in found["unpaired"] if u["side"] == side})
        if only:
            console.print(f"only in {session}: {', '.join(only)}", markup=False, highlight=False)


@app.command()
@_handles_errors
def report(run_dir: Path = typer.Argument(..., help="a run directory (export/<name>)")) -> None:
    """Print the teacher-vs-student table of a finished run and the path of its HTML report."""
    from edgekd.bench.report import HTML_NAME, MARKDOWN_NAME, SUMMARY_SCHEMA
    from edgekd.errors import EdgeKDError as _Err
    from edgekd.rundir import folder_holder, read_json, written_by_newer

    summary_path = run_dir / "results" / "summary.json"
    running = folder_holder(run_dir)
    if not summary_path.is_file():
        if running:
            raise _Err(f"no report in {run_dir} yet", why=f"a run is writing that folder now ({running}); its "
                       f"report stage writes {summary_path} last", fix="wait for that run to end, then run "
                       "edgekd report again")
        meant = _runs_meant(run_dir)
        raise _Err(f"no report in {run_dir}", why=f"{summary_path} does not exist",
                   fix=(f"give the run's folder: edgekd report {meant[0]}" if len(meant) == 1 else
                        f"give one of the runs in it: {', '.join(meant)}" if meant else
                        "run the recipe first (edgekd run RECIPE), or give the run's folder under export/"))
    summary: Any = None
    try:
        summary = read_json(summary_path)
        problem = _summary_problem(summary)
        tables = [] if problem else _summary_tables(summary)
    except json.JSONDecodeError as exc:
        problem = f"it is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"it cannot be read ({first_line(exc)})"
    except KeyError as exc:
        problem = f"a row has no `{exc.args[0]}` field"
    except (ValueError, TypeError, AttributeError, IndexError):  # IndexError: an interval of one number
        problem = "a field has the wrong type (not the one edgekd writes)"
    if problem and written_by_newer(summary, SUMMARY_SCHEMA):  # writing it again here would lose what it says
        raise _Err(f"the report of {run_dir} was written by a newer edgekd", why=f"{summary_path}: {problem}",
                   fix="read it with the edgekd that wrote it, or a newer one (pip install -U edgekd)")
    if problem:
        raise _Err(f"the report of {run_dir} is unreadable", why=f"{summary_path}: {problem}",
                   fix="write it again: edgekd run RECIPE --force report") from None
    _print_summary(tables, summary)
    html = run_dir / "report" / HTML_NAME
    markdown = html.with_name(MARKDOWN_NAME)
    console.print(f"report: {html}" if html.is_file() else f"no HTML report ({html} is missing: edgekd run RECIPE "
                  "--force report writes it)")
    if markdown.is_file():
        console.print(f"markdown: {markdown}", markup=False, highlight=False)
    if running:
        console.print(f"note: a run is writing {run_dir} now ({running}): this is the report of the run before it",
                      markup=False, highlight=False)


def _runs_meant(path: Path) -> list[str]:
    """Finished runs a path without a report most likely meant: the run it lies in (its report/index.html), the runs
    in it (`export`, the root of every run), or export/NAME for a bare run name (`edgekd report demo`)."""
    def finished(folder: Path) -> bool:
        return (folder / "results" / "summary.json").is_file()

    try:  # only a hint: a folder it may not read gives none
        above = [folder for folder in path.parents if folder != Path(".") and finished(folder)]
        if above:
            return [str(above[0])]
        if path.is_dir():
            inside = sorted(str(folder) for folder in path.iterdir() if finished(folder))
            if inside:
                return inside
        guess = Path("export") / path
        return [str(guess)] if len(path.parts) == 1 and not path.is_absolute() and finished(guess) else []
    except OSError:
        return []


def _summary_problem(summary: Any) -> str | None:
    """Why a summary.json that parsed is no run summary (a hand edit, another tool's file), else None."""
    from edgekd.bench.report import SUMMARY_SCHEMA
    from edgekd.rundir import schema_problem

    if not isinstance(summary, dict):
        return f"it holds a JSON {type(summary).__name__}, not an object"
    newer_or_other = schema_problem(summary, SUMMARY_SCHEMA)
    if newer_or_other:
        return newer_or_other
    rows = summary.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return "its `rows` is not a list of objects (one per artifact)"
    if not isinstance(summary.get("findings", []), list):
        return "its `findings` is not a list"
    return None


@app.command()
@_handles_errors
def devices(example: Optional[str] = typer.Option(None, "--example", help="print this example profile (pi: a board "
                                                  "over SSH, phone: a phone over adb) to start yours from: "
                                                  "edgekd devices --example pi > devices/pi.yaml"),
            clean: Optional[str] = typer.Option(None, "--clean", help="remove the files benches left in this "
                                                "device's work directory (artifacts, inputs, the runner; nothing "
                                                "else); refused while a bench runs on the device"),
            info: Optional[str] = typer.Option(None, "--info", help="describe this device as a bench finds it: "
                                               "CPU (model, cores, features), Python, numpy and runtimes (or the "
                                               "native tools), Android facts, thermal state")
            ) -> None:
    """List the devices --device can name (./devices/, ~/.config/edgekd/devices/, the built-in host), print an
    example profile, describe a device, or clean its work directory."""
    from rich.table import Table

    from edgekd.devices.profiles import example_profile, find_profile, listed_profiles

    _one_of(example=example, clean=clean, info=info)
    if info is not None:
        _describe_device(info)
        return
    if clean is not None:
        from edgekd.bench.clean import clean as clean_device

        console.print(clean_device(clean).summary(), markup=False, highlight=False)
        return
    if example is not None:  # plain stdout, byte for byte: it is meant to be redirected into a profile file
        sys.stdout.write(example_profile(example).read_text(encoding="utf-8"))
        return
    table = Table(title="devices (--device NAME)", title_justify="left")
    for col in ("device", "kind", "profile"):
        table.add_column(col)
    for name, path in listed_profiles().items():
        if path is None:
            table.add_row(name, "local", "built in: this machine")
            continue
        try:
            kind = find_profile(name).kind  # as --device NAME reads it (a file whose `name:` differs is refused)
        except EdgeKDError as exc:  # listed anyway: the name exists, and `bench --device` gives the whole message
            kind = f"invalid: {exc.what}" + (f"; {exc.why}" if exc.why else "")  # the what names the bad field
        table.add_row(Text(name), Text(kind), Text(str(path)))
    console.print(table)
    console.print("a new one: edgekd devices --example pi > devices/pi.yaml (or --example phone), then edit it; "
                  "edgekd devices --info NAME shows what a bench finds on a device", markup=False, highlight=False)


def _describe_device(name: str) -> None:
    from rich.table import Table

    from edgekd.bench.native import check_cpus
    from edgekd.devices.describe import describe
    from edgekd.devices.profiles import open_device

    device = open_device(name)
    try:
        check_cpus(device)  # `cpus:` the device lacks: what a bench would refuse, said here too
        rows = describe(device)
    finally:
        device.close()
    table = Table(title=f"{name}: what a bench finds there", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    for what, value in rows:
        table.add_row(Text(what), Text(value))
    console.print(table)


@app.command()
@_handles_errors
def fields(section: Optional[str] = typer.Argument(None,
                                                   help="only fields under this path, e.g. distill.text")) -> None:
    """List every recipe field with its type, default and meaning (the schema that validates recipes)."""
    from rich.table import Table

    from edgekd.errors import RecipeError
    from edgekd.recipe_fields import recipe_fields

    every = recipe_fields()
    chosen = [f for f in every if section is None or f.path == section or f.path.startswith(f"{section}.")
              or f.path.startswith(f"{section}[]")]
    if not chosen:
        sections = sorted({f.path.split(".")[0] for f in every})
        raise RecipeError(f"no recipe field under '{section}'", why=f"top-level fields: {', '.join(sections)}",
                          fix="give one of them or a dotted path inside one (e.g. distill.loss)")
    table = Table(title="recipe fields" + (f" under {section}" if section else ""), title_justify="left")
    table.add_column("field", no_wrap=True)
    table.add_column("type", max_width=30, overflow="fold")
    table.add_column("default", max_width=30, overflow="fold")
    table.add_column("meaning", ratio=1, overflow="fold")
    for f in chosen:
        table.add_row(f.path, f.type, f.default, f.description)
    console.print(table, markup=False, highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
