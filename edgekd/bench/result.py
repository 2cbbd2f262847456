"""BenchResult: one artifact measured on one device, named by the artifact's sha256."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekd.errors import BenchError, first_line
from edgekd.rundir import atomic_write, schema_problem

BENCH_SCHEMA = "edgekd.bench/1"


class BenchResult(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_: str = Field(BENCH_SCHEMA, alias="schema")
    artifact: dict[str, Any]  # name, sha256, format, precision, role, size_bytes, parameters, path, run
    device: dict[str, Any]  # name, kind, arch, emulated, info (system, python, runtime versions)
    # On an emulator the latency is the emulator's: never read it as the board's (the report marks it).
    emulated: bool = False
    harness: str = "runner"  # "runner" (edgekd's device-side runner) or "native" (a runtime's own binary)
    settings: dict[str, Any]
    runtime: dict[str, Any] = Field(default_factory=dict)
    latency_us: dict[str, Any]  # stats.summarize() of the timed calls of all rounds
    round_p50_us: list[float] = Field(default_factory=list)  # p50 of each round (fresh process): the spread
    # The input tensors as timed (name, shape, dtype; a native tool: as the model declares them). Empty in
    # results written before it was kept.
    inputs: list[dict[str, Any]] = Field(default_factory=list)
    load_ms: float | None = None
    first_inference_us: float | None = None
    memory_kb: dict[str, Any] = Field(default_factory=dict)
    device_accuracy: dict[str, Any] | None = None  # test accuracy of the artifact run ON the device
    # Device vs this host on the same test inputs, when their architectures differ (or the device is emulated):
    # host_arch, device_arch, host/device_runtime, samples, agreement, max_abs_error, passed (or error)
    cross_arch_parity: dict[str, Any] | None = None
    thermal: list[dict[str, Any]] = Field(default_factory=list)  # before each round, then {"after_run": …}
    # --sustained: latency per time window and last/first p50 (throttling), calls, seconds (harness.sustained_trend);
    # latency_us and latencies_ns are then of a uniform sample of the calls. Results written before: p50 per window,
    # and cut_short when max_runs ended the run early.
    sustained: dict[str, Any] | None = None
    # The device's bench lock per round, as its runner held it (runner.DeviceLock) or the device's shell for a native
    # tool (shell_lock): state "held" with waited_s (for another bench on the device; None where the device's
    # uptime could not be read) and waited_for, or "unavailable" with why. Empty: older results.
    device_lock: list[dict[str, Any]] = Field(default_factory=list)
    complete: bool = True  # False: the device failed before every round ran (kept for --resume)
    latencies_ns: list[int] = Field(default_factory=list)
    created_at: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    saved_path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _rounds_resolved(self) -> "BenchResult":
        """Speed-ups, intervals and the p50 shown are geometric means of the round p50s: a zero (a clock too
        coarse for one call) would make each of them fail far from here, so it is refused where it is made."""
        if any(p <= 0 for p in self.round_p50_us):
            raise BenchError(f"{self.artifact.get('name', 'an artifact')}: a round's median latency is "
                             f"{min(self.round_p50_us):g} µs",
                             why="the device's clock does not resolve one call of this model, so no speed-up or "
                                 "interval can be computed from its rounds",
                             fix="benchmark it on a device with a finer clock, or with a larger input (batch) so "
                                 "that one call takes measurable time")
        return self

    def save(self, path: Path) -> Path:
        atomic_write(path, json.dumps(self.model_dump(mode="json", by_alias=True)) + "\n")
        self.saved_path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "BenchResult":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            problem = schema_problem(data, BENCH_SCHEMA)
            if problem:
                raise BenchError(f"cannot read bench result {path}", why=problem,
                                 fix="read it with the edgekd that measured it (or a newer one: pip install -U "
                                     "edgekd), or measure again with this one (edgekd run --force bench)")
            result = cls.model_validate(data)
        except (OSError, json.JSONDecodeError, ValidationError) as exc:
            raise BenchError(f"cannot read bench result {path}", why=first_line(exc),
                             fix="rerun the benchmark (edgekd run --force bench)") from None
        result.saved_path = path
        return result
