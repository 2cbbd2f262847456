"""Does distillation beat training from scratch? Every distillation family against the same student trained on
labels alone, same step budget, over several seeds.

    .venv/bin/python benchmarks/kd_uplift.py                 # 11 families x 5 seeds: 12.3 min measured (load ~4, 2 vCPUs)
    .venv/bin/python benchmarks/kd_uplift.py --quick         # smoke run: 2 seeds, few epochs, < 2 min
    .venv/bin/python benchmarks/kd_uplift.py --families demo,kd_dkd --seeds 10 --markdown --check

Regime (the recipes' own): scikit-learn digits, split with data.seed 0 (fixed for every run, so every seed
sees the same data); students see the labels of 10% of the training split (label_fraction 0.1, 126 of
1257 samples); the transfer set is the whole training split, unlabelled except for those 126.

Families, one built-in recipe each (edgekd/recipes/NAME.yaml): response KD (demo), kd_hint, kd_attention,
kd_relation, kd_dkd, ensemble, progressive, self_born_again, self_deep_supervision, mutual, and black-box
(the blackbox recipe's strategy, its source replaced by a .npy of the response-KD teacher's logits on the
training split, written to a temporary folder: the same teacher seen only through its outputs).

What varies with the seed: the student only.  The teacher (CNN, ~160k parameters) is trained once, with
seed 0, and passed to edgekd.distill.api.distill(teacher=...); the ensemble's two extra teachers are trained
once with seed 0 (+ their seed_offset) too and handed to the ensemble strategy's job.  Each seed s sets
recipe.seed = s, which seeds the student's initialisation and its batch order (and, for born-again and
mutual, the further students' initialisations: s + g, s + k; the default seeds are 10 apart so no two runs
share a student seed).  The scratch baseline (edgekd.distill.api.train_scratch: the student's architecture,
labels only, the same budget(recipe, splits) steps, batch size, lr schedule and seed) is trained once per
student architecture and seed: mlp 64-64-10 for most families, tiny_cnn for kd_attention, progressive and
self_deep_supervision.  Teacher logits go through edgekd's teacher cache (a temporary cache root), so
they are computed once.

Per family: mean +- std test accuracy of the distilled student and of scratch (270 test samples: one sample
is 0.37 pt), the mean gain, Welch's t-test p-value (scipy.stats.ttest_ind(equal_var=False), or the same
formula in numpy without scipy), a bootstrap 95% CI of the difference of means, per-seed wins, and whether
the gain exceeds the noise: gain > 2 x pooled std (sqrt((s_kd^2 + s_scratch^2) / 2)) and p < 0.05.  Also
the optimizer steps actually taken (born-again trains generations + 1 students, mutual 2 peers in one
loop), the number of student models trained, whether the teacher runs live at every step (feature
terms), and the wall time.

Check (printed PASS/FAIL with the measured value; --check exits 1 on a FAIL): response KD (demo) beats
scratch by more than 2 pooled std.  Every other family's row is a finding, reported whatever it shows.

Writes benchmarks/results/kd_uplift.json (schema edgekd.benchmark.kd_uplift/1) atomically; --quick writes
benchmarks/results/kd_uplift.quick.json unless --output is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))  # interleave.py: machine info and tables shared by the scripts

from edgekd.rundir import atomic_write_json  # noqa: E402

import interleave  # noqa: E402
from interleave import loadavg, print_markdown, print_table  # noqa: E402

SCHEMA = "edgekd.benchmark.kd_uplift/1"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "kd_uplift.json"
QUICK_OUTPUT = REPO / "benchmarks" / "results" / "kd_uplift.quick.json"

# (recipe name, label); the recipe is the family's built-in example.
FAMILIES = (
    ("demo", "response KD"),
    ("kd_hint", "hint (FitNets)"),
    ("kd_attention", "attention transfer"),
    ("kd_relation", "relation (RKD + SP)"),
    ("kd_dkd", "decoupled KD"),
    ("ensemble", "ensemble (3 teachers)"),
    ("progressive", "progressive (layer-wise)"),
    ("self_born_again", "self: born-again"),
    ("self_deep_supervision", "self: deep supervision"),
    ("mutual", "mutual (2 peers)"),
    ("blackbox", "black-box (teacher logits .npy)"),
)
GOAL_FAMILY = "demo"
NOISE_STD = 2.0  # a gain "exceeds the noise" when > NOISE_STD x pooled std, and p < ALPHA
ALPHA = 0.05


# --------------------------------------------------------------------------- arguments

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=None,
                   help="student seeds per family (default 5; --quick 2); seeds are 0, 10, 20, ...")
    p.add_argument("--families", default=",".join(r for r, _ in FAMILIES),
                   help="comma-separated recipe names (default: all 11 families)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 seeds, teacher 2 epochs, students 3 epochs (numbers are not meaningful)")
    p.add_argument("--teacher-epochs", type=int, default=None, help="override the recipes' teacher epochs")
    p.add_argument("--student-epochs", type=int, default=None,
                   help="override distill.train.epochs (the budget of every student and of scratch)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on this shared 2-vCPU VM, 2 threads ran a teacher "
                        "step ~10x slower under contention)")
    p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples for the CI (default 10000)")
    p.add_argument("--output", type=Path, default=None, help=f"result JSON (default: {DEFAULT_OUTPUT})")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown (for README.md)")
    p.add_argument("--check", action="store_true", help="exit 1 when the check fails")
    args = p.parse_args(argv)
    known = {r for r, _ in FAMILIES}
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in args.families if f not in known]
    if unknown or not args.families:
        p.error(f"--families: unknown {unknown}; known: {', '.join(known)}")
    if args.quick:
        args.seeds = args.seeds or 2
        args.teacher_epochs = args.teacher_epochs or 2
        args.student_epochs = args.student_epochs or 3
    args.seeds = args.seeds or 5
    if args.seeds < 2:
        p.error("--seeds needs at least 2 (a std and a t-test need two values per group)")
    args.output = args.output or (QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT)
    return args


# --------------------------------------------------------------------------- statistics

def welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, str]:
    """(t, two-sided p, implementation) of Welch's unequal-variance t-test of mean(a) - mean(b)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(a.mean() - b.mean())
    if va + vb == 0:  # both groups constant: no spread to test against
        return (math.inf if diff else 0.0), (0.0 if diff else 1.0), "degenerate (both groups constant)"
    try:
        from scipy import stats as sps

        res = sps.ttest_ind(a, b, equal_var=False)
        return float(res.statistic), float(res.pvalue), "scipy.stats.ttest_ind(equal_var=False)"
    except ImportError:
        pass
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    # two-sided p from the t distribution: regularized incomplete beta I_{df/(df+t^2)}(df/2, 1/2)
    return t, _betainc(df / 2, 0.5, df / (df + t * t)), "numpy (Welch-Satterthwaite, continued-fraction beta)"


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (Numerical Recipes' continued fraction)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1 - x)
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
            c = 1.0 + num / c
            c = c if abs(c) > 1e-300 else 1e-300
            h *= d * c
    return math.exp(lbeta) * h / a


def compare(kd: list[float], scratch: list[float], n_boot: int, seed: int) -> dict:
    a, b = np.asarray(kd, dtype=float), np.asarray(scratch, dtype=float)
    gain = float(a.mean() - b.mean())
    pooled = float(math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2))
    t, p, how = welch(a, b)
    rng = np.random.default_rng(seed)
    boot = (rng.choice(a, size=(n_boot, len(a))).mean(axis=1) - rng.choice(b, size=(n_boot, len(b))).mean(axis=1))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "kd_mean": float(a.mean()), "kd_std": float(a.std(ddof=1)),
        "scratch_mean": float(b.mean()), "scratch_std": float(b.std(ddof=1)),
        "gain": gain, "pooled_std": pooled, "gain_over_pooled_std": gain / pooled if pooled else math.inf * np.sign(gain),
        "welch_t": t, "welch_p": p, "welch_impl": how, "bootstrap_ci95_gain": [float(lo), float(hi)],
        "wins": int((a > b).sum()), "ties": int((a == b).sum()), "losses": int((a < b).sum()),
        "exceeds_noise": bool(gain > NOISE_STD * pooled and p < ALPHA),
    }


# --------------------------------------------------------------------------- machine

def git_state(paths: tuple[str, ...] = ("edgekd/distill", "edgekd/recipes", "edgekd/models", "edgekd/data")) -> dict:
    return interleave.git_state(REPO, paths)


def machine_info(threads: int) -> dict:
    return interleave.training_machine_info(threads)


# --------------------------------------------------------------------------- training

class NoteReporter:
    """edgekd's Reporter protocol: silent progress, notes kept (the teacher cache says hit or computed)."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def task(self, description: str, total: int | None):
        from edgekd.progress import SilentReporter

        return SilentReporter().task(description, total)

    def note(self, message: str) -> None:
        self.notes.append(message)


def with_epochs(recipe, teacher_epochs: int | None, student_epochs: int | None):
    """The recipe with the teacher's (and ensemble members') and the students' epochs overridden."""
    if teacher_epochs:
        recipe = recipe.model_copy(update={"teacher": recipe.teacher.model_copy(update={
            "train": recipe.teacher.train.model_copy(update={"epochs": teacher_epochs})})})
    if student_epochs:
        recipe = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={
            "train": recipe.distill.train.model_copy(update={"epochs": student_epochs})})})
    return recipe


def arch_key(recipe) -> str:
    """The scratch baseline's identity: student architecture and training settings."""
    return json.dumps({"model": recipe.student.model.model_dump(mode="json"),
                       "train": recipe.distill.train.model_dump(mode="json"),
                       "transfer_set": recipe.distill.transfer_set}, sort_keys=True)


def arch_label(recipe) -> str:
    m = recipe.student.model
    return f"{m.family}({', '.join(f'{k}={v}' for k, v in m.params.items())})"


def n_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from edgekd.distill import api
    from edgekd.distill.strategies import STRATEGIES
    from edgekd.distill.trainer import accuracy, predict_logits
    from edgekd.recipe import load_recipe

    seeds = [10 * i for i in range(args.seeds)]
    recipes = {name: with_epochs(load_recipe(name), args.teacher_epochs, args.student_epochs)
               for name in dict.fromkeys([GOAL_FAMILY, *args.families])}
    base = recipes[GOAL_FAMILY]
    for name, r in recipes.items():  # one regime: same data and split for every family
        if r.data != base.data:
            raise SystemExit(f"recipe {name}: data {r.data} differs from demo's {base.data}; this benchmark "
                             "compares families in one regime")
    splits = api.load_splits(base)
    x_test, y_test = splits.x_test, splits.y_test
    labelled = int(splits.labelled.sum())
    work = Path(tempfile.mkdtemp(prefix="edgekd-kd-uplift-"))
    cache_root = work / "teacher-cache"
    reporter = NoteReporter()
    notes: list[str] = []
    load_before = loadavg()
    print(f"regime: {splits.name}, train {len(splits.x_train)} (labelled {labelled} = "
          f"{labelled / len(splits.x_train):.0%}), val {len(splits.y_val)}, test {len(y_test)}; transfer set: "
          f"{base.distill.transfer_set}; seeds {seeds}; torch threads {args.threads}; work dir {work}", flush=True)

    # Teachers: once per teacher configuration (all recipes here share the demo's), seed 0.
    teachers: dict[str, dict] = {}
    for name, r in recipes.items():
        key = json.dumps(r.teacher.model_dump(mode="json"), sort_keys=True)
        if key not in teachers:
            t0 = time.perf_counter()
            model = api.train_teacher(r, splits)  # recipe.seed is 0 here: the teacher's seed
            teachers[key] = {"model": model, "recipe": name, "config": r.teacher.model_dump(mode="json"),
                             "seconds": time.perf_counter() - t0, "parameters": n_params(model),
                             "test_accuracy": accuracy(predict_logits(model, x_test), y_test)}
            print(f"teacher ({name}'s, {teachers[key]['parameters']:,} params): test accuracy "
                  f"{teachers[key]['test_accuracy']:.2%}, trained in {teachers[key]['seconds']:.1f} s", flush=True)
        recipes[name] = r

    def teacher_of(r):
        return teachers[json.dumps(r.teacher.model_dump(mode="json"), sort_keys=True)]["model"]

    # Ensemble members: trained once, seed 0 + seed_offset, handed to every seed's job.
    members, member_info = None, []
    if "ensemble" in recipes and "ensemble" in args.families:
        t0 = time.perf_counter()
        members = api.ensemble_members(recipes["ensemble"], splits, reporter)
        secs = time.perf_counter() - t0
        for m, cfg in zip(members, recipes["ensemble"].distill.ensemble.members):
            member_info.append({"model": cfg.model.model_dump(mode="json"), "seed_offset": cfg.seed_offset,
                                "parameters": n_params(m),
                                "test_accuracy": accuracy(predict_logits(m, x_test), y_test)})
        accs = ", ".join(f"{m['test_accuracy']:.2%}" for m in member_info)
        print(f"ensemble members: test accuracy {accs}; trained in {secs:.1f} s", flush=True)
        member_info.append({"seconds_all": secs})

    # Black-box source: the response-KD teacher's logits on the whole training split, as a plain .npy.
    if "blackbox" in recipes:
        source = work / "teacher_logits_train.npy"
        np.save(source, predict_logits(teacher_of(recipes["demo"]), splits.x_train), allow_pickle=False)
        r = recipes["blackbox"]
        recipes["blackbox"] = r.model_copy(update={"distill": r.distill.model_copy(update={
            "blackbox": r.distill.blackbox.model_copy(update={"source": str(source)})})})

    # Scratch baselines: one per student architecture (and budget) and seed.
    scratch_recipes: dict[str, str] = {}
    for name in args.families:
        scratch_recipes.setdefault(arch_key(recipes[name]), name)
    scratch: dict[str, dict] = {k: {"recipe": n, "student": arch_label(recipes[n]), "accuracy": [], "seconds": [],
                                    "steps": None, "parameters": None} for k, n in scratch_recipes.items()}
    fam: dict[str, dict] = {name: {"accuracy": [], "seconds": [], "cpu_seconds": [], "steps": [], "details": []}
                            for name in args.families}
    cpu_start, wall_start = time.process_time(), time.perf_counter()

    for i, s in enumerate(seeds):
        for key, name in scratch_recipes.items():
            r = recipes[name].model_copy(update={"seed": s})
            t0 = time.perf_counter()
            model, result = api.train_scratch(r, splits)
            sc = scratch[key]
            sc["seconds"].append(time.perf_counter() - t0)
            sc["accuracy"].append(accuracy(predict_logits(model, x_test), y_test))
            sc["steps"], sc["parameters"] = result.steps, n_params(model)
        for name in args.families:
            r = recipes[name].model_copy(update={"seed": s})
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "ensemble":  # distill() would train the extra teachers again for every seed
                teacher = teacher_of(r)
                job = api.build_job(r, splits, lambda teacher=teacher: teacher, reporter=reporter,
                                    cache_root=cache_root)
                job = dataclasses.replace(job, extra_teachers=lambda: members)
                outcome = STRATEGIES[r.distill.strategy](job)
            else:
                outcome = api.distill(r, splits, teacher=teacher_of(r), reporter=reporter, cache_root=cache_root)
            f = fam[name]
            f["seconds"].append(time.perf_counter() - t0)
            f["cpu_seconds"].append(time.process_time() - c0)
            f["accuracy"].append(accuracy(predict_logits(outcome.student, x_test), y_test))
            f["steps"].append(outcome.steps)
            f["details"].append(outcome.details)
            f["parameters"] = n_params(outcome.student)
            f["generation_offset"] = outcome.generation_offset
        row = "  ".join(f"{n} {fam[n]['accuracy'][-1]:.3f}" for n in args.families)
        base_row = "  ".join(f"scratch[{scratch[k]['student']}] {scratch[k]['accuracy'][-1]:.3f}" for k in scratch)
        print(f"seed {s} ({i + 1}/{len(seeds)}, {time.perf_counter() - started:.0f} s): {base_row}  {row}", flush=True)
    load_after = loadavg()
    on_cpu = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)

    rows = []
    for j, name in enumerate(args.families):
        r, f = recipes[name], fam[name]
        sc = scratch[arch_key(r)]
        stats = compare(f["accuracy"], sc["accuracy"], args.bootstrap, seed=j)
        cfg = r.distill
        models = (cfg.self_distill.generations + 1 if cfg.strategy == "self" and cfg.self_distill.mode == "born_again"
                  else cfg.mutual.peers if cfg.strategy == "mutual" else 1)
        steps = int(np.max(f["steps"]))
        student_steps = steps * (cfg.mutual.peers if cfg.strategy == "mutual" else 1)
        live = bool(cfg.features) or cfg.strategy == "progressive"
        extra = {"ensemble": "+ 2 extra teachers (trained once, not per seed)",
                 "mutual": "no teacher", "self_born_again": "no teacher",
                 "self_deep_supervision": "no teacher; aux heads", "blackbox": "teacher outputs from a .npy"}.get(name, "")
        rows.append({
            "family": name, "label": dict(FAMILIES)[name], "strategy": cfg.strategy, "loss": cfg.loss.name,
            "student": arch_label(r), "student_parameters": f["parameters"], "scratch_of": sc["student"],
            "seeds": seeds, "accuracy": f["accuracy"], "scratch_accuracy": sc["accuracy"], **stats,
            "budget_steps": api.budget(r, splits), "steps": steps, "steps_per_seed": f["steps"],
            "models_trained": models, "student_steps": student_steps, "teacher_live_every_step": live,
            "teacher_note": extra, "generation_offset": f.get("generation_offset"),
            "wall_seconds": float(np.sum(f["seconds"])), "wall_seconds_per_seed": float(np.mean(f["seconds"])),
            "cpu_seconds": float(np.sum(f["cpu_seconds"])), "paired_gain_per_seed":
                (np.asarray(f["accuracy"]) - np.asarray(sc["accuracy"])).tolist(),
            "details_first_seed": f["details"][0],
        })
        expected = api.budget(r, splits) * (models if cfg.strategy == "self" else 1)
        if steps != expected:
            notes.append(f"{name}: took {steps} optimizer steps per seed, expected {expected} "
                         f"(budget(recipe, splits) = {api.budget(r, splits)} per trained student, {models} trained)")

    # sanity: black-box with the teacher's own logits is response KD with the same teacher, seed for seed.
    if "blackbox" in fam and "demo" in fam:
        d = np.abs(np.asarray(fam["blackbox"]["accuracy"]) - np.asarray(fam["demo"]["accuracy"])).max()
        notes.append(f"black-box vs response KD (same teacher, logits from a .npy instead of the teacher cache): "
                     f"max per-seed |accuracy difference| = {d:.4f}" + (" (identical, as expected)" if d == 0 else
                                                                         " (expected 0: same logits, init, order)"))
    hits = sum("cache hit" in n for n in reporter.notes)
    computed = sum("computed and cached" in n for n in reporter.notes)
    notes.append(f"teacher cache: {computed} computations, {hits} hits over the run")

    goal = next((x for x in rows if x["family"] == GOAL_FAMILY), None)
    checks = []
    if goal is not None:
        ok = goal["gain"] > NOISE_STD * goal["pooled_std"]
        checks.append({"check": "response KD (demo) beats scratch by more than 2 pooled std",
                       "verdict": "PASS" if ok else "FAIL",
                       "detail": f"gain {goal['gain'] * 100:+.2f} pt, pooled std {goal['pooled_std'] * 100:.2f} pt "
                                 f"({goal['gain_over_pooled_std']:.1f} std), Welch p = {goal['welch_p']:.2g}, "
                                 f"bootstrap 95% CI {goal['bootstrap_ci95_gain'][0] * 100:+.2f} to "
                                 f"{goal['bootstrap_ci95_gain'][1] * 100:+.2f} pt, wins {goal['wins']}/{len(seeds)}"})
    if args.quick:
        notes.insert(0, "--quick: a smoke run with tiny budgets; the accuracies say nothing about the families")

    teacher_rows = [{k: v for k, v in t.items() if k != "model"} for t in teachers.values()]
    doc = {
        "schema": SCHEMA,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_state(),
        "machine": machine_info(args.threads),
        "regime": {
            "data": splits.name, "data_seed": base.data.seed, "split": splits.summary(),
            "label_fraction": base.data.label_fraction, "labelled_samples": labelled,
            "transfer_set": f"{base.distill.transfer_set}: the whole training split ({len(splits.x_train)} samples), "
                            f"unlabelled except the {labelled} labelled ones",
            "test_samples": len(y_test),
            "varies_with_seed": "the student only (init, batch order; born-again and mutual: seed + g / + k for the "
                                "further students); teacher and ensemble members trained once with seed 0",
        },
        "settings": {"seeds": seeds, "quick": args.quick, "teacher_epochs_override": args.teacher_epochs,
                     "student_epochs_override": args.student_epochs, "bootstrap": args.bootstrap,
                     "noise_rule": f"gain > {NOISE_STD} x pooled std (sqrt((s_kd^2 + s_scratch^2)/2), ddof 1) "
                                   f"and Welch p < {ALPHA}"},
        "teachers": teacher_rows,
        "ensemble_members": member_info,
        "scratch": list(scratch.values()),
        "families": rows,
        "checks": checks,
        "notes": notes,
        "measurement": {"loadavg_before": load_before, "loadavg_after": load_after, "on_cpu_share": on_cpu,
                        "total_seconds": time.perf_counter() - started},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, doc)
    os.chmod(args.output, 0o644)
    print_report(doc, args.markdown)
    print(f"\nwrote {args.output}")
    shutil.rmtree(work, ignore_errors=True)  # the teacher cache and the black-box .npy
    return 1 if args.check and any(c["verdict"] == "FAIL" for c in checks) else 0


# --------------------------------------------------------------------------- output

COLUMNS = ("family", "recipe", "student", "steps (models)", "KD acc", "scratch acc", "gain pt", "95% CI pt",
           "Welch p", "gain/std", "wins", "> noise", "wall s", "CPU s")


def table_rows(rows: list[dict]) -> list[tuple[str, ...]]:
    out = []
    for x in rows:
        lo, hi = x["bootstrap_ci95_gain"]
        out.append((
            x["label"], x["family"], x["student"].split("(")[0],
            f"{x['steps']} ({x['models_trained']})" + (" T" if x["teacher_live_every_step"] else ""),
            f"{x['kd_mean']:.2%} ± {x['kd_std'] * 100:.2f}", f"{x['scratch_mean']:.2%} ± {x['scratch_std'] * 100:.2f}",
            f"{x['gain'] * 100:+.2f}", f"{lo * 100:+.2f} to {hi * 100:+.2f}", f"{x['welch_p']:.2g}",
            f"{x['gain_over_pooled_std']:+.1f}", f"{x['wins']}/{len(x['seeds'])}", "yes" if x["exceeds_noise"] else "no",
            f"{x['wall_seconds']:.0f}", f"{x['cpu_seconds']:.0f}",
        ))
    return out


def print_report(doc: dict, markdown: bool) -> None:
    m, reg = doc["machine"], doc["regime"]
    title = (f"KD vs scratch: {reg['data']} (data seed {reg['data_seed']}), labels for {reg['labelled_samples']} of "
             f"{reg['split']['train']} training samples ({reg['label_fraction']:.0%}), transfer set = the whole "
             f"training split; test {reg['test_samples']} samples; seeds {doc['settings']['seeds']}; "
             f"{m['cpu_model']} ({m['logical_cores']} logical cores), torch {m['torch']}, {m['torch_threads']} thread")
    rows = table_rows(doc["families"])
    print()
    print_table(title, COLUMNS, rows, left=3, width=230)
    for t in doc["teachers"]:
        print(f"teacher ({t['recipe']}'s, {t['parameters']:,} params, seed 0): test {t['test_accuracy']:.2%}, "
              f"trained in {t['seconds']:.0f} s")
    for sc in doc["scratch"]:
        print(f"scratch {sc['student']} ({sc['parameters']:,} params, {sc['steps']} steps): per seed "
              f"{', '.join(f'{a:.3f}' for a in sc['accuracy'])}; {np.sum(sc['seconds']):.0f} s")
    print("steps = optimizer steps per seed (models trained); T = the teacher runs live at every step (feature terms); "
          "gain/std = gain / pooled std; > noise = gain > 2 pooled std and Welch p < 0.05")
    meas = doc["measurement"]
    print(f"total {meas['total_seconds']:.0f} s (wall and CPU s per family: all seeds); this process was on the CPU "
          f"{meas['on_cpu_share']:.0%} of the wall time of the seed loop; load average {meas['loadavg_before']} "
          f"before, {meas['loadavg_after']} after")
    print()
    for c in doc["checks"]:
        print(f"  {c['verdict']:<5} {c['check']}: {c['detail']}")
    print()
    for note in doc["notes"]:
        print(f"  - {note}")
    if markdown:
        print_markdown(COLUMNS, rows)
        print_markdown(("check", "verdict", "measured"), [(c["check"], c["verdict"], c["detail"]) for c in doc["checks"]])


if __name__ == "__main__":
    sys.exit(main())
