"""Host side of benchmarking: run the device-side runner once per artifact, in a fresh process, and
turn its raw timings into a BenchResult (percentiles, interval of the median, stability verdict).

Only the `host` device exists so far: the runner runs with this Python in a subprocess.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edgekd.bench import stats
from edgekd.bench.result import BenchResult
from edgekd.errors import ArtifactError, BenchError, EdgeKDError, RegistryError
from edgekd.export.artifact import RECORD_NAME, Artifact
from edgekd.progress import Reporter, SilentReporter
from edgekd.rundir import sha256_file

logger = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("runner.py")
DEVICES = ("host",)


@dataclass(frozen=True)
class BenchSettings:
    threads: int = 1
    batch_size: int = 1
    warmup_runs: int = 50
    warmup_min_seconds: float = 0.2
    min_runs: int = 300
    min_seconds: float = 1.0
    max_seconds: float = 10.0
    memory_runs: int = 10
    # Each artifact is timed in `rounds` fresh processes, interleaved with the other artifacts (A B C A B C …),
    # and the rounds are pooled: a machine that drifts between fast and slow states (this VM does, every few
    # seconds) then affects every candidate alike instead of whichever happened to run during a slow spell.
    rounds: int = 3


def resolve_artifact(item: Artifact | str | Path) -> Artifact:
    """An Artifact record from a record, an artifact folder, or a bare model file (described on the fly)."""
    if isinstance(item, Artifact):
        item.verify_file()
        return item
    path = Path(item)
    if not path.exists():
        raise ArtifactError(f"artifact not found: {path}", fix="give an artifact folder or an .onnx / .tflite file")
    record = path / RECORD_NAME if path.is_dir() else path.parent / RECORD_NAME
    if record.is_file() and (path.is_dir() or Artifact.load(record).file == path.name):
        artifact = Artifact.load(record)
        artifact.verify_file()
        return artifact
    if path.is_dir():
        raise ArtifactError(f"{path} is not an artifact folder", why=f"it has no {RECORD_NAME}",
                            fix="give a folder under <run>/artifacts/ or a model file")
    return _describe_bare_file(path)


def _describe_bare_file(path: Path) -> Artifact:
    """An ad-hoc record for a model file that edgekd did not export (no parity, no lineage)."""
    from edgekd.export.formats import backend_for_file

    try:
        backend = backend_for_file(path)
    except EdgeKDError as exc:
        raise ArtifactError(f"cannot benchmark {path}: {exc.what}", why=exc.why, fix=exc.fix) from None
    info = backend.inspect(path)
    return Artifact(name=path.stem, role="model", format=backend.name, precision="unknown", file=path.name,
                    size_bytes=path.stat().st_size, sha256=sha256_file(path), inputs=info.inputs,
                    outputs=info.outputs, op_histogram=info.op_histogram, layout_ops=info.layout_ops,
                    weight_bits=info.weight_bits, directory=path.parent)


def _synthetic_inputs(artifact: Artifact, batch_size: int, folder: Path) -> dict[str, str]:
    """Inputs for a bare model file: deterministic uniform data of the declared shapes."""
    rng = np.random.default_rng(0)
    out = {}
    for spec in artifact.inputs:
        shape = [d if isinstance(d, int) and d > 0 else batch_size for d in spec["shape"]]
        path = folder / f"{spec['name']}.npy"
        np.save(path, rng.random(shape).astype(spec.get("dtype", "float32")))
        out[spec["name"]] = str(path)
    return out


def run_runner(spec: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run the runner in a fresh process with `spec`; return its JSON or raise BenchError."""
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    try:
        proc = subprocess.run([sys.executable, str(RUNNER), str(spec_path)], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the benchmark of {spec['artifact']} did not finish within {timeout:.0f} s",
                         fix="lower bench.max_seconds or check that the model is not stuck") from None
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise BenchError("the runner crashed", why=(proc.stderr.strip().splitlines() or ["no output"])[-1],
                         fix="run the runner by hand with the spec to see the full error") from None
    if not out.get("ok"):
        err = out.get("error", {})
        raise BenchError(err.get("what", "the runner failed"), why=err.get("why"), fix=err.get("fix"))
    return out


def bench(artifacts: Iterable[Artifact | str | Path], device: str = "host", *, settings: BenchSettings | None = None,
          inputs: Path | None = None, results_dir: Path | None = None,
          reporter: Reporter | None = None) -> list[BenchResult]:
    """Benchmark each artifact on `device`; save results under results_dir when given."""
    if device not in DEVICES:
        raise RegistryError(f"unknown device '{device}'", why=f"known devices: {', '.join(DEVICES)}",
                            fix="use --device host")
    settings = settings or BenchSettings()
    if settings.rounds < 1:
        raise BenchError(f"rounds must be ≥ 1, got {settings.rounds}", fix="use --rounds 1 or more")
    resolved = [resolve_artifact(a) for a in artifacts]
    reporter = reporter or SilentReporter()
    task = reporter.task(f"bench on {device}", len(resolved) * settings.rounds)
    raws: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(resolved))}
    per_round = replace(settings, min_runs=-(-settings.min_runs // settings.rounds),
                        min_seconds=settings.min_seconds / settings.rounds,
                        max_seconds=settings.max_seconds / settings.rounds)
    with tempfile.TemporaryDirectory(prefix="edgekd-bench-") as tmp:
        for _ in range(settings.rounds):
            for i, artifact in enumerate(resolved):
                raws[i].append(_run_once(artifact, per_round, inputs, Path(tmp) / str(i)))
                task.advance(1)
    task.close()
    results = []
    for i, artifact in enumerate(resolved):
        result = to_result(raws[i], artifact, device, settings)
        if results_dir is not None:
            result.save(Path(results_dir) / f"bench-{artifact.name}.json")
        results.append(result)
    return results


def _run_once(artifact: Artifact, settings: BenchSettings, inputs: Path | None, workdir: Path) -> dict[str, Any]:
    """One fresh runner process timing one artifact."""
    workdir.mkdir(parents=True, exist_ok=True)
    feeds = ({artifact.inputs[0]["name"]: str(Path(inputs).resolve())} if inputs is not None
             else _synthetic_inputs(artifact, settings.batch_size, workdir))
    from edgekd.export.formats import FORMATS

    spec = {"artifact": str(artifact.path.resolve()), "runtime": FORMATS[artifact.format]().runtime,
            "threads": settings.threads, "inputs": feeds, "warmup_runs": settings.warmup_runs,
            "warmup_min_seconds": settings.warmup_min_seconds, "min_runs": settings.min_runs,
            "min_seconds": settings.min_seconds, "max_seconds": settings.max_seconds,
            "memory_runs": settings.memory_runs}
    return run_runner(spec, workdir, timeout=settings.max_seconds * 3 + 120)


def to_result(raws: list[dict[str, Any]], artifact: Artifact, device: str, settings: BenchSettings) -> BenchResult:
    """Pool the rounds of one artifact: all timed calls together, per-round medians kept to show the spread."""
    first = raws[0]
    latencies = [ns for raw in raws for ns in raw["latencies_ns"]]
    peaks = [raw.get("memory_kb", {}) for raw in raws]
    memory = dict(peaks[0])
    if all(p.get("vmhwm") for p in peaks):
        memory["vmhwm"] = max(p["vmhwm"] for p in peaks)
    return BenchResult(
        artifact={"name": artifact.name, "sha256": artifact.sha256, "format": artifact.format,
                  "precision": artifact.precision, "role": artifact.role, "size_bytes": artifact.size_bytes,
                  "parameters": artifact.parameters, "path": str(artifact.path)},
        device={"name": device, "kind": "local", "info": {"system": first.get("system"), "python": first.get("python"),
                                                          "numpy": first.get("numpy")}},
        harness="runner",
        settings=asdict(settings),
        runtime=first.get("runtime", {}),
        latency_us=stats.summarize(latencies),
        round_p50_us=[stats.summarize(raw["latencies_ns"])["p50"] for raw in raws],
        load_ms=float(np.median([raw["load_ms"] for raw in raws])),
        first_inference_us=float(np.median([raw["first_inference_us"] for raw in raws])),
        memory_kb=memory,
        latencies_ns=latencies,
    )
