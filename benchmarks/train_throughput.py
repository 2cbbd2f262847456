"""Training throughput: is edgekd's KD training step as fast as a hand-written PyTorch loop, and what does
the teacher cache buy?

    .venv/bin/python benchmarks/train_throughput.py                # 30 rounds: 6.4 min measured under load (2-vCPU VM)
    .venv/bin/python benchmarks/train_throughput.py --quick        # smoke run, < 1 min
    .venv/bin/python benchmarks/train_throughput.py --rounds 40 --markdown --check

Everything is the demo's: digits (data.seed 0, labels for 10% of the training split), the transfer set = the
whole training split (1257 samples), the MLP student (64-64-10, 4,810 parameters), batch size 64, AdamW
(lr 0.003, weight decay 1e-4) with the cosine schedule fit() uses, the `kd` loss (T = 4, alpha = 0.9:
edgekd.distill.losses.kd_loss).  The teacher is the demo's CNN (159,850 parameters), freshly initialised
(seed 0) and not trained: a forward pass costs the same whatever the weights, and this script times, it does
not learn.  torch runs with --threads intra-op threads (default 1).

Slots, each a block of steps timed as one (wall and this process's CPU time):

  hand               a hand-written loop: torch.randperm per pass, slice, kd_loss against precomputed teacher
                     logits indexed per batch, zero_grad, backward, AdamW step, cosine schedule step; model,
                     optimizer and schedule live across blocks (the cheapest a user would write)
  fit                edgekd.distill.trainer.fit(objective=DistillObjective("kd", ...)) for the block's steps,
                     val=None: what distill() runs (the standard strategy's objective), minus validation;
                     each block is one fit() call, so its setup (optimizer, schedule, tensors) is timed too
  fit+val            the same with val=(x_val, y_val): fit() evaluates the 270 validation samples once per
                     pass over the data (every 20 steps here), as every strategy does
  fit+val+progress   the same with the CLI's progress bars (edgekd.console.RichReporter on a terminal
                     console writing to /dev/null: one progress update per step plus rich's refresh thread)
  teacher live       fit() with an objective that runs the teacher forward (eval, no_grad) on every batch
                     and applies kd_loss: what a naive KD loop does without cached teacher outputs
  teacher cached     fit() with ResponseObjective(kd_loss, teacher_logits=...): edgekd's precomputed logits
                     indexed per batch (the same loop and loss as 'teacher live', only the teacher differs)
  scratch            fit() on the 126 labelled samples alone (the scratch baseline: CE), val=None
  scratch+val        the same with validation: a pass over 126 samples is 2 steps, so fit() validates every
                     2 steps (what train_scratch does)

Interleaved: every round runs one block of every slot in a fresh random order, so the VM's speed changes hit
all slots alike.  Ratios are per round (both blocks ran in the same round), median over rounds with a
bootstrap 95% CI; pooled totals are given too.  Samples/s counts the samples actually processed (the last
batch of a pass is 41 samples).

Also: the first (cold: predict_logits on the 1257 transfer samples + write .npy + sha256 + sidecar) and the
second (hit: sidecar read, sha256 check, memory-map) call of TeacherCache.get_or_compute, and the same
through edgekd.distill.api.teacher_logits_fn, which also hashes the teacher's weights into the cache key on
every call; --cache-reps fresh cache folders.

Checks (PASS/FAIL with the measured value; --check exits 1 on a FAIL):
  1. edgekd fit() / hand-written loop >= 0.9x samples/s (paired per round);
  2. teacher cached / teacher live >= 2x samples/s (paired per round).

Writes benchmarks/results/train_throughput.json (schema edgekd.benchmark.train_throughput/1) atomically;
--quick writes benchmarks/results/train_throughput.quick.json unless --output is given.
"""

from __future__ import annotations

import argparse
import gc
import os
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

SCHEMA = "edgekd.benchmark.train_throughput/1"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "train_throughput.json"
QUICK_OUTPUT = REPO / "benchmarks" / "results" / "train_throughput.quick.json"
GOAL_FIT = 0.9
GOAL_CACHE = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 30; --quick 4)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per block of the student-only slots (default 200 = 10 passes; --quick 60)")
    p.add_argument("--teacher-steps", type=int, default=None,
                   help="steps per block of the 'teacher live' slot (default 40; --quick 10)")
    p.add_argument("--cache-reps", type=int, default=None, help="cold/hit repetitions (default 5; --quick 2)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the block order and the bootstrap")
    p.add_argument("--quick", action="store_true", help="smoke run: few rounds and short blocks")
    p.add_argument("--output", type=Path, default=None, help=f"result JSON (default: {DEFAULT_OUTPUT})")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown (for README.md)")
    p.add_argument("--check", action="store_true", help="exit 1 when a check fails")
    args = p.parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (4 if q else 30)
    args.steps = args.steps or (60 if q else 200)
    args.teacher_steps = args.teacher_steps or (10 if q else 40)
    args.cache_reps = args.cache_reps or (2 if q else 5)
    args.output = args.output or (QUICK_OUTPUT if q else DEFAULT_OUTPUT)
    return args


# --------------------------------------------------------------------------- machine

def git_state(paths: tuple[str, ...] = ("edgekd/distill", "edgekd/progress.py", "edgekd/console.py")) -> dict:
    return interleave.git_state(REPO, paths)


def machine_info(threads: int) -> dict:
    return interleave.training_machine_info(threads)


# --------------------------------------------------------------------------- slots

class Slot:
    """A block of training steps: `run(steps) -> samples processed`, timed per block (wall and CPU)."""

    def __init__(self, name: str, steps: int, run, description: str) -> None:
        self.name, self.steps, self.run, self.description = name, steps, run, description
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.samples: list[int] = []

    def block(self) -> None:
        c0, w0 = time.process_time(), time.perf_counter()
        n = self.run(self.steps)
        self.wall.append(time.perf_counter() - w0)
        self.cpu.append(time.process_time() - c0)
        self.samples.append(n)

    @property
    def rates(self) -> np.ndarray:
        """Samples/s of each block."""
        return np.asarray(self.samples) / np.asarray(self.wall)

    def summary(self) -> dict:
        r = self.rates
        return {"name": self.name, "description": self.description, "steps_per_block": self.steps,
                "blocks": len(r), "samples_per_s_median": float(np.median(r)),
                "samples_per_s_p10": float(np.percentile(r, 10)), "samples_per_s_p90": float(np.percentile(r, 90)),
                "samples_per_s_pooled": float(np.sum(self.samples) / np.sum(self.wall)),
                "ms_per_step_median": float(np.median(np.asarray(self.wall) / self.steps) * 1e3),
                "on_cpu_share": float(np.sum(self.cpu) / np.sum(self.wall)),
                "wall_s": self.wall, "cpu_s": self.cpu, "samples": self.samples}


def paired(num: Slot, den: Slot, n_boot: int, seed: int) -> dict:
    """Per-round ratio of samples/s (num / den), median over rounds with a bootstrap 95% CI, and pooled."""
    r = num.rates / den.rates
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(r, size=(n_boot, r.size)), axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    pooled = (np.sum(num.samples) / np.sum(num.wall)) / (np.sum(den.samples) / np.sum(den.wall))
    return {"num": num.name, "den": den.name, "ratio": float(np.median(r)), "ci95": [float(lo), float(hi)],
            "pooled": float(pooled), "per_round": r.tolist()}


def build_slots(args, recipe, splits, x, target, teacher_logits, teacher):
    import torch

    from edgekd.console import RichReporter
    from edgekd.distill import api
    from edgekd.distill.losses import LOSSES, kd_loss
    from edgekd.distill.objectives import DistillObjective
    from edgekd.distill.trainer import Objective, ResponseObjective, batches_per_pass, fit
    from rich.console import Console

    t = recipe.distill.train
    loss = recipe.distill.loss
    params = {"temperature": loss.temperature, "alpha": loss.alpha}
    bs, lr, wd = t.batch_size, t.lr, t.weight_decay
    val = (splits.x_val, splits.y_val)
    lx, ly = splits.x_train[splits.labelled], splits.y_train[splits.labelled]
    n_x, n_l = len(x), len(lx)

    def samples(n: int, steps: int) -> int:  # what _batches yields: passes of batches_per_pass batches, the last
        per_pass = batches_per_pass(n, bs)  # one short (or one longer: a lone sample left over joins it)
        full, rest = divmod(steps, per_pass)
        return full * n + min(rest * bs, n)

    # -- hand-written loop: state lives across blocks
    hand_model = api.new_model(recipe, splits, "student", seed=1)
    hand_opt = torch.optim.AdamW(hand_model.parameters(), lr=lr, weight_decay=wd)
    hand_sched = torch.optim.lr_scheduler.CosineAnnealingLR(hand_opt, T_max=args.steps * (args.rounds + 1))
    xt, yt = torch.from_numpy(x), torch.from_numpy(target).long()
    tt = torch.from_numpy(np.ascontiguousarray(teacher_logits))

    def hand(steps: int) -> int:
        model, opt, sched = hand_model, hand_opt, hand_sched
        model.train()
        done = seen = 0
        while done < steps:
            perm = torch.randperm(n_x)
            for start in range(0, n_x, bs):
                if done == steps:
                    break
                idx = perm[start:start + bs]
                out = model(xt[idx])
                loss_v = kd_loss(out, tt[idx], yt[idx], **params)
                opt.zero_grad(set_to_none=True)
                loss_v.backward()
                opt.step()
                sched.step()
                done += 1
                seen += len(idx)
        return seen

    # -- edgekd fit() with the standard strategy's objective
    fit_model = api.new_model(recipe, splits, "student", seed=2)
    counter = {"seed": 100}

    def fit_block(model, objective, xs, ys, *, with_val: bool, reporter=None):
        def run(steps: int) -> int:
            counter["seed"] += 1
            fit(model, xs, ys, objective=objective, steps=steps, batch_size=bs, lr=lr, weight_decay=wd,
                seed=counter["seed"], val=val if with_val else None, reporter=reporter, description="block")
            return samples(len(xs), steps)
        return run

    distill_obj = DistillObjective("kd", params, teacher_logits)
    devnull = open(os.devnull, "w")
    rich = RichReporter(Console(file=devnull, force_terminal=True, width=120))
    rich.__enter__()  # progress started: its refresh thread runs, as under `edgekd run`

    class LiveTeacher(Objective):
        """A naive KD step: the teacher's forward pass on every batch."""

        def __call__(self, model, xb, tb, index):
            with torch.no_grad():
                t_logits = teacher(xb)
            return kd_loss(model(xb), t_logits, tb, **params)

    teacher.eval()
    live_model = api.new_model(recipe, splits, "student", seed=3)
    cached_model = api.new_model(recipe, splits, "student", seed=3)
    scratch_model = api.new_model(recipe, splits, "student", seed=4)
    ce = ResponseObjective(LOSSES["ce"])
    slots = [
        Slot("hand", args.steps, hand, "hand-written PyTorch loop, kd_loss on precomputed logits"),
        Slot("fit", args.steps, fit_block(fit_model, distill_obj, x, target, with_val=False),
             "edgekd fit(objective=DistillObjective('kd')), val=None"),
        Slot("fit+val", args.steps, fit_block(fit_model, distill_obj, x, target, with_val=True),
             "edgekd fit, validation once per pass (every 20 steps), as distill() runs it"),
        Slot("fit+val+progress", args.steps,
             fit_block(fit_model, distill_obj, x, target, with_val=True, reporter=rich),
             "edgekd fit with validation and the CLI's RichReporter progress bars"),
        Slot("teacher live", args.teacher_steps, fit_block(live_model, LiveTeacher(), x, target, with_val=False),
             "fit(), the teacher's forward pass on every batch (no cache)"),
        Slot("teacher cached", args.steps,
             fit_block(cached_model, ResponseObjective(kd_loss, teacher_logits, params), x, target, with_val=False),
             "fit(), ResponseObjective(kd_loss, teacher_logits): cached logits indexed per batch"),
        Slot("scratch", args.steps, fit_block(scratch_model, ce, lx, ly, with_val=False),
             "fit() on the 126 labelled samples (CE), val=None"),
        Slot("scratch+val", args.steps, fit_block(scratch_model, ce, lx, ly, with_val=True),
             "fit() on the 126 labelled samples (CE), validation every pass = every 2 steps (train_scratch)"),
    ]

    def close():
        rich.__exit__(None, None, None)
        devnull.close()

    return slots, close


def measure(slots: list[Slot], rounds: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    for s in slots:  # warm-up block, untimed
        s.run(min(s.steps, 20))
    start = time.perf_counter()
    for r in range(rounds):
        gc.collect()
        for k in rng.permutation(len(slots)):
            slots[k].block()
        if sys.stderr.isatty():
            print(f"\r  round {r + 1}/{rounds}", end="", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print("\r" + " " * 30 + "\r", end="", file=sys.stderr, flush=True)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- teacher cache, cold vs hit

def cache_timings(reps: int, recipe, splits, x, rows, teacher) -> dict:
    from edgekd.distill import api
    from edgekd.distill.teacher_cache import TeacherCache, cache_key
    from edgekd.distill.trainer import predict_logits
    from edgekd.progress import SilentReporter
    from edgekd.rundir import hash_obj

    out = {"direct": [], "api": [], "predict_logits_s": [], "weights_hash_s": []}
    for _ in range(reps):
        with tempfile.TemporaryDirectory(prefix="edgekd-cache-bench-") as root:
            t0 = time.perf_counter()
            weights = hash_obj({k: v.numpy().tobytes().hex() for k, v in teacher.state_dict().items()})
            out["weights_hash_s"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            reference = predict_logits(teacher, x)
            out["predict_logits_s"].append(time.perf_counter() - t0)
            key = cache_key(teacher=weights, data="bench", transform="identity")
            cache = TeacherCache(Path(root) / "direct")
            rec = {}
            for phase in ("cold", "hit"):
                t0 = time.perf_counter()
                entry, hit = cache.get_or_compute(key, lambda: predict_logits(teacher, x))
                dense = np.asarray(entry.dense())
                rec[f"{phase}_s"] = time.perf_counter() - t0
                rec[f"{phase}_was_hit"] = hit
                rec[f"{phase}_equal"] = bool(np.array_equal(dense, reference))
            out["direct"].append(rec)
            fn = api.teacher_logits_fn(recipe, splits, x, rows, Path(root) / "api", SilentReporter())
            rec = {}
            for phase in ("cold", "hit"):
                t0 = time.perf_counter()
                logits = fn(teacher, "teacher")
                rec[f"{phase}_s"] = time.perf_counter() - t0
                rec[f"{phase}_equal"] = bool(np.array_equal(logits, reference))
            out["api"].append(rec)
    for k in ("direct", "api"):
        cold = np.median([r["cold_s"] for r in out[k]])
        hit = np.median([r["hit_s"] for r in out[k]])
        out[f"{k}_median"] = {"cold_s": float(cold), "hit_s": float(hit), "cold_over_hit": float(cold / hit)}
    out["entry_bytes"] = int(len(x) * 10 * 4 + 128)
    return out


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from edgekd.distill import api
    from edgekd.distill.trainer import predict_logits
    from edgekd.recipe import load_recipe

    recipe = load_recipe("demo")
    splits = api.load_splits(recipe)
    x, target, rows = api.transfer_set(recipe, splits)
    teacher = api.new_model(recipe, splits, "teacher", seed=0).eval()
    teacher_logits = predict_logits(teacher, x)
    student_params = sum(p.numel() for p in api.new_model(recipe, splits, "student").parameters())
    teacher_params = sum(p.numel() for p in teacher.parameters())
    print(f"demo: transfer set {len(x)} samples ({int(splits.labelled.sum())} labelled), batch "
          f"{recipe.distill.train.batch_size}; student mlp {student_params:,} params, teacher cnn {teacher_params:,} "
          f"params (untrained); torch threads {args.threads}; {args.rounds} rounds", flush=True)

    load_before = loadavg()
    slots, close = build_slots(args, recipe, splits, x, target, teacher_logits, teacher)
    try:
        seconds = measure(slots, args.rounds, args.seed)
    finally:
        close()
    load_mid = loadavg()
    print(f"rounds done in {seconds:.0f} s; teacher cache cold/hit x{args.cache_reps} ...", flush=True)
    cache = cache_timings(args.cache_reps, recipe, splits, x, rows, teacher)
    load_after = loadavg()

    by = {s.name: s for s in slots}
    ratios = {
        "fit_vs_hand": paired(by["fit"], by["hand"], 2000, args.seed),
        "fit_val_vs_fit": paired(by["fit+val"], by["fit"], 2000, args.seed),
        "fit_val_progress_vs_fit_val": paired(by["fit+val+progress"], by["fit+val"], 2000, args.seed),
        "fit_val_progress_vs_hand": paired(by["fit+val+progress"], by["hand"], 2000, args.seed),
        "cached_vs_live": paired(by["teacher cached"], by["teacher live"], 2000, args.seed),
        "scratch_val_vs_scratch": paired(by["scratch+val"], by["scratch"], 2000, args.seed),
    }
    f, c = ratios["fit_vs_hand"], ratios["cached_vs_live"]
    checks = [
        {"check": f"edgekd fit() / hand-written loop >= {GOAL_FIT}x samples/s", "verdict":
         "PASS" if f["ratio"] >= GOAL_FIT else "FAIL",
         "detail": f"{f['ratio']:.3f}x paired per round (95% CI {f['ci95'][0]:.3f}-{f['ci95'][1]:.3f}), pooled "
                   f"{f['pooled']:.3f}x; fit {by['fit'].summary()['samples_per_s_median']:,.0f} vs hand "
                   f"{by['hand'].summary()['samples_per_s_median']:,.0f} samples/s (block medians)"},
        {"check": f"teacher cached / teacher live >= {GOAL_CACHE}x samples/s", "verdict":
         "PASS" if c["ratio"] >= GOAL_CACHE else "FAIL",
         "detail": f"{c['ratio']:.2f}x paired per round (95% CI {c['ci95'][0]:.2f}-{c['ci95'][1]:.2f}), pooled "
                   f"{c['pooled']:.2f}x; cached {by['teacher cached'].summary()['samples_per_s_median']:,.0f} vs live "
                   f"{by['teacher live'].summary()['samples_per_s_median']:,.0f} samples/s"},
    ]
    for lo in (f, c):
        lo_ok = lo["ci95"][0] >= (GOAL_FIT if lo is f else GOAL_CACHE)
        hi_ok = lo["ci95"][1] >= (GOAL_FIT if lo is f else GOAL_CACHE)
        if lo_ok != hi_ok:
            checks[0 if lo is f else 1]["detail"] += " (the 95% CI straddles the threshold: marginal)"
    notes = []
    on_cpu = float(sum(sum(s.cpu) for s in slots) / sum(sum(s.wall) for s in slots))
    if on_cpu < 0.97:
        notes.append(f"this process was on the CPU {on_cpu:.1%} of the timed wall time: other processes competed "
                     "for the cores (interleaving spreads that over all slots)")
    bad = [f"{k}: {r}" for k in ("direct", "api") for r in cache[k]
           if not (r["cold_equal"] and r["hit_equal"]) or r.get("cold_was_hit") or r.get("hit_was_hit") is False]
    if bad:
        notes.append("teacher cache returned different logits or wrong hit flags: " + "; ".join(bad))
    if args.quick:
        notes.insert(0, "--quick: few rounds and short blocks; the ratios are rough")

    doc = {
        "schema": SCHEMA,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_state(),
        "machine": machine_info(args.threads),
        "setup": {"recipe": "demo", "transfer_samples": len(x), "labelled_samples": int(splits.labelled.sum()),
                  "val_samples": len(splits.y_val), "batch_size": recipe.distill.train.batch_size,
                  "optimizer": f"AdamW(lr={recipe.distill.train.lr}, weight_decay={recipe.distill.train.weight_decay})"
                               " + CosineAnnealingLR",
                  "loss": f"kd_loss(temperature={recipe.distill.loss.temperature}, alpha={recipe.distill.loss.alpha})",
                  "student_parameters": student_params, "teacher_parameters": teacher_params,
                  "teacher": "demo cnn, freshly initialised (seed 0), eval mode, no_grad"},
        "measurement": {"rounds": args.rounds, "steps_per_block": args.steps, "teacher_live_steps_per_block":
                        args.teacher_steps, "seconds": seconds, "seed": args.seed, "on_cpu_share": on_cpu,
                        "method": "one process; per round one block of every slot in random order (gc.collect() "
                                  "before each round); one untimed warm-up block per slot; samples/s per block",
                        "loadavg_before": load_before, "loadavg_after_rounds": load_mid, "loadavg_after": load_after},
        "slots": [s.summary() for s in slots],
        "ratios": ratios,
        "teacher_cache": cache,
        "checks": checks,
        "notes": notes,
    }
    doc["measurement"]["total_seconds"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, doc)
    os.chmod(args.output, 0o644)
    print_report(doc, args.markdown)
    print(f"\nwrote {args.output}")
    return 1 if args.check and any(c["verdict"] == "FAIL" for c in checks) else 0


COLUMNS = ("slot", "steps/block", "samples/s (median)", "p10-p90", "ms/step", "on-CPU", "what")
RATIO_COLUMNS = ("ratio (samples/s)", "paired median", "95% CI", "pooled")
RATIO_LABELS = {"fit_vs_hand": "fit / hand", "fit_val_vs_fit": "fit+val / fit",
                "fit_val_progress_vs_fit_val": "fit+val+progress / fit+val",
                "fit_val_progress_vs_hand": "fit+val+progress / hand", "cached_vs_live": "teacher cached / live",
                "scratch_val_vs_scratch": "scratch+val / scratch"}


def print_report(doc: dict, markdown: bool) -> None:
    m, st = doc["machine"], doc["setup"]
    rows = [(s["name"], str(s["steps_per_block"]), f"{s['samples_per_s_median']:,.0f}",
             f"{s['samples_per_s_p10']:,.0f}-{s['samples_per_s_p90']:,.0f}", f"{s['ms_per_step_median']:.2f}",
             f"{s['on_cpu_share']:.0%}", s["description"]) for s in doc["slots"]]
    title = (f"training throughput: demo MLP student ({st['student_parameters']:,} params), batch {st['batch_size']}, "
             f"{st['optimizer']}, {st['loss']}; {m['cpu_model']} ({m['logical_cores']} logical cores), torch "
             f"{m['torch']}, {m['torch_threads']} thread")
    print()
    print_table(title, COLUMNS, rows, left=1, width=200)
    ratio_rows = [(RATIO_LABELS[k], f"{r['ratio']:.3f}", f"{r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}", f"{r['pooled']:.3f}")
                  for k, r in doc["ratios"].items()]
    print_table("ratios, per round (both blocks ran in the same round)", RATIO_COLUMNS, ratio_rows)
    tc = doc["teacher_cache"]
    cache_rows = [("TeacherCache.get_or_compute + dense()", f"{tc['direct_median']['cold_s'] * 1e3:.1f}",
                   f"{tc['direct_median']['hit_s'] * 1e3:.2f}", f"{tc['direct_median']['cold_over_hit']:.1f}"),
                  ("api.teacher_logits_fn (key: hash of the weights)", f"{tc['api_median']['cold_s'] * 1e3:.1f}",
                   f"{tc['api_median']['hit_s'] * 1e3:.2f}", f"{tc['api_median']['cold_over_hit']:.1f}")]
    print_table(f"teacher logits on the {st['transfer_samples']} transfer samples, median of "
                f"{len(tc['direct'])} fresh caches; predict_logits alone "
                f"{np.median(tc['predict_logits_s']) * 1e3:.1f} ms, hashing the weights "
                f"{np.median(tc['weights_hash_s']) * 1e3:.1f} ms",
                ("path", "cold ms", "hit ms", "cold/hit"), cache_rows)
    meas = doc["measurement"]
    print(f"{meas['rounds']} rounds in {meas['seconds']:.0f} s ({meas['total_seconds']:.0f} s in all); on CPU "
          f"{meas['on_cpu_share']:.1%} of the timed wall time; load average {meas['loadavg_before']} before, "
          f"{meas['loadavg_after']} after")
    print()
    for c in doc["checks"]:
        print(f"  {c['verdict']:<5} {c['check']}: {c['detail']}")
    print()
    for note in doc["notes"]:
        print(f"  - {note}")
    if markdown:
        print_markdown(COLUMNS, rows)
        print_markdown(RATIO_COLUMNS, ratio_rows)
        print_markdown(("path", "cold ms", "hit ms", "cold/hit"), cache_rows)
        print_markdown(("check", "verdict", "measured"), [(c["check"], c["verdict"], c["detail"]) for c in doc["checks"]])


if __name__ == "__main__":
    sys.exit(main())
