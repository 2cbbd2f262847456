"""Interleaved timing, shared by the benchmark scripts (demo_speedup.py, export_matrix.py, harness_overhead.py).

Why interleave: this VM flips between a fast and a ~1.3-2x slower state, sometimes within a second, sometimes
after several.  Timing A for a while and then B would compare two machines, not two models.  So every candidate
is a Slot, and measure() runs rounds: each round runs one short block of calls of every slot, in a fresh random
order, so every slot sees the same mix of machine states.  paired_ratio() then compares two slots round by
round (both blocks ran in the same round), and machine_noise() reports how far the machine's speed moved.

A Slot times `fn(arg)`, the call a model adapter of edgekd.bench.runner returns from invoker() (OrtModel:
sess.run_with_iobinding, binding; LiteRTModel: Interpreter.invoke, interpreter).  A script subclasses it to
load the model and set its input once, outside every timed call, before calling Slot.__init__.

Also here: loadavg(), the host fields of each result's "machine" section, and the report tables (Rich, or
plain text without it, and Markdown).  The scripts import this file by its folder (they run as
`.venv/bin/python benchmarks/X.py`; benchmarks/ is not a package).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path

import numpy as np

INT8_FLAGS = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")  # CPU flags that speed up INT8 kernels


# --------------------------------------------------------------------------- timing

class Slot:
    """One timed call `fn(arg)` of a model whose input is already set, and the latencies of its blocks."""

    def __init__(self, model):
        self.model = model  # edgekd.bench.runner OrtModel or LiteRTModel, 1 thread
        self.fn, self.arg = model.invoker()  # sess.run_with_iobinding, binding | Interpreter.invoke, interpreter
        self.blocks: list[list[int]] = []  # per round: latencies in ns
        self.calls = 1
        self.wall_ns = self.cpu_ns = 0  # whole blocks: wall time and this process's CPU time

    def warm(self, min_calls: int = 50, min_seconds: float = 0.1) -> None:
        """Warm up and measure the per-call time that plan() sizes the block with."""
        fn, arg, pc = self.fn, self.arg, time.perf_counter_ns
        times = []
        start = pc()
        while len(times) < min_calls or pc() - start < min_seconds * 1e9:
            t0 = pc()
            fn(arg)
            times.append(pc() - t0)
        self.per_call_ns = float(np.median(times))

    def plan(self, block: int, max_block_ms: float) -> None:
        """Block length: --block calls, but no longer than --max-block-ms."""
        self.calls = max(3, min(block, int(max_block_ms * 1e6 / self.per_call_ns)))

    def run_block(self) -> None:
        fn, arg, pc, cpu = self.fn, self.arg, time.perf_counter_ns, time.process_time_ns
        c0, w0 = cpu(), pc()
        fn(arg)  # untimed: the previous block ran another model, so caches are cold for this one
        lat = [0] * self.calls
        for i in range(self.calls):
            t0 = pc()
            fn(arg)
            lat[i] = pc() - t0
        self.wall_ns += pc() - w0
        self.cpu_ns += cpu() - c0  # < wall when the OS ran something else on our core mid-block
        self.blocks.append(lat)

    @property
    def latencies(self) -> np.ndarray:
        return np.fromiter((v for b in self.blocks for v in b), dtype=np.int64)


def measure(slots: list[Slot], rounds: int, seed: int) -> float:
    """Interleave: every round runs one block of every slot in a fresh random order.  Returns seconds."""
    rng = np.random.default_rng(seed)
    gc.collect()
    gc.disable()  # a collection inside a block would be timed as model latency
    start = time.perf_counter()
    try:
        for r in range(rounds):
            for k in rng.permutation(len(slots)):
                slots[k].run_block()
            if sys.stderr.isatty() and (r + 1) % max(1, rounds // 20) == 0:
                print(f"\r  round {r + 1}/{rounds}", end="", file=sys.stderr, flush=True)
    finally:
        gc.enable()
        if sys.stderr.isatty():
            print("\r" + " " * 30 + "\r", end="", file=sys.stderr, flush=True)
    return time.perf_counter() - start


def paired_ratio(num: Slot, den: Slot, seed: int, n_boot: int = 2000) -> dict:
    """Median over rounds of (block median of num / block median of den): both blocks ran in the same round,
    so a machine-state change between rounds cancels.  A cross-check of compare(), which pools all calls."""
    r = np.array([np.median(a) / np.median(b) for a, b in zip(num.blocks, den.blocks)])
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(r, size=(n_boot, r.size)), axis=1)
    return {"ratio": float(np.median(r)), "ci95": [float(v) for v in np.percentile(boot, [2.5, 97.5])]}


def machine_noise(probe: Slot, name: str, slots: list[Slot]) -> dict:
    """How much the machine's speed moved during the run, seen by `probe` (a floor: the shortest call), and the
    share of the timed wall time this process was on the CPU.  `name` names the probe in the result."""
    med = np.array([np.median(b) for b in probe.blocks]) / 1e3
    p = np.percentile(med, [0, 10, 50, 90, 100])
    return {"probe": f"{name}, median of each round's block (us)",
            "min": p[0], "p10": p[1], "p50": p[2], "p90": p[3], "max": p[4], "p90_over_p10": p[3] / p[1],
            "on_cpu_share": sum(s.cpu_ns for s in slots) / sum(s.wall_ns for s in slots)}


# --------------------------------------------------------------------------- machine

def loadavg() -> str | None:
    """1/5/15-minute load averages: > ~1 on this 2-core VM means something else was running."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def host_fields(system: dict) -> dict:
    """The first fields of each result's "machine" section, from edgekd.bench.runner.system_info()."""
    return {"cpu_model": system["cpu_model"], "logical_cores": os.cpu_count(), "machine": system["machine"],
            "kernel": system["release"], "governor": system["governor"], "affinity": system["affinity"]}


def int8_flags() -> dict[str, bool]:
    """Which of INT8_FLAGS /proc/cpuinfo lists (flags on x86, features on Arm); all False when it cannot be read.
    The parsing lives in edgekd.compress.isa (cpu_flags), which also recommends an INT8 format for the CPU."""
    from edgekd.compress.isa import cpu_flags

    try:
        flags = cpu_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        flags = set()
    return {f: f in flags for f in INT8_FLAGS}


# --------------------------------------------------------------------------- report tables

def print_table(title: str | None, columns: tuple[str, ...], rows: list[tuple[str, ...]], *, left: int = 1,
                width: int = 160) -> None:
    """A Rich table (its first `left` columns left-aligned, `width` wide when stdout is not a terminal), or plain
    ' | '-separated lines when rich is not installed."""
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for i, c in enumerate(columns):
            table.add_column(c, justify="left" if i < left else "right")
        for r in rows:
            table.add_row(*r)
        Console(width=None if sys.stdout.isatty() else width).print(table)
    except ImportError:
        if title:
            print(title)
        print(" | ".join(columns))
        for r in rows:
            print(" | ".join(r))


def print_markdown(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    print("\n| " + " | ".join(columns) + " |\n|" + "|".join("---" for _ in columns) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


# --------------------------------------------------------------------------- provenance (training benchmarks)

def git_state(repo: Path, paths: tuple[str, ...]) -> dict:
    """The commit measured, and uncommitted changes under `paths` (the code under test)."""
    import subprocess

    def git(*argv: str) -> str | None:
        proc = subprocess.run(["git", *argv], cwd=repo, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    dirty = git("status", "--porcelain", "--", *paths)
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_under_test": dirty.splitlines() if dirty else []}


def training_machine_info(threads: int) -> dict:
    """host_fields plus the torch, numpy and Python versions and torch's thread count."""
    import platform

    import torch

    from edgekd.bench.runner import system_info

    return {**host_fields(system_info()), "torch": torch.__version__, "torch_threads": threads,
            "numpy": np.__version__, "python": platform.python_version()}
