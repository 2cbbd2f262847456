"""What a built-in recipe costs and gives when a user runs it from nothing: `edgekd run NAME`, the real CLI in a
child process, into an output root with empty caches, timed stage by stage.

    .venv/bin/python benchmarks/recipe_runs.py minilm_news            # ~30 min on 2 cores (needs the [hf] extra)
    .venv/bin/python benchmarks/recipe_runs.py demo --markdown
    .venv/bin/python benchmarks/recipe_runs.py minilm_news --output-root export/recipe-runs/news   # resumable

Why a script and not the README's word: the numbers the README quotes for a whole run (the BBC News accuracies,
how long a first run takes) are read here from the run's own records (manifest.json: each stage's seconds and
metrics; results/summary.json: each exported file as the bench measured it on this host) and stored with the
machine they came from.

The output root defaults to a new folder under export/recipe-runs/ (so the teacher caches start empty: a run
"from nothing"); give --output-root to resume an interrupted run there (`edgekd run` skips finished stages,
whose recorded seconds are kept: the stage times are those of the stages' first runs, `resumed` says so).
After the run the same command runs once more, every stage up to date: `rerun_wall_seconds`.
Results are merged by recipe name into benchmarks/results/recipe_runs.json (schema edgekd.benchmark.recipe_runs/1),
written atomically.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))  # interleave.py: machine info and tables shared by the scripts

from edgekd.rundir import atomic_write_json, read_json  # noqa: E402
from edgekd.text.report import EMBEDDING_HEADER, embedding_rows  # noqa: E402

from interleave import git_state, host_fields, loadavg, print_markdown, print_table  # noqa: E402

SCHEMA = "edgekd.benchmark.recipe_runs/1"
RESULT = REPO / "benchmarks" / "results" / "recipe_runs.json"
ROOTS = REPO / "export" / "recipe-runs"
# Per exported file: the fields of results/summary.json's rows kept here.
ROW_FIELDS = ("name", "role", "format", "precision", "size_bytes", "accuracy", "device_accuracy", "agreement",
              "p50_us", "ci95_p50", "vmhwm_kb", "unstable")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipes", nargs="+", help="built-in recipe names (or recipe files)")
    p.add_argument("--output-root", type=Path, default=None,
                   help="run here (resumes a run begun there); default: a new folder under export/recipe-runs/")
    p.add_argument("--result", type=Path, default=RESULT, help="JSON file the results are merged into")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown (README)")
    return p.parse_args(argv)


def edgekd_command() -> list[str]:
    """The console script installed beside this interpreter (what users type), else its entry point."""
    script = Path(sys.executable).with_name("edgekd")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from edgekd.entry import main; main()"]


def timed_run(recipe: str, root: Path) -> float:
    """`edgekd run RECIPE --output-dir ROOT`, its output passed through; its wall time.  A failed run stops the
    script (an interrupted one resumes with --output-root)."""
    started = time.monotonic()
    proc = subprocess.run([*edgekd_command(), "run", recipe, "--output-dir", str(root)], check=False)
    if proc.returncode != 0:
        sys.exit(f"edgekd run {recipe} failed (exit {proc.returncode}); rerun with --output-root {root} to resume")
    return round(time.monotonic() - started, 1)


def run_recipe(recipe: str, root: Path) -> dict:
    """The run, whether caches were there before it, and the same command once more, with every stage up to
    date (what a user waits for to see the results again)."""
    cold = not (root / "cache").exists()
    wall = timed_run(recipe, root)
    return {"wall_seconds": wall, "cold_caches": cold, "rerun_wall_seconds": timed_run(recipe, root)}


def read_run(rundir: Path) -> dict:
    """Each stage's seconds and metrics (manifest.json) and each exported file's measured row (summary.json)."""
    manifest = read_json(rundir / "manifest.json")
    summary = read_json(rundir / "results" / "summary.json")
    stages = {name: {"seconds": stage.get("seconds"), "finished_at": stage.get("finished_at"),
                     "metrics": stage.get("metrics")}
              for name, stage in manifest["stages"].items()}
    rows = [{k: row.get(k) for k in ROW_FIELDS} for row in summary["rows"]]
    return {"stages": stages, "models": summary.get("models"), "rows": rows, "findings": summary.get("findings"),
            "bench_machine": summary.get("machine"), "text": summary.get("text")}


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KiB"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def show(name: str, entry: dict, markdown: bool) -> None:
    stage_rows = [(stage, duration(s["seconds"])) for stage, s in entry["stages"].items()]
    stage_rows.append(("all stages", duration(entry["stage_seconds"])))
    stage_rows.append(("edgekd run, wall (start-up included)", duration(entry["wall_seconds"])))
    stage_rows.append(("the same command again (all up to date)", duration(entry["rerun_wall_seconds"])))
    title = f"{name}: time per stage ({'from nothing' if entry['cold_caches'] else 'caches were warm'}" \
            f"{', resumed' if entry['resumed'] else ''})"
    print_table(title, ("stage", "time"), stage_rows)
    models = entry["models"] or {}
    model_rows = [(role, percent((m or {}).get("test_accuracy")), str((m or {}).get("parameters", "–")))
                  for role, m in models.items() if m]
    print_table(f"{name}: held-out accuracy of the PyTorch models", ("model", "accuracy", "parameters"), model_rows)
    file_rows = [(r["name"], size(r["size_bytes"]), percent(r["device_accuracy"]),
                  f"{r['p50_us']:.1f}" if r["p50_us"] is not None else "–") for r in entry["rows"]]
    columns = ("file", "size", "device acc", "p50 µs")
    print_table(f"{name}: exported files on this host (the run's own bench)", columns, file_rows)
    embedding = embedding_rows(entry)  # a text run: each model's embedding against the teacher's
    if embedding:
        print_table(f"{name}: embedding against the teacher", EMBEDDING_HEADER, embedding)
    if markdown:
        print_markdown(("stage", "time"), stage_rows)
        print_markdown(columns, file_rows)
        if embedding:
            print_markdown(EMBEDDING_HEADER, embedding)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from edgekd.bench.runner import system_info
    from edgekd.recipe import load_recipe

    results = read_json(args.result) if args.result.exists() else {"schema": SCHEMA, "recipes": {}}
    for recipe in args.recipes:
        name = load_recipe(recipe).name
        root = args.output_root or ROOTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        resumed = (root / name / "manifest.json").exists()
        load_before = loadavg()
        run = run_recipe(recipe, root)
        entry = {**run, "resumed": resumed, "output_root": str(root), **read_run(root / name),
                 "machine": {**host_fields(system_info()), "loadavg_before": load_before, "loadavg_after": loadavg()},
                 "code": git_state(REPO, ("edgekd",)), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        entry["stage_seconds"] = round(sum(s["seconds"] or 0 for s in entry["stages"].values()), 1)
        results["recipes"][name] = entry
        atomic_write_json(args.result, results)
        show(name, entry, args.markdown)
    print(f"wrote {args.result.relative_to(REPO) if args.result.is_relative_to(REPO) else args.result}")


if __name__ == "__main__":
    main()
