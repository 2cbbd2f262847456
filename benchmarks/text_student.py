"""MiniLM teacher vs its on-device text student, side by side in one run.

Reads a finished `edgekd run edgekd/recipes/minilm.yaml` (default export/minilm) and measures, on this host,
1 thread, batch 1, at sequence length 128 and 32 (token ids padded to that length; tokenisation is not timed):

* latency: every artifact loaded by edgekd's own runner adapters in this process and timed interleaved
  (benchmarks/interleave.py: each round runs a block of every model in a fresh random order), p50 with a
  bootstrap 95% interval, and teacher/student ratios paired round by round;
* size, and VmHWM from `edgekd bench` (a fresh runner process per artifact);
* quality of the *exported* file on held-out sentences: mean cosine to the teacher's embedding, recall@10 of
  the teacher's nearest neighbours when the student searches (a pool of held-out sentences; and, as "R@10
  T-index", when the student's query searches an index the teacher built), as "best@10" how often the
  teacher's best match is among the student's top 10, accuracy on the labelled task;
* what recall@10 a given cosine buys when the error is isotropic noise (the teacher's pool embeddings plus
  Gaussian noise), to tell how far a student is from the goal in cosine;
* KD vs scratch over --seeds seeds (same architecture, steps and data; scratch sees labels only).

ONNX files take any length; the TFLite files are fixed at the run's device length, so this script exports the
student's TFLite files again at 32 (same checkpoint, same quantization). Writes
benchmarks/results/text_student.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import interleave  # noqa: E402
from interleave import loadavg, print_markdown, print_table  # noqa: E402
from kd_uplift import compare  # noqa: E402

from edgekd.rundir import atomic_write_json  # noqa: E402
from edgekd.text.metrics import accuracy, embedding_metrics  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "text_student.json"
LENGTHS = (128, 32)
STUDENT_PRECISIONS = ("fp32", "int8_dynamic", "int4")
GOALS = {"speedup_int8": 20.0, "size_fraction": 1 / 20, "recall_at_10": 0.80, "accuracy_share": 0.97}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, default=REPO / "export" / "minilm")
    p.add_argument("--seeds", type=int, default=3, help="KD and scratch students per seed (0 = skip)")
    p.add_argument("--seed-epochs", type=int, default=1,
                   help="distill.train.epochs for the seed study (KD and scratch get the same steps; the recorded "
                        "results use 1 epoch, ~2,100 steps)")
    p.add_argument("--rounds", type=int, default=60, help="interleaved timing rounds")
    p.add_argument("--block-ms", type=float, default=60.0, help="longest timed block per model and round")
    p.add_argument("--result", type=Path, default=RESULT, help="where to write the JSON results")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown (README)")
    return p.parse_args(argv)


def context(run_dir: Path):
    import edgekd
    from edgekd.pipeline import Context
    from edgekd.progress import SilentReporter
    from edgekd.rundir import RunDir

    if not (run_dir / "recipe.yaml").is_file() or not (run_dir / "data" / "teacher_embeddings.npy").is_file():
        raise SystemExit(f"{run_dir} is not a finished text run (no recipe.yaml or data/teacher_embeddings.npy): "
                         "run `.venv/bin/edgekd run edgekd/recipes/minilm.yaml` first, or give --run-dir")
    recipe = edgekd.load_recipe(run_dir / "recipe.yaml")
    recipe = recipe.model_copy(update={"output_dir": run_dir.parent})
    return Context(recipe=recipe, rundir=RunDir(run_dir), reporter=SilentReporter())


def study_header(name: str, run_dir: Path, machine: dict) -> dict:
    """The fields every text benchmark's JSON starts with: what ran, when, on which run, code and machine."""
    return {"schema": f"edgekd.benchmark.{name}/1", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "run_dir": str(run_dir), "git": interleave.git_state(REPO, ("edgekd/text", "benchmarks")),
            "machine": machine}


def write_study(doc: dict, result: Path, started: float, title: str, columns: tuple[str, ...],
                rows: list[tuple[str, ...]], markdown: bool) -> int:
    """Record the run time, write the JSON atomically and print the table (and its Markdown for the README)."""
    doc["seconds"] = time.perf_counter() - started
    atomic_write_json(result, doc)
    print_table(title, columns, rows)
    if markdown:
        print_markdown(columns, rows)
    print(f"wrote {result}")
    return 0


def artifacts_at(ctx, length: int, tmp: Path) -> dict[str, Path]:
    """name -> model file usable at `length`: the run's ONNX files, and TFLite files exported at `length`."""
    from edgekd.export.artifact import Artifact

    run = {a.name: a for a in (Artifact.load(p) for p in ctx.rundir.recorded_outputs("export", "artifact.json"))}
    files = {"teacher-onnx-fp32": run["teacher-onnx-fp32"].path}
    files.update({f"student-onnx-{p}": run[f"student-onnx-{p}"].path for p in STUDENT_PRECISIONS})
    if length == ctx.text.device_length:
        files.update({f"student-tflite-{p}": run[f"student-tflite-{p}"].path for p in STUDENT_PRECISIONS})
        return files
    from edgekd.export.formats import ExportOptions
    from edgekd.text.export import export_text_model
    from edgekd.text.stages import trained_student

    ids, labels = ctx.text.tokenize(ctx.text.labelled_held_out_rows, length), \
        ctx.text.corpus.labels[ctx.text.labelled_held_out_rows]
    made = export_text_model(trained_student(ctx, "student"), role="student", formats=["tflite"],
                             precisions=list(STUDENT_PRECISIONS), out_root=tmp / f"len{length}", length=length,
                             ids=ids, labels=labels, num_classes=ctx.text.num_classes, options=ExportOptions(),
                             min_agreement=0.0, min_agreement_int4=0.0, lineage={"benchmark": "text_student"})
    files.update({a.name: a.path for a in made})
    return files


class Slot(interleave.Slot):
    def __init__(self, name: str, path: Path, ids: np.ndarray):
        from edgekd.bench.runner import import_runtime, load_model

        runtime = "onnxruntime" if path.suffix == ".onnx" else "litert"
        model = load_model(runtime, import_runtime(runtime), str(path), 1)
        info = model.inputs[0]
        model.feed({info["name"]: ids.astype(info["dtype"])})
        super().__init__(model)
        self.name = name


def timing(files: dict[str, Path], ids: np.ndarray, rounds: int, block_ms: float, seed: int) -> dict:
    from edgekd.bench import stats

    slots = [Slot(name, path, ids) for name, path in files.items()]
    for s in slots:
        s.warm()
        s.plan(block=200, max_block_ms=block_ms)
    seconds = interleave.measure(slots, rounds, seed)
    teacher = next(s for s in slots if s.name == "teacher-onnx-fp32")
    out = {}
    for s in slots:
        summary = stats.summarize(s.latencies)
        ratio = interleave.paired_ratio(teacher, s, seed) if s is not teacher else None
        out[s.name] = {"p50_us": summary["p50"], "ci95_p50_us": summary["ci95_p50"], "calls": int(len(s.latencies)),
                       "teacher_over_this": ratio}
    return {"rows": out, "seconds": seconds, "noise": interleave.machine_noise(min(slots, key=lambda s: s.per_call_ns),
                                                                               "fastest model", slots)}


def quality(ctx, files: dict[str, Path], length: int) -> dict:
    """Exported-file quality on held-out text: cosine, recall@10 (pool of held-out sentences), accuracy."""
    from edgekd.text.export import run_text_artifact
    from edgekd.text.stages import retrieval_pool

    data = ctx.text
    pool, reference = retrieval_pool(ctx)
    labelled = data.labelled_held_out_rows
    ids = data.tokenize(pool, length)
    labels = data.corpus.labels[pool]
    keep = np.isin(pool, labelled)
    out = {}
    for name, path in files.items():
        logits, emb = run_text_artifact(path, ids)
        out[name] = {**embedding_metrics(emb, reference), "accuracy": accuracy(logits[keep], labels[keep]),
                     "size_bytes": path.stat().st_size}
    return out


def noise_calibration(ctx, sigmas=(0.02, 0.03, 0.04, 0.05, 0.06)) -> list[dict]:
    """What recall@10 a given cosine buys: the teacher's own pool embeddings plus isotropic Gaussian noise.
    A student whose errors are structured (similar words, different meaning) gets less than this."""
    from edgekd.text.stages import retrieval_pool

    reference = retrieval_pool(ctx)[1]
    rng = np.random.default_rng(0)
    return [{"sigma": sigma, **embedding_metrics(reference + sigma * rng.normal(size=reference.shape), reference)}
            for sigma in sigmas]


def memory(files: dict[str, Path], ids_path: Path) -> dict[str, int | None]:
    """VmHWM of a fresh runner process per artifact (edgekd bench on host, short)."""
    from edgekd.bench.harness import BenchSettings, bench

    settings = BenchSettings(threads=1, batch_size=1, min_seconds=0.2, rounds=1, min_runs=20, warmup_runs=5)
    with tempfile.TemporaryDirectory() as tmp:
        results = bench([str(p) for p in files.values()], device="host", settings=settings, inputs=ids_path,
                        results_dir=Path(tmp), history=Path(tmp) / "h.sqlite")
    return {name: r.memory_kb.get("vmhwm") for name, r in zip(files, results)}


def seeds_table(ctx, seeds: int, epochs: int) -> dict:
    from edgekd.text.stages import distilled_student, scratch_student, student_metrics

    d = ctx.recipe.distill
    ctx.recipe = ctx.recipe.model_copy(update={"distill": d.model_copy(
        update={"train": d.train.model_copy(update={"epochs": epochs})})})
    rows = []
    for seed in range(seeds):
        kd, _ = distilled_student(ctx, seed)
        scratch, _ = scratch_student(ctx, seed)
        rows.append({"seed": seed, "kd": student_metrics(ctx, kd), "scratch": student_metrics(ctx, scratch)})
        print(f"  seed {seed}: KD {rows[-1]['kd']['test_accuracy']:.4f}  scratch {rows[-1]['scratch']['test_accuracy']:.4f}",
              file=sys.stderr)
    cmp = compare([r["kd"]["test_accuracy"] for r in rows], [r["scratch"]["test_accuracy"] for r in rows],
                  n_boot=2000, seed=0)
    return {"rows": rows, "comparison": cmp, "epochs": epochs}


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    ctx = context(args.run_dir)
    before = loadavg()
    doc: dict = {**study_header("text_student", args.run_dir,
                                {**interleave.training_machine_info(1), "int8_flags": interleave.int8_flags()}),
                 "teacher_folder": str(ctx.text.teacher_folder), "lengths": {}}
    manifest = ctx.rundir.load_manifest()["stages"]
    teacher_accuracy = manifest["teacher"]["metrics"]["test_accuracy"]
    with tempfile.TemporaryDirectory() as tmp:
        for length in LENGTHS:
            files = artifacts_at(ctx, length, Path(tmp))
            first = ctx.text.tokenize(ctx.text.held_out_rows[:1], length)
            ids_path = Path(tmp) / f"ids{length}.npy"
            np.save(ids_path, first)
            print(f"length {length}: quality of {len(files)} exported files", file=sys.stderr)
            q = quality(ctx, files, length)
            print(f"length {length}: timing, {args.rounds} interleaved rounds", file=sys.stderr)
            t = timing(files, first, args.rounds, args.block_ms, seed=length)
            m = memory(files, ids_path)
            rows = {name: {**q[name], **t["rows"][name], "vmhwm_kb": m.get(name)} for name in files}
            doc["lengths"][str(length)] = {"rows": rows, "timing_seconds": t["seconds"], "noise": t["noise"]}
    doc["teacher_accuracy"] = teacher_accuracy
    doc["noise_calibration"] = noise_calibration(ctx)
    doc["seeds"] = seeds_table(ctx, args.seeds, args.seed_epochs) if args.seeds else None
    doc["goals"] = goals(doc)
    doc["loadavg"] = {"before": before, "after": loadavg()}
    doc["seconds"] = time.perf_counter() - started
    atomic_write_json(args.result, doc)
    report(doc, args.markdown)
    print(f"wrote {args.result}")
    return 0


def goals(doc: dict) -> list[dict]:
    rows = doc["lengths"]["128"]["rows"]
    teacher = rows["teacher-onnx-fp32"]
    int8 = rows["student-onnx-int8_dynamic"]
    ratio = int8["teacher_over_this"]
    out = [
        {"goal": "student INT8 >= 20x faster than teacher FP32 (p50, seq 128, 1 thread)", "value": ratio["ratio"],
         "ci95": ratio["ci95"], "pass": ratio["ci95"][0] >= GOALS["speedup_int8"]},
        {"goal": "student INT8 <= 1/20 of the teacher's size", "value": int8["size_bytes"] / teacher["size_bytes"],
         "pass": int8["size_bytes"] / teacher["size_bytes"] <= GOALS["size_fraction"]},
        {"goal": "recall@10 agreement >= 0.80 (student INT8 searching)", "value": int8["recall_at_10"],
         "pass": int8["recall_at_10"] >= GOALS["recall_at_10"]},
        {"goal": "classification accuracy >= 97% of the teacher's (student INT8)",
         "value": int8["accuracy"] / doc["teacher_accuracy"],
         "pass": int8["accuracy"] / doc["teacher_accuracy"] >= GOALS["accuracy_share"]},
    ]
    if doc.get("seeds"):
        cmp = doc["seeds"]["comparison"]
        out.append({"goal": "KD student beats scratch by more than the noise", "value": cmp["gain"],
                    "pass": cmp["exceeds_noise"], "detail": cmp})
    return out


COLUMNS = ("artifact", "seq", "p50 us [95% CI]", "teacher/this", "size KiB", "VmHWM MiB", "cos", "R@10",
           "R@10 T-index", "best@10", "acc")


def table_rows(doc: dict) -> list[tuple[str, ...]]:
    out = []
    for length, block in doc["lengths"].items():
        for name, r in block["rows"].items():
            ratio = r["teacher_over_this"]
            out.append((name, length, f"{r['p50_us']:.1f} [{r['ci95_p50_us'][0]:.1f}, {r['ci95_p50_us'][1]:.1f}]",
                        f"{ratio['ratio']:.1f}x" if ratio else "-", f"{r['size_bytes'] / 1024:.0f}",
                        f"{r['vmhwm_kb'] / 1024:.0f}" if r.get("vmhwm_kb") else "-", f"{r['cosine_to_teacher']:.3f}",
                        f"{r['recall_at_10']:.3f}", f"{r['recall_at_10_teacher_index']:.3f}",
                        f"{r['best_match_at_10']:.3f}", f"{r['accuracy']:.2%}"))
    return out


def report(doc: dict, markdown: bool) -> None:
    m = doc["machine"]
    print_table(f"MiniLM teacher vs text student on {m['cpu_model']} ({m['logical_cores']} cores), 1 thread, batch 1",
                COLUMNS, table_rows(doc))
    if doc.get("seeds"):
        c = doc["seeds"]["comparison"]
        print(f"KD vs scratch over {len(doc['seeds']['rows'])} seeds ({doc['seeds']['epochs']} epochs each): "
              f"{c['kd_mean']:.2%} vs {c['scratch_mean']:.2%} "
              f"(gain {c['gain'] * 100:+.2f} pt, Welch p = {c['welch_p']:.2g}); teacher {doc['teacher_accuracy']:.2%}")
    print("recall@10 (best@10) that a cosine buys when the error is isotropic noise: " + ", ".join(
        f"cos {c['cosine_to_teacher']:.3f} -> {c['recall_at_10']:.3f} ({c['best_match_at_10']:.3f})"
        for c in doc["noise_calibration"]))
    for g in doc["goals"]:
        print(f"  {'PASS' if g['pass'] else 'FAIL'}  {g['goal']}: {g['value']:.4g}")
    if markdown:
        print_markdown(COLUMNS, table_rows(doc))


if __name__ == "__main__":
    sys.exit(main())
