"""How much of the demo's KD gain comes from labels the students never see? The demo's teacher trains on every
label of the training split (1,257); the students and the scratch baseline see 10% of them (126). This runs
the demo's response KD twice per seed: from that teacher, and from the same teacher recipe trained on the 126
labels alone (same architecture, steps, optimizer and seed: the recipe's data.teacher_labels: students), beside
the scratch baseline.

    .venv/bin/python benchmarks/kd_teacher_labels.py              # 5 seeds: 49 s measured on 2 vCPUs
    .venv/bin/python benchmarks/kd_teacher_labels.py --seeds 2     # smoke run

Regime as benchmarks/kd_uplift.py: data split fixed (data.seed 0); the teachers are trained once, with seed 0;
each seed s (0, 10, 20, ...) seeds the student's initialisation and batch order, for both KD students and for
scratch. Per row: mean ± std test accuracy (270 samples: one sample is 0.37 pt) and, for the KD rows, the gain
over scratch with Welch's p-value and whether it exceeds the noise (kd_uplift's rule: gain > 2 pooled std and
p < 0.05).

Writes benchmarks/results/kd_teacher_labels.json (schema edgekd.benchmark.kd_teacher_labels/1) atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))  # interleave.py, kd_uplift.py: machine info, tables, statistics

from edgekd.rundir import atomic_write_json  # noqa: E402

from interleave import print_table, training_machine_info  # noqa: E402
from kd_uplift import compare  # noqa: E402

SCHEMA = "edgekd.benchmark.kd_teacher_labels/1"
OUTPUT = REPO / "benchmarks" / "results" / "kd_teacher_labels.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="student seeds (0, 10, 20, ...; at least 2)")
    p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples for the CI of a gain")
    args = p.parse_args(argv)
    if args.seeds < 2:
        p.error("--seeds needs at least 2")
    import torch

    from edgekd.distill.api import distill, load_splits, train_scratch, train_teacher
    from edgekd.distill.trainer import accuracy, predict_logits
    from edgekd.recipe import load_recipe

    torch.set_num_threads(1)
    started = time.perf_counter()
    recipe = load_recipe("demo")
    splits = load_splits(recipe)
    score = lambda model: 100 * accuracy(predict_logits(model, splits.x_test), splits.y_test)  # noqa: E731
    # the same switch a user sets: the teacher's own steps on the students' labelled subset (same samples)
    students_only = load_recipe({**recipe.model_dump(mode="json"),
                                 "data": {**recipe.data.model_dump(mode="json"), "teacher_labels": "students"}})
    teachers = {"all labels": train_teacher(recipe, splits),
                "the students' labels": train_teacher(students_only, splits)}
    runs: dict[str, list[float]] = {"scratch": [], **{f"KD from the teacher on {k}": [] for k in teachers}}
    for seed in range(0, 10 * args.seeds, 10):
        r = recipe.model_copy(update={"seed": seed})
        runs["scratch"].append(score(train_scratch(r, splits)[0]))
        for which, teacher in teachers.items():
            runs[f"KD from the teacher on {which}"].append(score(distill(r, splits, teacher=teacher).student))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in runs.items()), flush=True)

    rows, table = [], []
    for name, accs in runs.items():
        row = {"what": name, "accuracies": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs, ddof=1))}
        if name != "scratch":
            row["vs_scratch"] = compare(accs, runs["scratch"], args.bootstrap, seed=0)
        rows.append(row)
        gain = row.get("vs_scratch")
        table.append((name, f"{row['mean']:.2f} ± {row['std']:.2f}",
                      "–" if gain is None else f"{gain['gain']:+.2f}",
                      "–" if gain is None else f"{gain['welch_p']:.3g}",
                      "–" if gain is None else ("yes" if gain["exceeds_noise"] else "no")))
    teacher_acc = {k: score(m) for k, m in teachers.items()}
    print_table(f"KD gain by the labels the teacher saw — {args.seeds} student seeds; teacher accuracy: "
                + ", ".join(f"on {k} {v:.2f}%" for k, v in teacher_acc.items()),
                ("student", "test accuracy %", "gain vs scratch", "Welch p", "beyond noise"), table)
    atomic_write_json(OUTPUT, {
        "schema": SCHEMA, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": training_machine_info(1), "seeds": list(range(0, 10 * args.seeds, 10)),
        "labels": {"teacher_all": int(len(splits.y_train)), "students": int(splits.labelled.sum())},
        "teacher_accuracy": teacher_acc,
        "rows": rows, "wall_seconds": round(time.perf_counter() - started, 1)})
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
