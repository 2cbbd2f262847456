"""Host side of benchmarking: run the device-side runner once per artifact, in a fresh process, and
turn its raw timings into a BenchResult (percentiles, interval of the median, stability verdict).

On a device of another architecture (or an emulated one) the artifact's outputs on the test split are also
computed here, by the same runner, and compared with the device's: cross-architecture parity.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import re
import shlex
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Collection, Iterable, Mapping, Union

import numpy as np

from edgekd.bench import stats
from edgekd.bench.device_lock import device_lock
from edgekd.bench.native import TOOL_FOR_FORMAT, check_cpus, cpu_mask, no_taskset
from edgekd.bench.native_predict import device_outputs, unscorable
from edgekd.bench.native_system import native_system
from edgekd.bench.result import BenchResult
from edgekd.bench.runner import NOTICE as RUNNER_NOTICE
from edgekd.devices.base import (RUNNER_SOURCE, TETHER_S, Device, DeviceTimeout, RuntimeMissing, bench_workdir,
                                 cool_down, python_argv, runner_name, temperature)
from edgekd.errors import ArtifactError, BenchError, EdgeKDError, first_line, printable
from edgekd.export.artifact import RECORD_NAME, Artifact
from edgekd.names import PATH_COMPONENT
from edgekd.progress import Reporter, SilentReporter, usable_reporter
from edgekd.rundir import (atomic_write_json, exclusive_folder, process_temp_dir, read_json,
                           remove_orphan_temp_files, sha256_file)

logger = logging.getLogger(__name__)

# A runner call may take its max_seconds three times over (warmup, timed loop, slack) plus this much for
# importing the runtime, loading the model and the predict pass on a slow board; past that it is stopped.
RUNNER_GRACE_S = 300.0
# Seconds a runner waits for another bench's runner that holds the device (runner.DeviceLock) before it fails
# with "device busy"; unset: as long as one of our own runners may take (runner_budget), that is, about one of
# the other bench's runners when it times like this one. 0 fails at once (CI that should not queue).
DEVICE_WAIT_ENV = "EDGEKD_DEVICE_WAIT"
RESUME_ADVICE = "rerun with --resume to measure only what is missing"  # `edgekd bench`'s next step
RESUME_HINT = f"after fixing, {RESUME_ADVICE}"
# Cross-architecture parity passes when the device and this host agree on the top-1 class this often.
CROSS_ARCH_MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class BenchSettings:
    threads: int | None = None  # None: the device profile's `threads:` (1 when it has none)
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
    rounds: int = 5
    cooldown_seconds: float = 0.0  # pause between rounds (sessions), e.g. to let a phone cool down
    max_runs: int = 200_000
    sustained: bool = False  # one long round, reported as latency over time
    # Sizes of named dynamic dimensions beyond the batch ({"length": 128}): what a model file without a record
    # cannot say (each would be timed at the batch size), or another length for a text artifact's example.
    dims: dict[str, int] = field(default_factory=dict)
    # Device accuracy on the first N test samples (None: all of them; 0: none). A phone without Python runs
    # its benchmark tool once per sample, which a large test set makes slow.
    eval_samples: int | None = None


# What each BenchSettings field must be: (integer or number, the least value, whether the least is allowed).
_SETTING_RULES: dict[str, tuple[type, float, bool]] = {
    "threads": (int, 1, True), "batch_size": (int, 1, True), "warmup_runs": (int, 0, True),
    "warmup_min_seconds": (float, 0, True), "min_runs": (int, 1, True), "min_seconds": (float, 0, True),
    "max_seconds": (float, 0, False), "memory_runs": (int, 0, True), "rounds": (int, 1, True),
    "cooldown_seconds": (float, 0, True), "max_runs": (int, 1, True),
}


def check_settings(settings: Any) -> BenchSettings:
    """Refuse settings a bench cannot honour before any device is touched: a wrong type crashed deep inside
    (rounds=1.5, batch_size='1'), batch_size=0 benched empty inputs, a negative cooldown was ignored, and the
    runner's own check named a field of its 'spec', which a caller of edgekd.bench never wrote."""
    if not isinstance(settings, BenchSettings):
        raise BenchError(f"settings must be a BenchSettings, got {type(settings).__name__} {repr(settings)[:60]}",
                         fix="from edgekd.bench.harness import BenchSettings; settings=BenchSettings(rounds=3, ...)")
    for name, (kind, least, inclusive) in _SETTING_RULES.items():
        value = getattr(settings, name)
        if name == "threads" and value is None:  # the device profile's threads
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and (isinstance(value, int) if kind is int else math.isfinite(value)) and \
            (value >= least if inclusive else value > least)
        if not ok:
            rule = f"{'an integer' if kind is int else 'a number'} {'≥' if inclusive else '>'} {least}"
            raise BenchError(f"BenchSettings.{name} must be {rule}, got {value!r}",
                             fix=f"set {name}= in BenchSettings to {rule}" +
                                 (", or to None for the device profile's threads:" if name == "threads" else ""))
    if settings.min_seconds > settings.max_seconds:  # the runner refused it only on the device, after the pushes
        raise BenchError(f"BenchSettings.min_seconds ({settings.min_seconds:g}) exceeds max_seconds "
                         f"({settings.max_seconds:g})", fix="raise max_seconds= or lower min_seconds= in BenchSettings")
    if not isinstance(settings.sustained, bool):
        raise BenchError(f"BenchSettings.sustained must be True or False, got {settings.sustained!r}",
                         fix="use sustained_settings(minutes) for a sustained bench")
    count = settings.eval_samples
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise BenchError(f"BenchSettings.eval_samples must be an integer ≥ 0 or None, got {count!r}",
                         fix="set eval_samples= in BenchSettings to the number of test samples to score on the "
                             "device (0: none; None: all)")
    dims = settings.dims
    if not isinstance(dims, dict) or not all(isinstance(k, str) and k and isinstance(v, int) and
                                             not isinstance(v, bool) and v >= 1 for k, v in dims.items()):
        raise BenchError(f"BenchSettings.dims must be a mapping of dimension names to sizes ≥ 1, got {dims!r}",
                         fix="set dims= in BenchSettings like {'length': 128} (edgekd bench --dim length=128)")
    return settings


def _check_data_files(inputs: Any, eval_data: Any) -> None:
    """The .npy files a bench was given exist: a wrong path raised FileNotFoundError from hashing it, after the
    device was opened, and eval_data given as one path (not a pair) read its letters as paths."""
    if eval_data is not None and (isinstance(eval_data, (str, os.PathLike)) or not isinstance(eval_data, (tuple, list))
                                  or len(eval_data) != 2):
        raise BenchError(f"eval_data must be a pair of .npy files (test inputs, labels), got {repr(eval_data)[:80]}",
                         fix="give eval_data=(Path('test_x.npy'), Path('test_y.npy'))")
    if isinstance(inputs, Mapping):
        if not inputs or not all(isinstance(name, str) and name for name in inputs):
            raise BenchError(f"inputs must map input names to .npy files, got {repr(inputs)[:80]}",
                             fix="give inputs={'input_ids': Path('ids.npy'), ...}, or one .npy file for the first "
                                 "input")
        named = [(f"inputs['{name}']", given) for name, given in inputs.items()]
    else:
        named = [("inputs", inputs)] if inputs is not None else []
    named += [("eval_data inputs", eval_data[0]), ("eval_data labels", eval_data[1])] if eval_data is not None else []
    shapes: dict[str, tuple[int, ...]] = {}
    for what, given in named:
        if not isinstance(given, (str, os.PathLike)):
            raise BenchError(f"the {what} must be a .npy file's path, got {type(given).__name__} {repr(given)[:60]}",
                             fix="give the path of a .npy file saved with numpy.save")
        if not Path(given).is_file():
            problem = "is a folder" if Path(given).is_dir() else "does not exist"
            raise BenchError(f"the {what} file {given} {problem}",
                             why="a bench feeds the model from a .npy file",
                             fix="give the path of a .npy file saved with numpy.save")
        shapes[what] = _npy_shape(Path(given), what)
    rows = {what: shape[0] if shape else 0 for what, shape in shapes.items()}  # a 0-d array holds no rows
    if eval_data is not None and rows["eval_data inputs"] != rows["eval_data labels"]:
        raise BenchError(f"eval_data holds {rows['eval_data inputs']} test inputs but "
                         f"{rows['eval_data labels']} labels",
                         why="each test input needs its label, in the same order",
                         fix="give the test inputs and the labels of the same samples")
    if eval_data is not None:
        _check_labels(Path(eval_data[1]))


def _check_labels(path: Path) -> None:
    """Class indices: text labels or negative ones scored every sample wrong ("device acc 0.00%"), exit 0."""
    labels = np.load(path, mmap_mode="r", allow_pickle=False)
    if labels.dtype.kind not in "iu" or labels.ndim != 1 or (labels.size and int(labels.min()) < 0):
        got = (f"{labels.dtype} values" if labels.dtype.kind not in "iu" else f"shape {labels.shape}"
               if labels.ndim != 1 else f"the label {int(labels.min())}")
        raise BenchError(f"the eval_data labels file {path} holds no class indices ({got})",
                         why="the device's outputs are scored by their top class against these labels",
                         fix="save one integer class index ≥ 0 per test input: numpy.save(path, "
                             "labels.astype(numpy.int64))")


def _npy_shape(path: Path, what: str) -> tuple[int, ...]:
    """The shape in a .npy file's header (the data is not read); any other file is refused by name here: the
    runner said only that it 'contains pickled (object) data'."""
    try:
        with path.open("rb") as f:
            np.lib.format.read_magic(f)  # np.load alone calls any other file 'pickled (object) data'
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError) as exc:
        raise BenchError(f"the {what} file {path} is not a .npy file", why=first_line(exc),
                         fix="save the array with numpy.save") from None
    return tuple(shape)


ARTIFACT_KINDS = "artifact folders, artifact.json files, .onnx / .tflite files or Artifact records"


def artifact_list(artifacts: Any) -> list[Artifact | str | Path]:
    """`artifacts` as a list; one path given alone is refused, since a string iterated is its letters ('/')."""
    if isinstance(artifacts, (str, os.PathLike, Artifact)):
        shown = artifacts.name if isinstance(artifacts, Artifact) else str(artifacts)
        listed = "[artifact]" if isinstance(artifacts, Artifact) else f"[{shown!r}]"
        raise ArtifactError(f"artifacts must be a list, got one {type(artifacts).__name__}: {shown}",
                            why=f"a bench takes a list of {ARTIFACT_KINDS}", fix=f"put it in a list: {listed}")
    try:
        return list(artifacts)
    except TypeError:
        raise ArtifactError(f"artifacts must be a list, got {type(artifacts).__name__} {repr(artifacts)[:60]}",
                            why=f"a bench takes a list of {ARTIFACT_KINDS}",
                            fix="give a list, e.g. edgekd.bench(run.artifacts) or "
                                "edgekd.bench(['export/demo/artifacts/student-onnx-fp32'])") from None


def resolve_artifact(item: Artifact | str | Path) -> Artifact:
    """An Artifact record from a record, an artifact folder, or a bare model file (described on the fly)."""
    if isinstance(item, Artifact):
        return _usable(item)
    if not isinstance(item, (str, os.PathLike)):  # Path() would raise a bare TypeError
        raise ArtifactError(f"cannot benchmark {type(item).__name__} {repr(item)[:60]}",
                            why=f"each artifact is one of: {ARTIFACT_KINDS}",
                            fix="give the path of an artifact folder (<run>/artifacts/NAME) or of a model file")
    path = Path(item)
    if not path.exists():
        raise ArtifactError(f"artifact not found: {path}", why="no such file or folder",
                            fix="give an artifact folder or an .onnx / .tflite file")
    record = path / RECORD_NAME if path.is_dir() else path.parent / RECORD_NAME
    if record.is_file() and (path.is_dir() or path.name == RECORD_NAME or Artifact.load(record).file == path.name):
        return _usable(Artifact.load(record))
    if path.is_dir():
        raise _not_an_artifact_folder(path)
    return _describe_bare_file(path)


def _usable(artifact: Artifact) -> Artifact:
    """A record whose file is there and whose inputs are listed: a bench feeds the inputs the record names, so
    a record without them failed on the device with 'input names do not match the model (missing x)', or
    raised IndexError when the inputs were given."""
    artifact.verify_file()
    if not artifact.inputs:
        record = artifact.path.parent / RECORD_NAME
        raise ArtifactError(f"the record of {artifact.name} lists no model inputs ({record})",
                            why="a bench feeds the model the inputs its record lists; edgekd lists every input "
                                "when it exports",
                            fix=f"re-export the artifact, or benchmark the model file alone ({artifact.path}), which "
                                "edgekd describes on the fly")
    return artifact


def _not_an_artifact_folder(path: Path) -> ArtifactError:
    """A folder without a record: name the artifact folders it holds (a run keeps them in artifacts/), if any."""
    for holder in (path, path / "artifacts"):
        found = sorted(record.parent.name for record in holder.glob(f"*/{RECORD_NAME}"))
        if found:
            names = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            return ArtifactError(f"{path} is not an artifact folder",
                                 why=f"it has no {RECORD_NAME}; {holder} holds {len(found)} artifact folders: {names}",
                                 fix=f"give the artifact folders themselves: {holder / '*'} names them all")
    return ArtifactError(f"{path} is not an artifact folder", why=f"it has no {RECORD_NAME}",
                         fix="give a folder under <run>/artifacts/ or a model file")


BARE_FILE_ROLE = "model"  # the role of a model file edgekd did not export (no artifact.json)


def _describe_bare_file(path: Path) -> Artifact:
    """An ad-hoc record for a model file that edgekd did not export (no parity, no lineage)."""
    from edgekd.export.formats import backend_for_file

    try:
        backend = backend_for_file(path)
    except EdgeKDError as exc:
        raise ArtifactError(f"cannot benchmark {path}: {exc.what}", why=exc.why, fix=exc.fix) from None
    info = backend.inspect(path)
    name = path.stem if re.match(PATH_COMPONENT, path.stem) else "model"  # a stem ".." (of "...onnx") is no name
    external = []
    if backend.name == "onnx":
        from edgekd.export.onnx import external_data_files

        external = external_data_files(path)
    artifact = Artifact(name=name, role=BARE_FILE_ROLE, format=backend.name, precision="unknown", file=path.name,
                        size_bytes=sum((path.parent / f).stat().st_size for f in [path.name, *external]),
                        sha256="", inputs=info.inputs, outputs=info.outputs,
                        op_histogram=info.op_histogram, layout_ops=info.layout_ops, weight_bits=info.weight_bits,
                        external_data=external, directory=path.parent)
    artifact.sha256 = artifact.model_digest()
    return artifact


def _text_example(artifact: Artifact, input_name: str, length: int | None = None) -> np.ndarray | None:
    """A text model's recorded example sentence ids (artifact.json's text_input) for its ids input, else None;
    cut or padded (with its pad id, on the right) to `length` when given."""
    record = artifact.text_input or {}
    if input_name != record.get("input") or not isinstance(record.get("example"), dict):
        return None
    ids = record["example"].get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ArtifactError(f"the record of {artifact.name} is damaged: text_input.example.ids is not a list of "
                            "token ids", fix="re-export the artifact (edgekd run RECIPE --force export)")
    if length is not None:
        ids = (ids + [int(record.get("pad_id") or 0)] * length)[:length]
    return np.asarray(ids, dtype=np.int64)


InputFiles = Union[str, os.PathLike, Mapping[str, Union[str, os.PathLike]]]  # bench(inputs=...)


def _given_feeds(artifact: Artifact, inputs: InputFiles | None) -> dict[str, Path]:
    """The .npy file of each input `inputs` feeds: one file feeds the first input, a mapping the inputs it
    names (the others are made up, as for a bare model)."""
    if inputs is None:
        return {}
    if not isinstance(inputs, Mapping):
        return {artifact.inputs[0]["name"]: Path(inputs)}
    names = [spec["name"] for spec in artifact.inputs]
    unknown = [name for name in inputs if name not in names]
    if unknown:
        raise BenchError(f"{artifact.name} has no input named {', '.join(map(repr, unknown))}",
                         why=f"its inputs are {', '.join(map(repr, names))}",
                         fix="name its inputs in inputs={...} as its artifact.json (or the model file) names them")
    return {name: Path(path) for name, path in inputs.items()}


def _dynamic(size: Any) -> bool:
    return not (isinstance(size, int) and size > 0)


def _given_size(spec: dict[str, Any], index: int, dims: Mapping[str, int]) -> int | None:
    """The size --dim gives dimension `index` of an input, None when it gives none: by its position
    (INPUT:INDEX), else by the dimension's name. The position is how a dimension without a name is sized: an
    ONNX dynamic dimension without a dim_param (recorded 0), a TFLite one (recorded 'batch' wherever it is)."""
    declared = spec["shape"][index] if index < len(spec["shape"]) else None
    if not _dynamic(declared):
        return None
    by_position = dims.get(dim_key(spec["name"], index))
    return by_position if by_position is not None else dims.get(declared) if isinstance(declared, str) else None


def _given_key(spec: dict[str, Any], index: int, dims: Mapping[str, int]) -> str:
    """The --dim name that sized dimension `index` of an input (see _given_size)."""
    key = dim_key(spec["name"], index)
    return key if key in dims else str(spec["shape"][index])


def dim_key(input_name: str, index: int) -> str:
    """The --dim name of an input's dimension by position (input names may hold ':' themselves, as TFLite's
    'serving_default_x:0'; the key is matched whole)."""
    return f"{input_name}:{index}"


def _dim_advice(spec: dict[str, Any], index: int) -> str:
    """How to size dimension `index` of an input: by its own name when it has one only it uses, else by
    position (the batch's name 'batch', which a TFLite file gives every dynamic dimension, sizes the batch)."""
    declared = spec["shape"][index]
    named = isinstance(declared, str) and declared and declared != spec["shape"][0]
    return f"--dim {declared if named else dim_key(spec['name'], index)}=SIZE"


def _guessed_dims(artifact: Artifact, dims: Mapping[str, int], given: Collection[str] = ()) -> list[str]:
    """The dynamic dimensions beyond the batch that _synthetic_inputs had to give a size of its own (of the
    inputs not `given` a file), each with the --dim that sizes it."""
    return [f"dimension {i} ({repr(d) if isinstance(d, str) and d else 'unnamed'}) of input '{spec['name']}' "
            f"({_dim_advice(spec, i)})" for spec in artifact.inputs
            if _text_example(artifact, spec["name"]) is None and spec["name"] not in given
            for i, d in enumerate(spec["shape"][1:], start=1) if _dynamic(d) and _given_size(spec, i, dims) is None]


def _timed_shape(artifact: Artifact, spec: dict[str, Any], batch_size: int,
                 dims: Mapping[str, int] | None = None) -> list[int]:
    """The shape an input of a model is timed at when edgekd makes the data (runner) or sizes a native tool's:
    a text model's ids at the length of its recorded example; else the declared sizes, each dynamic one the
    size `dims` gives it by name, else the batch size (a made-up size beyond the batch: _guessed_dims)."""
    dims = dims or {}
    first = spec["shape"][0] if spec["shape"] else None
    if _given_size(spec, 0, dims) is not None:
        raise BenchError(f"--dim {_given_key(spec, 0, dims)}= sizes the batch of {artifact.name}'s input "
                         f"'{spec['name']}'", fix=f"use --batch-size for it, not --dim {_given_key(spec, 0, dims)}=")
    if not _dynamic(first) and first != batch_size:  # it would run at its own batch, recorded as batch_size
        raise BenchError(f"{artifact.name} has a fixed batch of {first}: batch size {batch_size} cannot be applied",
                         why=f"its input '{spec['name']}' has shape {spec['shape']}",
                         fix=f"use --batch-size {first}, or export the model with a dynamic batch (ONNX)")
    length = _given_size(spec, 1, dims)
    longest = (artifact.text_input or {}).get("length")
    if length is not None and isinstance(longest, int) and length > longest:
        key = _given_key(spec, 1, dims)
        raise BenchError(f"{artifact.name} takes at most {longest} tokens: --dim {key}={length} is "
                         "longer", why="the model was exported for ids up to its device length (its record's "
                         "text_input.length)", fix=f"use --dim {key}={longest} or less, or export "
                         "with a longer data.text.device_length")
    example = _text_example(artifact, spec["name"], length)
    if example is not None:  # its dynamic length would otherwise take the batch size: one token
        return [batch_size, len(example)]
    return [d if not _dynamic(d) else batch_size if i == 0 else _given_size(spec, i, dims) or batch_size
            for i, d in enumerate(spec["shape"])]


def _warn_dims(reporter: Reporter, artifact: Artifact, settings: BenchSettings, given: Collection[str] = ()) -> None:
    """Say which dynamic sizes were made up, and which --dim names the artifact has no dynamic dimension of."""
    guessed = _guessed_dims(artifact, settings.dims, given)
    if guessed:
        reporter.note(
            f"[warning] {artifact.name}: {', '.join(guessed)} {'is' if len(guessed) == 1 else 'are'} dynamic, "
            f"timed at {settings.batch_size} (the batch size): a made-up size, not the one an app would use. "
            "Give its size as shown; a text model's artifact folder from a run has it in its record")
    names = {d for spec in artifact.inputs for d in spec["shape"] if isinstance(d, str)}
    names |= {dim_key(spec["name"], i) for spec in artifact.inputs for i, d in enumerate(spec["shape"])
              if i > 0 and _dynamic(d)}
    unused = [name for name in settings.dims if name not in names]
    if unused:
        shapes = ", ".join(f"'{spec['name']}' {spec['shape']}" for spec in artifact.inputs)
        reporter.note(f"[warning] {artifact.name} has no dynamic dimension named {', '.join(map(repr, unused))} "
                      f"(its inputs: {shapes}): timed at its own sizes")


def _native_sizes(artifact: Artifact, settings: BenchSettings,
                  given: Mapping[str, tuple[int, ...]] | None = None) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """(free_dims, timed inputs): the sizes that make a native tool time the shapes the runner would feed
    (_timed_shape; `given`: the shapes of the inputs files, by input name). onnxruntime_perf_test sizes a
    named dynamic dimension (-f NAME:SIZE) and times any other at 1; benchmark_model times the declared sizes
    (1 for a dynamic one). A shape a tool cannot be given is refused, not timed at another size and recorded
    as asked."""
    tool = TOOL_FOR_FORMAT.get(artifact.format, artifact.format)
    free: dict[str, int] = {}
    timed = []
    for spec in artifact.inputs:
        shape = (list(given[spec["name"]]) if given and spec["name"] in given else
                 _timed_shape(artifact, spec, settings.batch_size, settings.dims))
        if len(shape) != len(spec["shape"]) or any(not _dynamic(d) and d != size
                                                   for d, size in zip(spec["shape"], shape)):
            raise BenchError(f"the inputs have shape {shape}; {artifact.name}'s input '{spec['name']}' takes "
                             f"{spec['shape']}", fix="give inputs of the model's shape")
        for declared, size in zip(spec["shape"], shape):
            if not _dynamic(declared):
                continue
            if artifact.format == "onnx" and isinstance(declared, str) and declared:
                if free.setdefault(declared, size) != size:
                    raise BenchError(f"{tool} cannot time {artifact.name}: its dimension '{declared}' would need "
                                     f"two sizes ({free[declared]} and {size})",
                                     fix="give the device a Python (`python:` in its profile) to use edgekd's runner")
            elif size != 1:
                raise BenchError(f"{tool} cannot time {artifact.name} at the shape {shape} of its input "
                                 f"'{spec['name']}'", why=f"{tool} times a dynamic dimension it cannot name at 1",
                                 fix="bench it with --batch-size 1, or give the device a Python (`python:` in its "
                                     "profile) to use edgekd's runner")
        timed.append({"name": spec["name"], "shape": shape, "dtype": spec.get("dtype")})
    return free, timed


def _synthetic_inputs(artifact: Artifact, batch_size: int, folder: Path,
                      dims: Mapping[str, int] | None = None) -> dict[str, str]:
    """Inputs for a bare model file: deterministic uniform data of the declared shapes; for a text model, its
    recorded example sentence at its device length, as the run's bench timed it.

    Quantized inputs (an int8 TFLite input with a scale) get float data: the runner quantizes it with the
    tensor's scale and zero point, as an application would.
    """
    rng = np.random.default_rng(0)
    out = {}
    for spec in artifact.inputs:
        shape = _timed_shape(artifact, spec, batch_size, dims)
        path = folder / f"input{len(out)}.npy"  # by position: an input's name comes from the model file
        example = _text_example(artifact, spec["name"], shape[1] if len(shape) > 1 else None)
        if example is not None:
            np.save(path, np.repeat(example[None], batch_size, axis=0).astype(spec.get("dtype", "int64")),
                    allow_pickle=False)
            out[spec["name"]] = str(path)
            continue
        try:
            dtype = np.dtype("float32" if spec.get("quantization") else spec.get("dtype", "float32"))
        except TypeError:
            dtype = np.dtype(object)
        if dtype.kind not in "biuf":
            raise BenchError(f"{artifact.name} takes {dtype} input '{spec['name']}': edgekd can only make up numbers",
                             fix="benchmark a model whose inputs are numeric tensors")
        np.save(path, made_up_input(rng, shape, dtype), allow_pickle=False)
        out[spec["name"]] = str(path)
    return out


def made_up_input(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Timing data for an input nobody gave: floats uniform in [0, 1), 8-bit integers over their whole range
    (a uint8 image), wider integers 1 and booleans True. Those are token ids and attention masks: 1 is a valid
    id of any vocabulary and no pad id, so every position counts. (rng.random cast to an integer type made them
    all 0, all padding: a model that skips padding was timed 100x too fast.)"""
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype.kind in "iu" and dtype.itemsize == 1:
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return np.ones(shape, dtype=dtype)


class _Session:
    """One device for the duration of a bench call: pushes each file once (skipped when the device already
    has it, by sha256) and runs the runner with a spec."""

    def __init__(self, device: Device, local_tmp: Path, reporter: Reporter | None = None) -> None:
        self.device = device
        self.local_tmp = local_tmp
        self.reporter = reporter or SilentReporter()
        self.pushed: dict[str, str] = {}  # local sha256 -> remote path

    @property
    def runner(self) -> str:
        """The runner on the device (pushed on first use: a device without Python never gets it)."""
        return self.push(RUNNER_SOURCE, runner_name())

    def push(self, local: Path, name: str, *, exactly_there: bool = False, digest: str | None = None) -> str:
        """The device path of `local`'s content: where it was pushed before in this session, or `name` in the
        work directory (pushed unless the device holds it already); `exactly_there`: at `name` whatever else
        holds the same content (a model beside its external data). `digest`: its sha256, if already known."""
        digest = digest or sha256_file(local)
        if digest in self.pushed and not exactly_there:
            return self.pushed[digest]
        remote = f"{self.device.workdir}/{name}"
        if self.device.sha256(remote) != digest:
            self.device.push(local, remote)
        self.pushed.setdefault(digest, remote)
        return remote

    def relative(self, remote: str) -> str:
        """A device path as seen from the specs/ folder: specs carry no absolute paths, so they stay valid
        wherever the device maps its work directory (Android sandboxes, emulated root filesystems)."""
        prefix = f"{self.device.workdir}/"
        return "../" + remote[len(prefix):] if remote.startswith(prefix) else remote

    def run_spec(self, spec: dict[str, Any], tag: str, timeout: float,
                 artifact: Artifact | None = None) -> dict[str, Any]:
        """Push the spec, run the runner on the device, parse its one JSON object (or raise BenchError, naming
        `artifact` and its file as the user knows them: the device's copy is named after its content)."""
        local = self.local_tmp / f"spec-{tag}.json"
        local.write_text(json.dumps(spec))
        remote_spec = self.push(local, f"specs/{sha256_file(local)[:16]}.json")
        # Tethered: the runner ends itself when this host stops waiting for it, even where it cannot be reached
        # to be killed (the link dropped). The advice to run it by hand leaves that out (stdin is then a terminal).
        tether = self.device.can_tether()
        flags = ["--tether", f"{TETHER_S:g}"] if tether else []
        # A hex mask, not `-c LIST`: Android's taskset (toybox) has no -c.
        pin = ["taskset", cpu_mask(self.device.profile.cpus)] if self.device.profile.cpus else []
        argv = [*pin, *python_argv(self.device.profile), self.runner, remote_spec]
        by_hand = f"run it by hand on the device to see where it stops: `{shlex.join(argv)}`"
        try:
            proc = self.device.run([*argv[:-1], *flags, remote_spec], timeout=timeout, tether=tether,
                                   on_line=self._notice)
        except DeviceTimeout as exc:
            raise BenchError(f"the runner did not finish within {timeout:g} s on {self.device.name}", why=exc.why,
                             fix=by_hand) from None
        try:
            out = _runner_json(proc.stdout)
        except json.JSONDecodeError:
            last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            missing = no_taskset(self.device.name, proc.returncode, proc.stderr) if pin else None
            if missing is not None:
                raise missing from None
            if proc.returncode in (126, 127):  # the shell's "cannot execute" / "not found": no Python started
                tools = ("; or `python: null` to use the benchmark tools under `native:`"
                         if self.device.profile.options.get("native") else "")
                raise RuntimeMissing(
                    f"the Python of device '{self.device.name}' cannot be started: {shlex.join(argv[:-2])}",
                    why=last, fix="install Python 3 with numpy on the device, or set `python:` in its profile "
                                  f"to the path of the device's Python{tools}") from None
            killed = _killed_by(proc.returncode)
            raise BenchError(f"the runner crashed on {self.device.name}",
                             why=f"{killed}; {last}" if killed and proc.stderr.strip() else killed or last,
                             fix=by_hand) from None
        if not out.get("ok"):
            err = out.get("error", {})
            if err.get("kind") == "device_busy":  # another bench (another machine, user or profile) measures there
                raise BenchError(str(err.get("what", "")).replace("the device", f"device '{self.device.name}'", 1),
                                 why=err.get("why"), fix=f"{err.get('fix')}; or set {DEVICE_WAIT_ENV} to the seconds "
                                 "to wait for it")
            what, why = str(err.get("what", "the runner failed")), err.get("why")
            if artifact is not None:
                copy = re.compile(rf"\S*{re.escape(PurePosixPath(str(spec['artifact'])).name)}")
                what = f"{artifact.name}: " + copy.sub(lambda _: str(artifact.path), what)
                why = copy.sub(lambda _: str(artifact.path), why) if isinstance(why, str) else why
            raise BenchError(f"{self.device.name}: {what}", why=why, fix=err.get("fix"))
        return out

    def _notice(self, line: str) -> None:
        """Show a line of the runner's stderr that it marks as a notice (runner.NOTICE: it waits for another
        bench on the device) while it runs: the rest of its stderr is read only when it ends."""
        if line.startswith(RUNNER_NOTICE):
            self.say(line[len(RUNNER_NOTICE):])

    def say(self, text: str) -> None:
        """A note from the device now (text the device wrote: only its printable characters are shown)."""
        self.reporter.note(f"{self.device.name}: {printable(text)}")


def _runner_json(stdout: str) -> Any:
    """The runner's one JSON object (one line, its last): all of its stdout, or the last line of that where the
    device merges the runner's stderr into it (an adb shell v1), as when the runner waited for the device."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        lines = stdout.strip().splitlines()
        if len(lines) < 2:
            raise
        return json.loads(lines[-1])


# Linux signal numbers (boards and phones run Linux; this host may number them otherwise) and what they mean
# for a runner: a runtime that crashes, uses an instruction the CPU lacks, or a device out of memory.
_SIGNALS = {4: ("SIGILL", "the runtime used a CPU instruction this device lacks (a build for a newer CPU)"),
            6: ("SIGABRT", "the runtime aborted"), 7: ("SIGBUS", "a memory access fault in the runtime"),
            8: ("SIGFPE", "an arithmetic fault in the runtime"),
            9: ("SIGKILL", "killed from outside, often by the out-of-memory killer"),
            11: ("SIGSEGV", "the runtime crashed (segmentation fault)")}


def _killed_by(returncode: int) -> str | None:
    """'killed by SIGSEGV (what that means)' for a process a signal ended: a negative status from Python's
    subprocess, or a shell's 128+N; None for an ordinary exit."""
    number = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 160 else None
    if number is None:
        return None
    name, meaning = _SIGNALS.get(number, (f"signal {number}", None))
    return f"killed by {name}" + (f": {meaning}" if meaning else "")


# --sustained: the asked minutes in this many windows of equal wall time, and at most this many calls' times kept
# (a uniform sample of all calls), whatever the model's speed and the minutes: see sustained_trend.
SUSTAINED_WINDOWS = 10
SUSTAINED_SAMPLE = 200_000


def sustained_settings(minutes: float, base: BenchSettings | None = None) -> BenchSettings:
    """One long round of `minutes`, to see throttling: latency over time instead of one number. max_runs is
    the size of the sample kept, not a stop: the runner summarises each window on the device and runs the
    whole time at any speed."""
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 < minutes < math.inf:
        raise BenchError(f"a sustained bench needs a finite number of minutes > 0, got {minutes!r}",
                         fix="e.g. --sustained 10 (edgekd bench) or sustained_settings(10)")
    seconds = minutes * 60
    return replace(base or BenchSettings(), rounds=1, min_seconds=seconds, max_seconds=seconds, min_runs=1,
                   max_runs=SUSTAINED_SAMPLE, sustained=True)


def sustained_trend(raw: dict[str, Any]) -> dict[str, Any]:
    """The trend of one sustained runner round: over_time of its windows, all its calls and seconds, and how
    many calls' times it kept (`sampled`).

    The windows' numbers are computed on the device from each window's own calls (exact while a window has at
    most max_runs calls, else from a uniform sample of that many of them). The result's overall latency
    (latency_us, latencies_ns) comes from a uniform random sample of at most max_runs calls of the whole run:
    each call was equally likely to be kept, so its percentiles and intervals estimate those of all calls, as
    the calls of a short run estimate the model's; `calls` and `seconds` are of every call. Window
    percentiles are not merged into overall ones: a median of window medians is no median of the calls."""
    timed = raw.get("timed") or {}
    return {**over_time(raw.get("windows") or []), "calls": timed.get("runs"),
            "seconds": round(float(timed.get("seconds", 0.0)), 2), "sampled": timed.get("kept")}


def over_time(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The runner's windows in µs and s, and the last window's p50 over the first's: >1 means the device slowed
    down; None with fewer than two windows (one call lasted the whole run). A window no call started in (a call
    longer than a window) is absent, so t_start_s says where each one lies. A window's p99 is None when its
    percentiles come from fewer calls than a p99 needs (stats.shown_p99, as the tables show "–")."""
    rows = []
    for w in windows:
        row = {"t_start_s": round(w["start_ns"] / 1e9, 2), "seconds": round(w["elapsed_ns"] / 1e9, 3),
               "calls": w["calls"], "sampled": w["kept"], "busy_s": round(w["busy_ns"] / 1e9, 3),
               **{f"{key}_us": w[f"{key}_ns"] / 1000 for key in ("p50", "p90", "p99", "min", "max")}}
        row["p99_us"] = stats.shown_p99({"p99": row["p99_us"], "n": w["kept"]})  # of the kept calls
        rows.append(row)
    ratio = rows[-1]["p50_us"] / rows[0]["p50_us"] if len(rows) > 1 and rows[0]["p50_us"] > 0 else None
    return {"windows": rows, "last_over_first": ratio}


def sustained_text(trend: dict[str, Any]) -> str:
    """What `edgekd bench --sustained` prints for one result: p50 per window, last/first, and what the run's
    overall numbers are of (all calls, or a sample of them)."""
    windows = trend["windows"]
    parts = []
    if windows:
        parts.append("p50 over time (µs) " + "  ".join(f"{w['t_start_s']:.0f}s:{w['p50_us']:.2f}" for w in windows))
    if trend["last_over_first"] is not None:
        parts.append(f"last/first {trend['last_over_first']:.2f}×")
    calls = trend.get("calls")
    sampled = trend.get("sampled", calls)  # results saved before sampling kept every call
    kept = "each call's time kept" if sampled == calls else f"overall percentiles from a uniform sample of {sampled:,}"
    parts.append(f"{calls:,} calls in {trend['seconds']:.0f} s ({kept})")
    if trend.get("cut_short"):  # saved before windows: the run stopped at max_runs calls
        parts.append(trend["cut_short"])
    return "; ".join(parts)


def check_threads(artifact: Artifact | str | Path, device: str, threads: int,
                  settings: BenchSettings | None = None) -> dict[str, Any]:
    """Did the thread setting take effect? Time the artifact with 1 and with `threads` intra-op threads.

    A model too small to split across threads shows no difference; a teacher-sized one should. The two
    settings alternate for CHECK_THREADS_PAIRS pairs of fresh processes, and the verdict is whether the pairs'
    p50 ratios differ from 1 by more than their spread (a paired t interval that excludes 1): one process of
    each would call any state change of the machine between them an effect.
    """
    base = replace(settings or BenchSettings(), rounds=1, min_seconds=0.5)
    runs: dict[int, list[BenchResult]] = {1: [], threads: []}
    for _ in range(CHECK_THREADS_PAIRS):
        for n in runs:
            measured = bench([artifact], device, settings=replace(base, threads=n))
            if not measured:  # a native tool timed it at 0 µs (_unresolved said so): nothing to compare
                raise BenchError(f"{getattr(artifact, 'name', artifact)} has no timing on {device} to compare "
                                 "threads with", why="its benchmark tool timed its calls at 0 µs, below the 1 µs "
                                 "it can show", fix="check the threads with a larger model")
            runs[n].append(measured[0])
    p50s = {n: [r.latency_us["p50"] for r in results] for n, results in runs.items()}
    cmp = stats.compare_rounds(p50s[1], p50s[threads], paired=True)
    first = runs[1][0]
    return {"artifact": first.artifact["name"], "device": first.device["name"], "threads": [1, threads],
            # the centres the ratio compares (as in every table), so the two p50s shown divide to the speed-up
            "p50_us": [stats.rounds_center(p50s[1]), stats.rounds_center(p50s[threads])], "speedup": cmp["ratio"],
            "speedup_ci95": cmp["ratio_ci95"], "no_interval": cmp["no_interval"],
            "took_effect": bool(cmp["significant"])}


CHECK_THREADS_PAIRS = 3


def bench_devices(artifacts: Iterable[Artifact | str | Path], devices: list[str], **kwargs: Any) -> list[BenchResult]:
    """Benchmark on several devices at once (one thread per device: they are different machines)."""
    from concurrent.futures import ThreadPoolExecutor

    from edgekd.devices.profiles import find_profile

    items = artifact_list(artifacts)
    if len(set(devices)) != len(devices):
        raise BenchError("a device is named twice", fix="name each device once")
    named = [find_profile(d).name for d in devices]  # by name and by its profile's path: one device, twice
    twice = next((d for d, n in zip(devices, named) if named.count(n) > 1), None)
    if twice is not None:
        given = [d for d, n in zip(devices, named) if n == named[devices.index(twice)]]
        raise BenchError(f"device '{named[devices.index(twice)]}' is given twice: as {' and as '.join(given)}",
                         why="a device's results are filed under its name, and one bench at a time measures it",
                         fix="name each device once")
    if len(devices) == 1:
        return bench(items, devices[0], **kwargs)
    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        futures = {d: pool.submit(bench, items, d, **kwargs) for d in devices}
    failed = {d: f.exception() for d, f in futures.items() if f.exception() is not None}
    if not failed:
        return [r for f in futures.values() for r in f.result()]
    # One error is raised; it also says what became of the other devices, whose results are saved all the same.
    device, first = next(iter(failed.items()))
    if not isinstance(first, EdgeKDError):
        raise first
    notes = [f"also failed: {d}: {e.what if isinstance(e, EdgeKDError) else f'{type(e).__name__}: {e}'}"
             for d, e in failed.items() if d != device]
    finished = [d for d in devices if d not in failed]
    if finished and kwargs.get("results_dir") is not None:
        notes.append(f"the results on {', '.join(finished)} are complete and saved in {kwargs['results_dir']}")
    first.fix = "; ".join([*([first.fix] if first.fix else []), *notes]) or None
    raise first


def bench(artifacts: Iterable[Artifact | str | Path], device: str = "host", *, settings: BenchSettings | None = None,
          inputs: InputFiles | None = None, results_dir: Path | None = None, history: Path | None = None,
          eval_data: tuple[Path, Path] | None = None, resume: bool = False,
          reporter: Reporter | None = None, rerun_hint: str = RESUME_HINT) -> list[BenchResult]:
    """Benchmark each artifact on `device` (a profile name or path); save results under results_dir and
    record them in the SQLite `history` when given.

    `inputs` feeds the model from .npy files: one file its first input, a mapping {input name: file} the inputs
    it names; any other input gets made-up data (as a bare model file does), at the batch of the files given.

    With `eval_data` (test inputs .npy, labels .npy) — or, for artifacts of a run, the run's own test split —
    the first round also runs every test input through the artifact ON THE DEVICE; the outputs are pulled
    and scored here, so the result carries the accuracy of the artifact where it will ship.

    When the device fails midway, what was measured is saved (marked incomplete) before the error is raised;
    `resume=True` then skips every artifact that already has a complete result with the same settings; the
    error's fix ends with `rerun_hint`, what the caller's user should run next.
    """
    from edgekd.devices.profiles import open_device

    settings = check_settings(BenchSettings() if settings is None else settings)
    reporter = usable_reporter(reporter)
    _check_data_files(inputs, eval_data)
    if history is not None:  # said now, not after every artifact was measured
        from edgekd.bench.history import check_usable

        check_usable(history)
    resolved = _distinct_names([resolve_artifact(a) for a in artifact_list(artifacts)])
    target = open_device(device)
    try:
        bench_workdir(target)  # before any copy: a shared folder is refused, as `edgekd devices --clean` refuses it
        check_cpus(target)
        # The folder's lock first: a second bench into the same folder is told so, as before the device lock.
        with _results_lock(results_dir, target.name), device_lock(target.name, results_dir):
            return _bench_on(target, resolved, settings, inputs=inputs, results_dir=results_dir, history=history,
                             eval_data=eval_data, resume=resume, reporter=reporter, rerun_hint=rerun_hint)
    finally:
        target.close()


def _results_lock(results_dir: Path | None, device: str) -> contextlib.AbstractContextManager[None]:
    """One bench at a time per device and results folder: two would overwrite each other's result files (an
    interrupted one's partial result over the other's complete one). The device lock alone does not do that
    where two benches do not share it: another user's, one with another $TMPDIR, another machine's on a shared
    folder (its device 'host' is another device, with the same result file names)."""
    if results_dir is None:
        return contextlib.nullcontext()
    return exclusive_folder(results_dir, lock_name=f".edgekd-bench@{device}.lock",
                            what=f"the results folder {results_dir} (for device '{device}')",
                            fix="wait for that bench to end (then --resume measures only what it left), or give "
                                "this one another folder with --results-dir")


def _bench_on(target: Device, resolved: list[Artifact], settings: BenchSettings, *,
              inputs: InputFiles | None, results_dir: Path | None, history: Path | None,
              eval_data: tuple[Path, Path] | None, resume: bool, reporter: Reporter | None,
              rerun_hint: str) -> list[BenchResult]:
    """The body of `bench`, on an open device, holding the lock of its results."""
    if settings.threads is None:
        settings = replace(settings, threads=getattr(getattr(target, "profile", None), "threads", None) or 1)
    if results_dir is not None:  # the half-written results of a bench killed outright (SIGKILL)
        remove_orphan_temp_files(results_dir, recursive=False)
    suffix = "" if target.name == "host" else f"@{target.name}"
    paths = [Path(results_dir) / f"bench-{a.name}{suffix}.json" if results_dir is not None else None for a in resolved]
    done = {i: r for i, r in ((i, _finished(p, a, settings)) for i, (p, a) in enumerate(zip(paths, resolved))
                              if resume) if r is not None}
    todo = [i for i in range(len(resolved)) if i not in done]
    # A resumed bench adds its results to the history session the interrupted one began: one bench, one session.
    history_session = (_unfinished_session(results_dir, target.name) if done else None) or _new_session()
    reporter = reporter or SilentReporter()
    if done:  # else a bench with nothing left to measure shows its table and "0/0" without saying why
        reporter.note(f"--resume: kept the results measured earlier with these settings on {target.name} of "
                      f"{', '.join(resolved[i].name for i in sorted(done))}")
    task = reporter.task(f"bench on {target.name}", len(todo) * settings.rounds)
    raws: dict[int, list[dict[str, Any]]] = {i: [] for i in todo}
    said: set[str] = set()  # what _note_device_lock and _unresolved said once already
    unresolved: set[int] = set()  # timed at 0 µs by a native tool (_unresolved): no result
    accuracies: dict[int, dict[str, Any]] = {}
    parities: dict[int, dict[str, Any]] = {}
    thermal: list[dict[str, Any]] = []
    per_round = replace(settings, min_runs=-(-settings.min_runs // settings.rounds),
                        min_seconds=settings.min_seconds / settings.rounds,
                        max_seconds=settings.max_seconds / settings.rounds)

    def results_of(indices: list[int]) -> list[BenchResult]:
        out = []
        for i in indices:
            result = to_result(raws[i], resolved[i], target, settings)
            result.device_accuracy, result.complete = accuracies.get(i), len(raws[i]) == settings.rounds
            result.cross_arch_parity = parities.get(i)
            result.thermal = thermal
            if settings.sustained and raws[i] and raws[i][0].get("windows") is not None:
                result.sustained = sustained_trend(raws[i][0])
            if paths[i] is not None:
                result.save(paths[i])
            out.append(result)
        return out

    try:
        with process_temp_dir("bench") as tmp:  # a bench killed with SIGKILL leaves it to the next one
            session = _Session(target, Path(tmp), reporter)
            natives = {i: _native_tool(target, resolved[i]) for i in todo}
            # Sized (or refused) before any device time is spent. A tool makes its own data: given inputs
            # (`inputs=`, as a run's bench stage gives its bench inputs) set only the shape it times.
            given = {i: {name: _npy_shape(path, f"inputs['{name}']")
                         for name, path in _given_feeds(resolved[i], inputs).items()} for i in todo if natives[i]}
            sizes = {i: _native_sizes(resolved[i], settings, given[i]) for i in todo if natives[i]}
            shapes = {", ".join(f"'{name}' {list(shape)}" for name, shape in given[i].items()) for i in sizes}
            for said in sorted(shapes - {""}):  # once for the artifacts fed the same files (a run's bench stage)
                reporter.note(f"{target.name} has no Python: its benchmark tool makes its own input data, at the "
                              f"shape of the inputs given ({said})")
            for i in sizes:
                _warn_dims(reporter, resolved[i], settings, given[i])
            system = native_system(target) if sizes else None  # the runner reports it; a tool does not
            if settings.sustained and any(natives.values()):  # it would time ~a second and print one summary
                raise BenchError(f"--sustained needs edgekd's runner: device '{target.name}' has no Python",
                                 why="a native benchmark tool times its own loop and prints one summary for it, "
                                     "not latency over the minutes asked",
                                 fix="set `python:` in its profile (e.g. Termux's) to run the runner there, or "
                                     "bench it without --sustained")
            specs = {i: _spec(session, resolved[i], per_round, inputs, Path(tmp)) for i in todo if natives[i] is None}
            evals = {i: _first_samples(_eval_data(resolved[i], eval_data), settings.eval_samples, Path(tmp))
                     for i in todo}
            evals = {i: _scorable(resolved[i], data, reporter) for i, data in evals.items()}
            _note_native_scoring(reporter, target.name, {i: natives[i] for i in todo if natives[i] and evals[i]},
                                 resolved, evals)
            remote_outputs: dict[int, str] = {}
            for round_index in range(settings.rounds if todo else 0):  # all kept (--resume): the device may be off
                if round_index and settings.cooldown_seconds:
                    time.sleep(settings.cooldown_seconds)
                thermal.append(cool_down(target))  # bounded wait below the profile's threshold, recorded
                # A new order each round (seeded): in a fixed one the artifact right after the cool-down would
                # always run coolest, and the last one hottest, on a device that throttles.
                for i in (todo if round_index == 0 else
                          [int(k) for k in np.random.default_rng(round_index).permutation(todo)]):
                    if i in unresolved:
                        task.advance(1)
                        continue
                    if natives[i] is not None:  # no Python on the device: the runtime's own benchmark binary
                        out = _run_native(session, resolved[i], natives[i], per_round, sizes[i][0])
                        if _unresolved(resolved[i], out, reporter, said):
                            unresolved.add(i)
                            task.advance(1)
                            continue
                        raws[i].append({"native": out, "device_lock": out.pop("device_lock", None),
                                        "inputs": sizes[i][1], "system": system})
                        _note_device_lock(raws[i][-1], target.name, reporter, said)
                        if round_index == 0 and evals[i] is not None and not unscorable(natives[i][0], resolved[i]):
                            scored = _native_accuracy(session, resolved[i], natives[i][1], evals[i], per_round,
                                                      Path(tmp) / f"out{i}.npy")
                            if scored is not None:
                                accuracies[i] = scored
                    else:
                        spec = specs[i]
                        if round_index == 0 and evals[i] is not None:
                            predict = _predict_spec(session, resolved[i], evals[i][0])
                            remote_outputs[i] = predict.pop("_remote_output")
                            spec = {**spec, "predict": predict}
                        raws[i].append(session.run_spec(spec, str(i), timeout=runner_timeout(spec),
                                                        artifact=resolved[i]))
                        _note_device_lock(raws[i][-1], target.name, reporter, said)
                        if spec.get("predict"):
                            accuracies[i] = _score(session, remote_outputs[i], evals[i][1],
                                                   Path(tmp) / f"out{i}.npy")
                    if len(raws[i]) == settings.rounds and paths[i] is not None and not (
                            i in accuracies and _is_cross_arch(target, raws[i][0])):
                        # Saved as soon as its last round is in (and again, complete with the last thermal
                        # reading, at the end): a bench killed outright (SIGKILL, OOM) keeps it for --resume.
                        # A cross-architecture result waits for its parity, computed after every round.
                        results_of([i])
                    task.advance(1)
            if todo:
                thermal.append({"after_run": temperature(target)})  # throttling shows as a hotter device here
            for i in accuracies:
                if _is_cross_arch(target, raws[i][0]):
                    parities[i] = cross_arch_parity(resolved[i], evals[i][0], Path(tmp) / f"out{i}.npy",
                                                    raws[i][0], Path(tmp) / f"host{i}")
    except (EdgeKDError, KeyboardInterrupt) as exc:  # a device that fails midway, or Ctrl-C: keep what was measured
        kept = results_of([i for i in todo if raws[i]]) if results_dir is not None else []
        if _record_complete(kept, history, history_session) and results_dir is not None:
            atomic_write_json(_session_path(results_dir, target.name), {"session": history_session})
        if kept:
            # only a result with all its rounds is reused by --resume; one cut short is saved to look at
            whole = sum(len(raws[i]) == settings.rounds for i in todo)
            cut = (f"{len(kept) - whole} result(s) with fewer than {settings.rounds} rounds, saved in {results_dir} "
                   "to look at, will be measured again")
            if not whole:
                saved = f"nothing was measured in full: {cut}"
            else:
                saved = f"the {whole} result(s) measured in full so far are kept in {results_dir}"
                if len(kept) > whole:
                    saved += f"; {cut}"
            if isinstance(exc, EdgeKDError):
                exc.fix = ((exc.fix + "; ") if exc.fix else "") + (
                    f"{saved}; {rerun_hint}")
            else:  # `edgekd bench` says it (and --resume) instead of its generic "run the same command again"
                exc.kept = saved  # type: ignore[attr-defined]
        raise
    finally:
        task.close()
    measured = [i for i in todo if i not in unresolved]
    _note_capped_rounds(reporter, {resolved[i].name: raws[i] for i in measured}, per_round)
    fresh = results_of(measured)
    if history is not None:
        from edgekd.bench import history as bench_history

        # Reused results whose bench ended between saving them and recording them are recorded now.
        missing = bench_history.unrecorded([done[i] for i in sorted(done)], history)
        if fresh or missing:
            bench_history.record(missing + fresh, history, history_session)
        if results_dir is not None:  # the session is whole: a later bench here begins its own
            _session_path(results_dir, target.name).unlink(missing_ok=True)
    by_index = {**done, **dict(zip(measured, fresh))}
    return [by_index[i] for i in range(len(resolved)) if i in by_index]


def _note_capped_rounds(reporter: Reporter, raws: dict[str, list[dict[str, Any]]], per_round: BenchSettings) -> None:
    """Say when rounds stopped at max_runs calls before their share of min_seconds: a fast model timed with a
    long --min-seconds ran a fraction of the time asked, and nothing said so."""
    for name, rounds in raws.items():
        timed = [raw.get("timed") or {} for raw in rounds]
        short = [t["seconds"] for t in timed if t.get("runs", 0) >= per_round.max_runs
                 and t.get("seconds", per_round.min_seconds) < per_round.min_seconds]
        if short:
            reporter.note(f"{name}: {len(short)} of {len(rounds)} rounds stopped at max_runs ({per_round.max_runs:,} "
                          f"calls) after {min(short):.2f}–{max(short):.2f} s of the {per_round.min_seconds:.2f} s "
                          "asked per round: enough calls for its percentiles; a longer --min-seconds adds no time "
                          "past that cap (more --rounds do)")


def _distinct_names(artifacts: list[Artifact]) -> list[Artifact]:
    """The artifacts, each with a name of its own. Two of one name would share a result file, the later
    overwriting the earlier, and could not be told apart in the table or the history (`edgekd compare` pairs
    results on the name). Bare files that differ only in format (model.onnx and model.tflite: one model in two
    runtimes) are named after it too (model-onnx, model-tflite); any other clash (model.onnx from two folders,
    one file given twice) is refused before anything is measured."""
    clashing = Counter(a.name for a in artifacts)
    formats = Counter((a.name, a.format) for a in artifacts)
    artifacts = [a.model_copy(update={"name": f"{a.name}-{a.format}"})
                 if clashing[a.name] > 1 and formats[(a.name, a.format)] == 1 and a.role == BARE_FILE_ROLE else a
                 for a in artifacts]
    seen: dict[str, Artifact] = {}
    for artifact in artifacts:
        other = seen.setdefault(artifact.name, artifact)
        if other is not artifact:
            where = ("the same model twice" if other.sha256 == artifact.sha256
                     else f"{other.path} and {artifact.path}")
            raise BenchError(f"two artifacts are named '{artifact.name}' ({where})",
                             why="their results would be saved to one file, the later over the earlier, and the "
                                 "history could not tell them apart",
                             fix="give each file once; bench same-named files in separate calls, each with its "
                                 "own --results-dir, or rename one of them")
    return artifacts


def _record_complete(results: list[BenchResult], history: Path | None, session: str) -> bool:
    """Put the complete results of a bench that failed midway in the history now, under the bench's `session`
    (a later --resume records them only if they are still missing, see history.unrecorded, and the rest under
    the same session); the failure, not a history error, is what the user must see. True if they were recorded."""
    complete = [r for r in results if r.complete]
    if history is None or not complete:
        return False
    from edgekd.bench import history as bench_history

    try:
        bench_history.record(complete, history, session)
    except EdgeKDError as exc:
        logger.warning("could not record the finished results in the history: %s", exc.what)
        return False
    return True


def _new_session() -> str:
    from edgekd.bench import history as bench_history

    return bench_history.new_session()


def _session_path(results_dir: Path, device: str) -> Path:
    """Where a bench that stopped midway keeps its history session, for --resume to add the rest to it."""
    return Path(results_dir) / f".edgekd-bench-session@{device}.json"


def _unfinished_session(results_dir: Path | None, device: str) -> str | None:
    """The history session of the interrupted bench into `results_dir` on `device`, if one stopped there; None
    when there is none or its file is unreadable (a new session then: never a reason to stop a bench)."""
    if results_dir is None:
        return None
    try:
        session = read_json(_session_path(results_dir, device)).get("session")
    except (OSError, ValueError, AttributeError):
        return None
    return session if isinstance(session, str) and session else None


def _native_tool(device: Device, artifact: Artifact) -> tuple[str, Path] | None:
    """(tool, local binary) when the device has no Python and its profile names a native benchmark binary
    for this format (`native: {tflite: PATH, onnx: PATH}`); None when the runner is used."""
    if device.profile.python:
        return None
    tool = TOOL_FOR_FORMAT.get(artifact.format)
    binary = (device.profile.options.get("native") or {}).get(artifact.format)
    if tool is None or not binary:
        raise RuntimeMissing(
            f"device '{device.name}' has no Python and no native benchmark binary for {artifact.format}",
            fix=f"set `python:` in its profile (e.g. Termux), or `native: {{{artifact.format}: PATH}}` to the "
                f"runtime's {tool or 'benchmark'} binary built for the device")
    path = Path(str(binary)).expanduser()
    if not path.is_file():
        raise RuntimeMissing(f"native benchmark binary not found: {path}",
                             fix=f"fix `native: {{{artifact.format}: ...}}` in the profile of '{device.name}'")
    return tool, path


def _unresolved(artifact: Artifact, out: dict[str, Any], reporter: Reporter, said: set[str]) -> bool:
    """An artifact the native tool timed at 0 µs: benchmark_model prints whole microseconds, and a floor (no
    operator) or a tiny model takes less on a phone. With readings of 1 µs among the zeros, its latency is their
    mean (native.below_resolution), said once; with none, it is said and left without a result (a result's round
    p50s must be above 0), rather than failing the whole bench; the other artifacts are measured."""
    from edgekd.bench.native import below_resolution

    latency = out.get("latency_us") or {}
    if below_resolution(latency):
        if f"resolution {artifact.name}" not in said:
            said.add(f"resolution {artifact.name}")
            reporter.note(f"{artifact.name}: {out.get('tool')} timed most calls at 0 µs (its timer reads whole "
                          f"µs): its p50 is the mean of its readings, {latency['mean']:.2f} µs in this round, "
                          "without percentiles. Each reading is the difference of two whole-µs clock readings, so "
                          "the mean is the calls' mean")
        return False
    if latency.get("p50") != 0:
        return False
    reporter.note(f"[warning] {artifact.name}: {out.get('tool')} timed its calls at 0 µs, below the 1 µs it can "
                  "show; it has no result on this device" +
                  (" (a call with no operator costs less there)" if artifact.role == "floor" else
                   ": with Python on the device (Termux, `python:` in its profile) edgekd's runner times in ns"))
    return True


def _run_native(session: _Session, artifact: Artifact, tool_binary: tuple[str, Path],
                settings: BenchSettings, free_dims: dict[str, int]) -> dict[str, Any]:
    from edgekd.bench import native

    remote = session.push(artifact.path, f"artifacts/{artifact.sha256[:16]}{artifact.path.suffix}")
    tool, binary = tool_binary
    return native.run_native(session.device, binary, remote, tool, settings.threads, settings.min_runs,
                             settings.warmup_runs, timeout=runner_budget(settings.max_seconds),
                             lock_wait=device_wait(settings),  # the runner's budget and wait for the device
                             notice=session.say, free_dims=free_dims)


def _native_accuracy(session: _Session, artifact: Artifact, binary: Path, data: tuple[Path, Path],
                     settings: BenchSettings, local: Path) -> dict[str, Any] | None:
    """The artifact's accuracy on the test data, run on the device by its benchmark_model (native_predict). A
    tool that cannot do it (an old build without --output_filepath) leaves the result without one, with a
    warning: the timings it gave stand."""
    try:
        outputs = device_outputs(session, artifact, binary, data[0], settings.threads or 1, device_wait(settings),
                                 local)
    except BenchError as exc:
        session.reporter.note(f"[warning] {artifact.name}: no accuracy on {session.device.name}: {exc.what}"
                              + (f" ({exc.why})" if exc.why else "") + (f"; {exc.fix}" if exc.fix else ""))
        return None
    return _scored(outputs, data[1])


def _finished(path: Path | None, artifact: Artifact, settings: BenchSettings) -> BenchResult | None:
    """An earlier complete result of this very file with these settings (for --resume), else None."""
    if path is None or not path.is_file():
        return None
    try:
        old = BenchResult.load(path)
    except EdgeKDError as exc:  # measured again and overwritten; say so, or --resume seems to ignore the file
        logger.warning("--resume: the earlier result %s cannot be read (%s); measuring %s again", path,
                       exc.why or exc.what, artifact.name)
        return None
    same = old.artifact.get("sha256") == artifact.sha256 and old.settings == asdict(settings)
    return old if same and old.complete else None


def _eval_data(artifact: Artifact, given: tuple[Path, Path] | None) -> tuple[Path, Path] | None:
    """Test inputs and labels for on-device accuracy: given, or the test split of the artifact's run."""
    if given is not None:
        return Path(given[0]), Path(given[1])
    if artifact.role in ("floor", "model") or artifact.directory is None:
        return None
    data = artifact.directory.parent.parent / "data"
    x, y = data / ("test_ids.npy" if artifact.text_input else "test_x.npy"), data / "test_y.npy"  # text: token ids
    return (x, y) if x.is_file() and y.is_file() else None


def scoring_problem(artifact: Artifact) -> str | None:
    """Why the device's outputs of `artifact` cannot be scored as a classifier's, or None: the test inputs feed
    its one input, and the top class of its first output, [batch, classes] scores, is compared with a label."""
    if len(artifact.inputs) != 1:
        return (f"it takes {len(artifact.inputs)} inputs ({', '.join(i['name'] for i in artifact.inputs)}) and the "
                "test inputs feed one")
    out = artifact.outputs[0] if artifact.outputs else {"name": "?", "shape": [], "dtype": "none"}
    if not str(out.get("dtype", "")).startswith(("float", "bfloat")) and not out.get("quantization"):
        return f"its first output '{out['name']}' holds {out.get('dtype')}, not class scores"
    shape = out.get("shape") or []
    if len(shape) != 2 or not isinstance(shape[1], int) or shape[1] < 2:
        return (f"its first output '{out['name']}' has shape {shape}: the top class of [batch, classes] scores (two "
                "or more) is what is compared with a label")
    return None


def _scorable(artifact: Artifact, data: tuple[Path, Path] | None,
              reporter: Reporter) -> tuple[Path, Path] | None:
    """The test data of an artifact whose outputs can be scored (else None, and a note why); labels past its
    classes are a mistake in the data given (every sample was scored wrong, exit 0)."""
    if data is None:
        return None
    problem = scoring_problem(artifact)
    if problem:
        reporter.note(f"no accuracy for {artifact.name}: {problem}")
        return None
    if artifact.role == BARE_FILE_ROLE and len(artifact.outputs) > 1:  # edgekd's own put their logits first
        reporter.note(f"{artifact.name}: the accuracy is of its first output, '{artifact.outputs[0]['name']}', of "
                      f"{len(artifact.outputs)}: export the class scores first if they are another")
    classes, labels = int(artifact.outputs[0]["shape"][1]), np.load(data[1], mmap_mode="r", allow_pickle=False)
    if labels.size and int(labels.max()) >= classes:
        raise BenchError(f"the eval_data labels {data[1]} go up to {int(labels.max())}, but {artifact.name} scores "
                         f"{classes} classes (0-{classes - 1})",
                         why="a label past the model's classes is never its top class: every such sample scores wrong",
                         fix="give the labels of this model's classes, or the model these labels are for")
    return data


def _first_samples(data: tuple[Path, Path] | None, count: int | None,
                   folder: Path) -> tuple[Path, Path] | None:
    """The test inputs and labels cut to their first `count` samples (BenchSettings.eval_samples), in `folder`;
    None for none (count 0), the files themselves for all (None, or no fewer samples than that)."""
    if data is None or count is None:
        return data
    if count == 0:
        return None
    if (_npy_shape(data[1], "eval_data labels") or (0,))[0] <= count:  # a 0-d array holds no rows
        return data
    out = []
    for path in data:
        first = folder / f"first{count}-{sha256_file(path)[:16]}.npy"
        if not first.is_file():  # a bench's own temp folder: several artifacts share one cut
            np.save(first, np.ascontiguousarray(np.load(path, allow_pickle=False, mmap_mode="r")[:count]))
        out.append(first)
    return out[0], out[1]


def _note_native_scoring(reporter: Reporter, device: str, natives: dict[int, tuple[str, Path]],
                         artifacts: list[Artifact], evals: dict[int, Any]) -> None:
    """Say, once per bench, which artifacts the device's benchmark tool scores (it starts once per test sample,
    which takes a while) and which it cannot, and why."""
    reasons = {artifacts[i].name: why for i, (tool, _) in natives.items()
               if (why := unscorable(tool, artifacts[i])) is not None}
    scored = [i for i in natives if artifacts[i].name not in reasons]
    if scored:
        samples = sorted({(_npy_shape(evals[i][0], "eval_data inputs") or (0,))[0] for i in scored})
        reporter.note(f"{device} has no Python: benchmark_model scores {len(scored)} artifact(s) on "
                      f"{'/'.join(map(str, samples))} test samples, starting it once per sample; bench.eval_samples "
                      "(--eval-samples) scores fewer")
    if reasons:
        reporter.note(f"no accuracy on {device} (it has no Python to run edgekd's runner) for " +
                      "; ".join(f"{name}: {why}" for name, why in reasons.items()))


def _predict_spec(session: _Session, artifact: Artifact, x: Path) -> dict[str, Any]:
    remote_x = session.push(x, f"inputs/{sha256_file(x)[:16]}.npy")
    output = f"{session.device.workdir}/outputs/{artifact.sha256[:16]}.npy"
    return {"inputs": {artifact.inputs[0]["name"]: session.relative(remote_x)}, "batch_size": 64,
            "output": session.relative(output), "_remote_output": output}


def _is_cross_arch(device: Device, raw: dict[str, Any]) -> bool:
    """Compare with this host when the device is emulated or its CPU architecture is not this host's."""
    arch = (raw.get("system") or {}).get("machine")
    return device.profile.emulated or (arch is not None and arch != platform.machine())


def _runtime_label(runtime: dict[str, Any]) -> str:
    return f"{runtime.get('name')} {runtime.get('version')}"


def cross_arch_parity(artifact: Artifact, x: Path, device_outputs: Path, device_raw: dict[str, Any],
                      folder: Path) -> dict[str, Any]:
    """The artifact's outputs on the test inputs computed on this host by the same runner, compared with the
    device's: top-1 agreement and max abs error. ARM-only kernel differences (e.g. INT8 paths of XNNPACK or
    MLAS) show here, where the device's accuracy alone could hide them."""
    from edgekd.devices.profiles import open_device

    parity: dict[str, Any] = {"host_arch": platform.machine(),
                              "device_arch": (device_raw.get("system") or {}).get("machine"),
                              "device_runtime": (f"{device_raw['native']['tool']} (native)" if "native" in device_raw
                                                 else _runtime_label(device_raw.get("runtime") or {}))}
    folder.mkdir(parents=True, exist_ok=True)
    host = open_device("host")
    try:
        session = _Session(host, folder)
        quick = BenchSettings(threads=1, warmup_runs=0, warmup_min_seconds=0.0, min_runs=1, max_runs=1, min_seconds=0.0,
                              max_seconds=1.0, memory_runs=0)  # one timed call: only the outputs matter here
        predict = _predict_spec(session, artifact, x)
        remote = predict.pop("_remote_output")
        spec = {**_spec(session, artifact, quick, None, folder), "predict": predict}
        out = session.run_spec(spec, "host", runner_timeout(spec))
        host.pull(remote, folder / "host_outputs.npy")
    except EdgeKDError as exc:  # e.g. this host lacks the runtime: the device's result still stands
        return {**parity, "error": f"cannot run {artifact.name} on this host: {exc.what}"}
    finally:
        host.close()
    mine = np.load(folder / "host_outputs.npy", allow_pickle=False).astype(np.float64)
    theirs = np.load(device_outputs, allow_pickle=False).astype(np.float64)
    if mine.shape != theirs.shape:
        return {**parity, "error": f"output shapes differ: host {list(mine.shape)}, device {list(theirs.shape)}"}
    agreement = float((mine.argmax(axis=1) == theirs.argmax(axis=1)).mean())
    return {**parity, "host_runtime": _runtime_label(out.get("runtime") or {}), "samples": int(len(mine)),
            "agreement": agreement, "max_abs_error": float(np.abs(mine - theirs).max()),
            "mean_abs_error": float(np.abs(mine - theirs).mean()),
            "passed": agreement >= CROSS_ARCH_MIN_AGREEMENT}


def _score(session: _Session, remote_output: str, labels: Path, local: Path) -> dict[str, Any]:
    """Pull the device's outputs and score them against the labels (here, not on the device)."""
    session.device.pull(remote_output, local)
    return _scored(local, labels)


def _scored(local: Path, labels: Path) -> dict[str, Any]:
    """The accuracy of the device's outputs (an .npy here) against the labels."""
    outputs, y = np.load(local, allow_pickle=False), np.load(labels, allow_pickle=False)
    if len(outputs) != len(y):
        raise BenchError(f"the device returned {len(outputs)} outputs for {len(y)} test samples",
                         fix="check the artifact's output shape")
    return {"samples": int(len(y)), "accuracy": float((outputs.argmax(axis=1) == y).mean())}


def _spec(session: _Session, artifact: Artifact, settings: BenchSettings, inputs: InputFiles | None,
          local_tmp: Path) -> dict[str, Any]:
    """The runner spec of one artifact, with the artifact and its inputs pushed to the device."""
    from edgekd.export.formats import FORMATS

    given = _given_feeds(artifact, inputs)
    local_feeds = dict(given)
    if len(given) < len(artifact.inputs):  # made up at the batch of the inputs given, if any
        folder = local_tmp / artifact.sha256[:16]
        folder.mkdir(parents=True, exist_ok=True)
        shapes = [_npy_shape(path, f"inputs['{name}']") for name, path in given.items()]
        batch = next((shape[0] for shape in shapes if shape), settings.batch_size)
        made_up = _synthetic_inputs(artifact, batch, folder, settings.dims)
        local_feeds.update({k: Path(v) for k, v in made_up.items() if k not in given})
        _warn_dims(session.reporter, artifact, settings, given=given)
    feeds = {name: session.relative(session.push(path, f"inputs/{sha256_file(path)[:16]}.npy"))
             for name, path in local_feeds.items()}
    return {"artifact": session.relative(_push_model(session, artifact)), "runtime": FORMATS[artifact.format]().runtime,
            "threads": settings.threads, "inputs": feeds, "warmup_runs": settings.warmup_runs,
            "warmup_min_seconds": settings.warmup_min_seconds, "min_runs": settings.min_runs,
            "min_seconds": settings.min_seconds, "max_seconds": settings.max_seconds,
            "max_runs": settings.max_runs, "memory_runs": settings.memory_runs,
            "windows": SUSTAINED_WINDOWS if settings.sustained else 0, "lock_wait_seconds": device_wait(settings)}


def _push_model(session: _Session, artifact: Artifact) -> str:
    """Push the model file, named after its content; one with external data goes into a folder named after the
    content of all its files, under its own name with its data files beside it, where onnxruntime looks."""
    if not artifact.external_data:
        return session.push(artifact.path, f"artifacts/{artifact.sha256[:16]}{artifact.path.suffix}")
    digests = artifact.file_digests()  # data files may be GBs: each is hashed once
    folder = f"artifacts/{artifact.sha256[:16]}"
    pushed = {name: session.push(artifact.directory / name, f"{folder}/{name}", exactly_there=True, digest=digest)
              for name, digest in digests.items()}
    return pushed[artifact.file]


def runner_budget(max_seconds: float) -> float:
    """What one runner call may take once it has the device: its max_seconds three times over (warmup, timed
    loop, slack) plus RUNNER_GRACE_S."""
    return max_seconds * 3 + RUNNER_GRACE_S


def runner_timeout(spec: dict[str, Any]) -> float:
    """When to stop waiting for a runner: its wait for the device (lock_wait_seconds) plus its own budget."""
    return spec["lock_wait_seconds"] + runner_budget(spec["max_seconds"])


def device_wait(settings: BenchSettings) -> float:
    """The runner's lock_wait_seconds: $EDGEKD_DEVICE_WAIT, else runner_budget (see DEVICE_WAIT_ENV)."""
    configured = os.environ.get(DEVICE_WAIT_ENV)
    if not configured:
        return runner_budget(settings.max_seconds)
    try:
        seconds = float(configured)
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError
    except ValueError:
        raise BenchError(f"{DEVICE_WAIT_ENV}={configured!r} is not a number of seconds",
                         why="it says how long a runner waits for another bench that holds the device",
                         fix=f"set {DEVICE_WAIT_ENV} to seconds >= 0 (0: fail at once), or unset it") from None
    return seconds


def _note_device_lock(raw: dict[str, Any], device: str, reporter: Reporter, said: set[str]) -> None:
    """Say that a runner waited for another bench on the device, and how long (it said that it waits when it
    began to: _Session._notice), or, once per bench, that the device has no bench lock of its own."""
    lock = raw.get("device_lock") or {}
    if lock.get("state") == "held" and lock.get("waited_s"):
        reporter.note(f"{device}: waited {lock['waited_s']:.1f} s for another bench on the device "
                      f"({printable(str(lock.get('waited_for')))}) to end")
    elif lock.get("state") == "unavailable" and "unavailable" not in said:
        said.add("unavailable")
        reporter.note(f"[warning] {device}: no device-side bench lock ({printable(str(lock.get('why')))}): a bench "
                      "started from another machine or by another user could measure on it at the same time")


def _latency(latencies: list[int], round_p50s: list[float], settings: BenchSettings) -> dict[str, Any]:
    """The pooled summary, with the interval of the p50 across the rounds (fresh processes) beside the one
    within them, and a run that stopped at max_seconds short of min_runs marked unstable."""
    summary = stats.summarize(latencies)
    summary["ci95_p50_rounds"] = stats.rounds_interval(round_p50s)
    wanted = min(settings.min_runs, settings.max_runs)  # over all rounds (each round times its share)
    if summary["n"] < wanted:
        summary["unstable_reasons"].append(f"{summary['n']} timed calls of the {wanted} asked for: max_seconds "
                                           f"({settings.max_seconds:g} s over {len(round_p50s)} rounds) came first; "
                                           "raise max_seconds (a recipe's bench.max_seconds) or lower min_runs")
        summary["unstable"] = True
    return summary


def _timed_inputs(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The inputs a result was timed with (name, shape, dtype): part of what `edgekd compare` pairs on."""
    return [{k: t.get(k) for k in ("name", "shape", "dtype")} for t in tensors]


def _timer_overhead_us(raws: list[dict[str, Any]]) -> float | None:
    """The runner's timer cost per timed call (µs, median over the rounds), None when a round did not
    measure it (a runner from before it did)."""
    values = [(raw.get("timer") or {}).get("overhead_ns") for raw in raws]
    return None if not values or None in values else float(np.median(values)) / 1e3


def _native_result(raws: list[dict[str, Any]], artifact: Artifact, device: Device,
                   settings: BenchSettings) -> BenchResult:
    """A native tool prints summaries, not per-call times: its rounds are combined as the runner's are where
    a summary allows it (total calls, interval of the p50 over the rounds; see native.latency_summary)."""
    from edgekd.bench import native

    fields = native.bench_result_fields([raw["native"] for raw in raws])
    timed = raws[0]["inputs"]  # the tool's own data, at the shapes it was given
    return BenchResult(artifact=_artifact_summary(artifact), device=_device_summary(device, raws[0]),
                       emulated=device.profile.emulated, settings=asdict(settings), inputs=timed,
                       device_lock=[raw["device_lock"] for raw in raws if raw.get("device_lock")], **fields)


def _artifact_summary(artifact: Artifact) -> dict[str, Any]:
    """What a result keeps of its artifact; `run` is the `edgekd run` that exported it (None: no run made the
    file), so the history can say which run a changed file came from."""
    run = artifact.lineage.get("run")
    return {"name": artifact.name, "sha256": artifact.sha256, "format": artifact.format,
            "precision": artifact.precision, "role": artifact.role, "size_bytes": artifact.size_bytes,
            "parameters": artifact.parameters, "path": str(artifact.path),
            "run": run if isinstance(run, str) and run else None}


def _device_summary(device: Device, raw: dict[str, Any]) -> dict[str, Any]:
    """The device as the result records it, with a check that the requested CPU pinning took effect
    (the runner reports the affinity it actually ran with)."""
    affinity = (raw.get("system") or {}).get("affinity")
    wanted = device.profile.cpus
    return {"name": device.name, "kind": device.profile.kind, "emulated": device.profile.emulated,
            "arch": (raw.get("system") or {}).get("machine"), "cpus": wanted, "affinity": affinity,
            "pinning_applied": None if not wanted or affinity is None else sorted(affinity) == sorted(wanted),
            "info": {"system": raw.get("system"), "python": raw.get("python"), "numpy": raw.get("numpy")},
            **({"emulator": device.emulator} if getattr(device, "emulator", None) else {})}


def to_result(raws: list[dict[str, Any]], artifact: Artifact, device: Device, settings: BenchSettings) -> BenchResult:
    """Pool the rounds of one artifact: all timed calls together, per-round medians kept to show the spread."""
    if "native" in raws[0]:
        return _native_result(raws, artifact, device, settings)
    first = raws[0]
    latencies = [ns for raw in raws for ns in raw["latencies_ns"]]
    round_p50s = [float(np.median(raw["latencies_ns"])) / 1e3 for raw in raws]
    peaks = [raw.get("memory_kb", {}) for raw in raws]
    # The round with the highest peak, whole: its peak less ITS OWN baseline is what the model added (another
    # round's baseline differs by what that process's interpreter and runtime took before the model loaded).
    memory = dict(max(peaks, key=lambda p: p.get("vmhwm") or 0) if all(p.get("vmhwm") for p in peaks) else peaks[0])
    return BenchResult(
        artifact=_artifact_summary(artifact),
        device=_device_summary(device, first),
        emulated=device.profile.emulated,
        harness="runner",
        settings=asdict(settings),
        runtime=first.get("runtime", {}),
        latency_us={**_latency(latencies, round_p50s, settings), "timer_overhead_us": _timer_overhead_us(raws)},
        round_p50_us=round_p50s,
        inputs=_timed_inputs(first.get("inputs") or []),
        load_ms=float(np.median([raw["load_ms"] for raw in raws])),
        first_inference_us=float(np.median([raw["first_inference_us"] for raw in raws])),
        memory_kb=memory,
        device_lock=[raw["device_lock"] for raw in raws if raw.get("device_lock")],
        latencies_ns=latencies,
    )
