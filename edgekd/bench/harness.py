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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edgekd.bench import stats
from edgekd.bench.result import BenchResult
from edgekd.errors import ArtifactError, BenchError, RegistryError
from edgekd.export.artifact import RECORD_NAME, Artifact
from edgekd.progress import Reporter, SilentReporter
from edgekd.rundir import sha256_file

logger = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("runner.py")
DEVICES = ("host",)
RUNTIME_OF_FORMAT = {"onnx": "onnxruntime"}


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


def resolve_artifact(item: Artifact | str | Path) -> Artifact:
    """An Artifact record from a record, an artifact folder, or a bare model file (described on the fly)."""
    if isinstance(item, Artifact):
        item.verify_file()
        return item
    path = Path(item)
    if not path.exists():
        raise ArtifactError(f"artifact not found: {path}", fix="give an artifact folder or a .onnx file")
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
    if path.suffix != ".onnx":
        raise ArtifactError(f"cannot benchmark {path}: unknown model format '{path.suffix}'",
                            why="supported formats: .onnx", fix="export the model to ONNX first")
    from edgekd.export.onnx import describe_io, load_onnx_checked, op_histogram

    graph = load_onnx_checked(path)
    inputs, outputs = describe_io(graph)
    return Artifact(name=path.stem, role="model", format="onnx", precision="unknown", file=path.name,
                    size_bytes=path.stat().st_size, sha256=sha256_file(path), inputs=inputs, outputs=outputs,
                    op_histogram=op_histogram(graph), directory=path.parent)


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
    resolved = [resolve_artifact(a) for a in artifacts]
    reporter = reporter or SilentReporter()
    task = reporter.task(f"bench on {device}", len(resolved))
    results = []
    for artifact in resolved:
        runtime = RUNTIME_OF_FORMAT.get(artifact.format)
        if runtime is None:
            raise BenchError(f"no runtime for format '{artifact.format}'", fix="benchmark ONNX artifacts")
        with tempfile.TemporaryDirectory(prefix="edgekd-bench-") as tmp:
            feeds = ({artifact.inputs[0]["name"]: str(Path(inputs).resolve())} if inputs is not None
                     else _synthetic_inputs(artifact, settings.batch_size, Path(tmp)))
            spec = {"artifact": str(artifact.path.resolve()), "runtime": runtime, "threads": settings.threads,
                    "inputs": feeds, "warmup_runs": settings.warmup_runs,
                    "warmup_min_seconds": settings.warmup_min_seconds, "min_runs": settings.min_runs,
                    "min_seconds": settings.min_seconds, "max_seconds": settings.max_seconds,
                    "memory_runs": settings.memory_runs}
            raw = run_runner(spec, Path(tmp), timeout=settings.max_seconds * 3 + 120)
        result = to_result(raw, artifact, device, settings)
        if results_dir is not None:
            result.save(Path(results_dir) / f"bench-{artifact.name}.json")
        results.append(result)
        task.advance(1)
    task.close()
    return results


def to_result(raw: dict[str, Any], artifact: Artifact, device: str, settings: BenchSettings) -> BenchResult:
    latencies = raw["latencies_ns"]
    return BenchResult(
        artifact={"name": artifact.name, "sha256": artifact.sha256, "format": artifact.format,
                  "precision": artifact.precision, "role": artifact.role, "size_bytes": artifact.size_bytes,
                  "parameters": artifact.parameters,
                  "path": str(artifact.path)},
        device={"name": device, "kind": "local", "info": {"system": raw.get("system"), "python": raw.get("python"),
                                                          "numpy": raw.get("numpy")}},
        harness="runner",
        settings=asdict(settings),
        runtime=raw.get("runtime", {}),
        latency_us=stats.summarize(latencies),
        load_ms=raw.get("load_ms"),
        first_inference_us=raw.get("first_inference_us"),
        memory_kb=raw.get("memory_kb") or {},
        latencies_ns=latencies,
    )
