"""What repeated self-distillation does: born-again chains, generation by generation, with rare classes in view.

    .venv/bin/python benchmarks/generations.py               # 2 regimes x 5 seeds x generations 0-5, ~3-6 min
    .venv/bin/python benchmarks/generations.py --quick       # smoke run, < 1 min
    .venv/bin/python benchmarks/generations.py --generations 8 --seeds 3 --markdown --check

The chain is edgekd's own: the `self` strategy in born-again mode (edgekd/recipes/self_born_again.yaml, with
self_distill.generations = G), called once per seed through edgekd.distill.api.build_job and
STRATEGIES["self"].  Generation 0 is the MLP student trained on the labelled samples alone (the scratch
baseline: same init seed, batch order and budget); generation g is a fresh student (seed + g) taught by
generation g - 1 on the transfer set with the recipe's kd loss (T = 4, alpha = 0.9: 90% the previous
generation's soft outputs, 10% CE on the labelled samples).  Every generation takes budget(recipe, splits)
steps (1200).  The script keeps every generation's model by wrapping the job's student factory, so each one
is evaluated as the strategy trained it.

Regimes (data: scikit-learn digits, data.seed 0; transfer set: the whole training split, 1257 samples):
  balanced     the recipes' own: labels for a stratified 10% of the training split (126 samples, 12-13 per
               class), so the "rarest" classes have 1 label fewer than the others;
  imbalanced   the same labelled subset, except that classes --rare-classes (default 3 and 8) keep only
               their first --rare-keep (default 2) labelled samples; the other labels of those classes are
               hidden (the samples stay in the transfer set, unlabelled).  126 -> ~104 labels.

Per generation (test split, 270 samples, ~27 per class: one sample is ~3.7 pt of a class's accuracy):
accuracy, per-class accuracy (recall) with the rarest classes (fewest labelled training samples) marked,
mean accuracy of the rarest classes, mean entropy of the softmax predictions (nats, T = 1), top-1 agreement
with generation 0 and with the previous generation; mean +- std over seeds.  Plus findings (no thresholds):
the change of overall and rare-class accuracy from generation 1 (the result of one distillation) to the last,
and from generation 0, with the number of seeds where it fell.  This is what edgekd's lineage guard
(a teacher of generation >= 2 needs --allow-generation) rests on.

Check (PASS/FAIL; --check exits 1 on a FAIL): generation 0 of the chain equals train_scratch (same seed) on
the test split, i.e. the chain starts from the scratch baseline.

Writes benchmarks/results/generations.json (schema edgekd.benchmark.generations/1) atomically; --quick writes
benchmarks/results/generations.quick.json unless --output is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))  # interleave.py: machine info and tables shared by the scripts

from edgekd.rundir import atomic_write_json  # noqa: E402

import interleave  # noqa: E402
from interleave import loadavg, print_markdown, print_table  # noqa: E402

SCHEMA = "edgekd.benchmark.generations/1"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "generations.json"
QUICK_OUTPUT = REPO / "benchmarks" / "results" / "generations.quick.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generations", type=int, default=None,
                   help="born-again generations G after generation 0 (default 5; --quick 2; edgekd allows <= 10)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per regime, 0, 10, 20, ... (default 5; --quick 2)")
    p.add_argument("--regimes", default="balanced,imbalanced", help="balanced, imbalanced or both (default)")
    p.add_argument("--rare-classes", default="3,8", help="imbalanced regime: classes whose labels are mostly hidden")
    p.add_argument("--rare-keep", type=int, default=2, help="imbalanced regime: labelled samples kept per rare class")
    p.add_argument("--student-epochs", type=int, default=None, help="override distill.train.epochs (--quick: 5)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 2 generations, 5 epochs")
    p.add_argument("--output", type=Path, default=None, help=f"result JSON (default: {DEFAULT_OUTPUT})")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown (for README.md)")
    p.add_argument("--check", action="store_true", help="exit 1 when the check fails")
    args = p.parse_args(argv)
    if args.quick:
        args.generations = args.generations or 2
        args.seeds = args.seeds or 2
        args.student_epochs = args.student_epochs or 5
    args.generations = args.generations or 5
    args.seeds = args.seeds or 5
    args.regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    if not args.regimes or set(args.regimes) - {"balanced", "imbalanced"}:
        p.error("--regimes: balanced and/or imbalanced")
    args.rare_classes = sorted({int(c) for c in args.rare_classes.split(",") if c.strip()})
    if not 1 <= args.generations <= 10:
        p.error("--generations must be 1..10 (edgekd's self_distill.generations)")
    args.output = args.output or (QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT)
    return args


def git_state(paths: tuple[str, ...] = ("edgekd/distill", "edgekd/recipes", "edgekd/models", "edgekd/data")) -> dict:
    return interleave.git_state(REPO, paths)


def machine_info(threads: int) -> dict:
    return interleave.training_machine_info(threads)


# --------------------------------------------------------------------------- regimes and metrics

def imbalanced(splits, rare: list[int], keep: int):
    """The splits with the labels of `rare` classes hidden except the first `keep` labelled samples of each."""
    mask = splits.labelled.copy()
    for c in rare:
        rows = np.flatnonzero(mask & (splits.y_train == c))
        mask[rows[keep:]] = False
    return dataclasses.replace(splits, labelled=mask)


def entropy(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(np.exp(logp) * logp).sum(axis=1)


def per_class(pred: np.ndarray, y: np.ndarray, num_classes: int) -> list[float]:
    return [float((pred[y == c] == c).mean()) if (y == c).any() else float("nan") for c in range(num_classes)]


def sign_test(fell: int, rose: int) -> float:
    """Two-sided exact sign test of 'no change' over the seeds that changed (ties dropped)."""
    n = fell + rose
    if n == 0:
        return 1.0
    k = max(fell, rose)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n)


def run_chain(recipe, splits, seed: int):
    """The born-again strategy for one seed; returns (every generation's model in order, outcome)."""
    from edgekd.distill import api
    from edgekd.distill.strategies import STRATEGIES

    r = recipe.model_copy(update={"seed": seed})
    job = api.build_job(r, splits, lambda: None)  # born-again has no outside teacher
    created = []
    factory = job.make_student

    def make_student(s: int):
        model = factory(s)
        created.append(model)
        return model

    job = dataclasses.replace(job, make_student=make_student)
    outcome = STRATEGIES[r.distill.strategy](job)
    if outcome.student is not created[-1] or len(created) != r.distill.self_distill.generations + 1:
        raise SystemExit(f"unexpected chain: {len(created)} students created for {r.distill.self_distill.generations} "
                         "generations, or the returned student is not the last one")
    return created, outcome


def summarize_regime(name: str, runs: list[dict], rare: list[int], num_classes: int, generations: int) -> dict:
    gens = []
    for g in range(generations + 1):
        per = [run["generations"][g] for run in runs]
        acc = np.array([p["accuracy"] for p in per])
        rare_acc = np.array([p["rare_accuracy"] for p in per])
        cls = np.array([p["per_class"] for p in per])
        ent = np.array([p["entropy"] for p in per])
        a0 = np.array([p["agreement_gen0"] for p in per])
        ap = np.array([p["agreement_prev"] for p in per])
        gens.append({
            "generation": g, "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)),
            "rare_accuracy_mean": float(rare_acc.mean()), "rare_accuracy_std": float(rare_acc.std(ddof=1)),
            "other_accuracy_mean": float(np.mean([p["other_accuracy"] for p in per])),
            "per_class_mean": cls.mean(axis=0).tolist(), "entropy_mean": float(ent.mean()),
            "entropy_std": float(ent.std(ddof=1)), "agreement_gen0_mean": float(a0.mean()),
            "agreement_prev_mean": float(ap.mean()),
            "val_accuracy_mean": float(np.mean([p["val_accuracy"] for p in per])),
        })

    def delta(key: str, a: int, b: int) -> dict:
        d = np.array([run["generations"][b][key] - run["generations"][a][key] for run in runs])
        fell, rose = int((d < -1e-12).sum()), int((d > 1e-12).sum())
        return {"from": a, "to": b, "mean": float(d.mean()), "std": float(d.std(ddof=1)), "per_seed": d.tolist(),
                "fell": fell, "rose": rose, "seeds": len(d), "sign_test_p": sign_test(fell, rose)}

    last = generations
    return {"regime": name, "rare_classes": rare, "generations": gens,
            "changes": {k: {"gen1_to_last": delta(k, 1, last), "gen0_to_last": delta(k, 0, last),
                            "gen0_to_gen1": delta(k, 0, 1)}
                        for k in ("accuracy", "rare_accuracy", "other_accuracy", "entropy")}}


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from edgekd.distill import api
    from edgekd.distill.trainer import accuracy, predict_logits
    from edgekd.recipe import load_recipe

    recipe = load_recipe("self_born_again")
    d = recipe.distill
    recipe = recipe.model_copy(update={"distill": d.model_copy(update={
        "self_distill": d.self_distill.model_copy(update={"generations": args.generations}),
        "train": d.train.model_copy(update={"epochs": args.student_epochs or d.train.epochs})})})
    base = api.load_splits(recipe)
    seeds = [10 * i for i in range(args.seeds)]
    x_test, y_test, num_classes = base.x_test, base.y_test, base.num_classes
    load_before = loadavg()
    print(f"born-again: generations 0-{args.generations}, seeds {seeds}, regimes {args.regimes}; budget "
          f"{api.budget(recipe, base)} steps per generation; torch threads {args.threads}", flush=True)

    regimes, checks_detail = [], []
    for regime in args.regimes:
        splits = base if regime == "balanced" else imbalanced(base, args.rare_classes, args.rare_keep)
        counts = np.bincount(splits.y_train[splits.labelled], minlength=num_classes)
        rare = [int(c) for c in np.flatnonzero(counts == counts.min())]
        print(f"{regime}: {int(splits.labelled.sum())} labels, per class {counts.tolist()}; rarest {rare}", flush=True)
        runs = []
        t_regime = time.perf_counter()
        for s in seeds:
            t0 = time.perf_counter()
            models, outcome = run_chain(recipe, splits, s)
            chain_s = time.perf_counter() - t0
            scratch, _ = api.train_scratch(recipe.model_copy(update={"seed": s}), splits)
            scratch_acc = accuracy(predict_logits(scratch, x_test), y_test)
            logits = [predict_logits(m, x_test) for m in models]
            preds = [lg.argmax(axis=1) for lg in logits]
            history = outcome.details["generations"]
            gens = []
            for g, (lg, pr) in enumerate(zip(logits, preds)):
                cls = per_class(pr, y_test, num_classes)
                gens.append({
                    "generation": g, "accuracy": float((pr == y_test).mean()), "per_class": cls,
                    "rare_accuracy": float(np.mean([cls[c] for c in rare])),
                    "other_accuracy": float(np.mean([cls[c] for c in range(num_classes) if c not in rare])),
                    "entropy": float(entropy(lg).mean()), "agreement_gen0": float((pr == preds[0]).mean()),
                    "agreement_prev": float((pr == preds[max(g - 1, 0)]).mean()),
                    "val_accuracy": history[g]["val_accuracy"],
                })
            runs.append({"seed": s, "chain_seconds": chain_s, "steps": outcome.steps,
                         "scratch_accuracy": scratch_acc, "generations": gens})
            checks_detail.append((regime, s, gens[0]["accuracy"], scratch_acc))
            accs = " ".join(f"{g['accuracy']:.3f}" for g in gens)
            rares = " ".join(f"{g['rare_accuracy']:.3f}" for g in gens)
            print(f"  seed {s}: accuracy by generation {accs}; rare {rares}; scratch {scratch_acc:.3f}; "
                  f"{chain_s:.0f} s", flush=True)
        summary = summarize_regime(regime, runs, rare, num_classes, args.generations)
        summary.update({"labelled_per_class": counts.tolist(), "labelled": int(splits.labelled.sum()),
                        "runs": runs, "seconds": time.perf_counter() - t_regime,
                        "how": ("the recipes' stratified 10% labelled subset" if regime == "balanced" else
                                f"the stratified 10% labelled subset, with classes {args.rare_classes} keeping only "
                                f"their first {args.rare_keep} labelled samples (the rest of their labels hidden; "
                                "the samples stay in the transfer set)")})
        regimes.append(summary)
    load_after = loadavg()

    mismatches = [(r, s, a, b) for r, s, a, b in checks_detail if a != b]
    checks = [{"check": "generation 0 equals the scratch baseline (train_scratch, same seed) on the test split",
               "verdict": "FAIL" if mismatches else "PASS",
               "detail": (f"all {len(checks_detail)} chains: identical test accuracy" if not mismatches else
                          "; ".join(f"{r} seed {s}: gen0 {a:.4f} vs scratch {b:.4f}" for r, s, a, b in mismatches))}]
    findings = []
    for reg in regimes:
        ch = reg["changes"]
        G = args.generations
        for key, label in (("accuracy", "test accuracy"), ("rare_accuracy", f"rarest classes {reg['rare_classes']}"),
                           ("other_accuracy", "other classes")):
            a, b = ch[key]["gen0_to_gen1"], ch[key]["gen1_to_last"]
            findings.append(f"{reg['regime']}: {label}: gen 0 -> 1 {a['mean'] * 100:+.2f} pt (fell in {a['fell']}/"
                            f"{a['seeds']} seeds, rose in {a['rose']}); gen 1 -> {G} {b['mean'] * 100:+.2f} pt "
                            f"+- {b['std'] * 100:.2f} (fell in {b['fell']}/{b['seeds']}, rose in {b['rose']}; "
                            f"sign test p = {b['sign_test_p']:.2g})")
        e = ch["entropy"]["gen1_to_last"]
        findings.append(f"{reg['regime']}: mean prediction entropy gen 1 -> {G}: {e['mean']:+.3f} nats "
                        f"(fell in {e['fell']}/{e['seeds']})")
    if args.quick:
        findings.insert(0, "--quick: tiny budgets; the numbers say nothing about repeated distillation")

    doc = {
        "schema": SCHEMA,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_state(),
        "machine": machine_info(args.threads),
        "setup": {"recipe": "self_born_again", "generations": args.generations, "seeds": seeds,
                  "budget_steps_per_generation": api.budget(recipe, base),
                  "loss": recipe.distill.loss.model_dump(mode="json"), "student": recipe.student.model.model_dump(),
                  "data": recipe.data.model_dump(mode="json"), "transfer_set": recipe.distill.transfer_set,
                  "test_samples": len(y_test), "test_per_class": np.bincount(y_test, minlength=num_classes).tolist(),
                  "rare_classes_imbalanced": args.rare_classes, "rare_keep": args.rare_keep, "quick": args.quick,
                  "entropy": "mean over test samples of -sum p log p, p = softmax(logits) (T = 1), nats"},
        "regimes": regimes,
        "checks": checks,
        "findings": findings,
        "measurement": {"loadavg_before": load_before, "loadavg_after": load_after,
                        "total_seconds": time.perf_counter() - started},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, doc)
    os.chmod(args.output, 0o644)
    print_report(doc, args.markdown)
    print(f"\nwrote {args.output}")
    return 1 if args.check and any(c["verdict"] == "FAIL" for c in checks) else 0


COLUMNS = ("gen", "test acc", "rarest classes acc", "other classes acc", "entropy nats", "agree gen0", "agree prev",
           "val acc")


def regime_rows(reg: dict) -> list[tuple[str, ...]]:
    return [(str(g["generation"]), f"{g['accuracy_mean']:.2%} ± {g['accuracy_std'] * 100:.2f}",
             f"{g['rare_accuracy_mean']:.2%} ± {g['rare_accuracy_std'] * 100:.2f}", f"{g['other_accuracy_mean']:.2%}",
             f"{g['entropy_mean']:.3f}", f"{g['agreement_gen0_mean']:.2%}", f"{g['agreement_prev_mean']:.2%}",
             f"{g['val_accuracy_mean']:.2%}") for g in reg["generations"]]


def class_columns(reg: dict, num_classes: int) -> tuple[str, ...]:
    return ("gen", *(f"{c}{'*' if c in reg['rare_classes'] else ''} ({n})"
                     for c, n in zip(range(num_classes), reg["labelled_per_class"])))


def class_rows(reg: dict) -> list[tuple[str, ...]]:
    return [(str(g["generation"]), *(f"{v:.1%}" for v in g["per_class_mean"])) for g in reg["generations"]]


def print_report(doc: dict, markdown: bool) -> None:
    m, st = doc["machine"], doc["setup"]
    n_cls = len(st["test_per_class"])
    for reg in doc["regimes"]:
        print()
        counts = reg["labelled_per_class"]
        title = (f"born-again, {reg['regime']} ({reg['how']}; {reg['labelled']} labels): mean ± std over seeds "
                 f"{st['seeds']}, test {st['test_samples']} samples; rarest classes {reg['rare_classes']} "
                 f"({min(counts)} labels each, others up to {max(counts)}); "
                 f"{m['cpu_model']}, torch {m['torch']}, {m['torch_threads']} thread")
        print_table(title, COLUMNS, regime_rows(reg), width=200)
        print_table(f"per-class test accuracy, mean over seeds (class (labelled samples); * = rarest; test samples "
                    f"per class {st['test_per_class']})", class_columns(reg, n_cls), class_rows(reg), width=200)
        print(f"{reg['regime']}: {reg['seconds']:.0f} s")
    meas = doc["measurement"]
    print(f"total {meas['total_seconds']:.0f} s; load average {meas['loadavg_before']} before, "
          f"{meas['loadavg_after']} after")
    print()
    for c in doc["checks"]:
        print(f"  {c['verdict']:<5} {c['check']}: {c['detail']}")
    print()
    for f in doc["findings"]:
        print(f"  - {f}")
    if markdown:
        for reg in doc["regimes"]:
            print(f"\n{reg['regime']}:")
            print_markdown(COLUMNS, regime_rows(reg))
            print_markdown(class_columns(reg, n_cls), class_rows(reg))
        print_markdown(("check", "verdict", "measured"), [(c["check"], c["verdict"], c["detail"]) for c in doc["checks"]])


if __name__ == "__main__":
    sys.exit(main())
