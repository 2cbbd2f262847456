"""edgekd device-side benchmark runner.

This single file is copied to a device (phone, ARM board, the host) and run
there with the device's own Python::

    python3 runner.py SPEC.json      # spec from a file; relative paths resolve against its folder
    python3 runner.py -              # spec JSON on stdin; relative paths resolve against the cwd
    python3 runner.py --info         # describe this device and the runtimes it has
    python3 runner.py --tether S SPEC.json   # what edgekd runs: stdin is the host's link (see tether())

It deliberately imports only the standard library, numpy and the one runtime
the spec names (imported lazily), because board Pythons rarely have more and
every extra import would show up in the memory numbers.  It never imports
torch or any ``edgekd`` module.

Stdout carries exactly one JSON object (schema ``edgekd.runner/1``); anything
a native library prints to stdout is redirected to stderr so the host can
always parse the result.  Exit status is 0 on success and 3 on failure, with
``{"ok": false, "error": {"kind", "what", "why", "fix"}}`` explaining it.
Exit status 4 means the host's link went away (--tether) and the run was abandoned.

Phases, each reported separately (like LiteRT's ``benchmark_model``):
baseline memory -> load -> first inference -> memory pass -> warmup ->
timed loop (with ``windows``: summarised per time window, see windowed_loop) -> the timer's own cost (the
same loop around a call that does nothing; recorded as ``timer.overhead_ns``, not subtracted) -> optional
predict pass (for on-device accuracy, not timed). All of them run holding the device's bench lock (DeviceLock:
one runner measures on a device at a time, whoever started it); a runner that finds it held waits, bounded.
"""

from __future__ import annotations

import errno
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import select
import stat
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, TextIO, Tuple

# Started as `python WORKDIR/edgekd_runner-SHA.py`, Python puts the work directory first on sys.path, where a stray
# numpy.py (or onnxruntime/) would shadow the real module. The runner is one file and imports nothing from there.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

try:  # numpy is required for a run, but --info and error reporting must work without it.
    import numpy as np
except ImportError:  # pragma: no cover - exercised only on bare devices
    np = None  # type: ignore[assignment]

SCHEMA = "edgekd.runner/1"
INFO_SCHEMA = "edgekd.runner-info/1"
EXIT_OK = 0
EXIT_ERROR = 3
EXIT_LINK_LOST = 4  # --tether: the host closed stdin or went silent
# A stderr line that starts with this is for the user to see while the runner runs (the host shows it as it
# comes: see notice()); the host reads the rest of stderr only when the runner ends, to explain a failure.
NOTICE = "edgekd runner notice: "

# How often (in wall time) the timed loop looks at the clock to decide whether
# to stop.  Checking once per chunk instead of once per call keeps the loop
# body to two perf_counter_ns calls and the invoke; 5 ms makes the overshoot
# past min/max_seconds negligible.
CHECK_INTERVAL_S = 0.005
MAX_CHUNK_RUNS = 1000
TIMER_RUNS = 2000  # calls of nothing timed to measure the timer's own cost (~0.3 ms)

# CPU features that matter for inference kernels, as spelled in
# /proc/cpuinfo "flags" (x86) or "Features" (ARM).  asimddp is ARM dotprod.
CPU_FEATURES_OF_INTEREST = (
    "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
    "neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme",
)


class RunnerError(Exception):
    """A failure the host can act on: kind + what went wrong, why, and how to fix it."""

    def __init__(self, kind: str, what: str, why: Optional[str] = None, fix: Optional[str] = None):
        super().__init__(what)
        self.kind = kind
        self.what = what
        self.why = why
        self.fix = fix

    def to_json(self) -> Dict[str, Any]:
        return {
            "schema": SCHEMA,
            "ok": False,
            "error": {"kind": self.kind, "what": self.what, "why": self.why, "fix": self.fix},
        }


# --------------------------------------------------------------------------- spec

_REQUIRED = object()

# key -> (accepted type name, default).  The type names are checked by _check_type.
SPEC_FIELDS: Dict[str, Any] = {
    "artifact": ("str", _REQUIRED),
    "runtime": ("str", _REQUIRED),
    "inputs": ("inputs", _REQUIRED),
    "threads": ("int>=1", 1),
    "warmup_runs": ("int>=0", 20),
    "warmup_min_seconds": ("float>=0", 0.2),
    "min_runs": ("int>=1", 200),
    "min_seconds": ("float>=0", 1.0),
    "max_seconds": ("float>0", 10.0),
    "max_runs": ("int>=1", 200000),
    # > 0: summarise the timed loop in this many windows of max_seconds and keep a sample of max_runs calls
    # instead of every call, for runs longer than max_runs calls (windowed_loop); 0: keep every call.
    "windows": ("int>=0", 0),
    "memory_runs": ("int>=0", 10),
    "predict": ("predict", None),
    # How long to wait for another bench's runner that holds the device (DeviceLock) before failing with
    # "device_busy". The host sets it to what one of its runners may take.
    "lock_wait_seconds": ("float>=0", 300.0),
}
PREDICT_FIELDS: Dict[str, Any] = {
    "inputs": ("inputs", _REQUIRED),
    "batch_size": ("int>=1", 64),
    "output": ("str", _REQUIRED),
}


def _check_type(where: str, value: Any, kind: str) -> None:
    """Raise a "spec" error unless value fits kind; bools are not numbers here."""
    ok: bool
    if kind == "str":
        ok = isinstance(value, str) and value != ""
        expected = "a non-empty string"
    elif kind.startswith("int"):
        low = int(kind[len("int>="):])
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        expected = f"an integer >= {low}"
    elif kind.startswith("float"):
        strict = kind.endswith(">0")
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value > 0 if strict else value >= 0)
        )
        expected = "a number > 0" if strict else "a number >= 0"
    elif kind == "inputs":
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
        )
        expected = 'an object mapping input name -> .npy path, e.g. {"x": "x.npy"}'
    else:  # pragma: no cover - programming error
        raise AssertionError(kind)
    if not ok:
        raise RunnerError(
            "spec",
            f"spec field {where!r} must be {expected}, got {value!r}",
            fix=f"fix {where!r} in the spec",
        )


def _validate_fields(raw: Any, fields: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Apply defaults and reject unknown keys, so a typo never silently uses a default."""
    if not isinstance(raw, dict):
        raise RunnerError("spec", f"{where} must be a JSON object, got {type(raw).__name__}",
                          fix=f"known keys: {', '.join(fields)}")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise RunnerError(
            "spec",
            f"unknown key(s) in {where}: {', '.join(unknown)}",
            why="a misspelt key would otherwise be ignored and its default used",
            fix=f"known keys: {', '.join(fields)}",
        )
    out: Dict[str, Any] = {}
    for key, (kind, default) in fields.items():
        if key not in raw:
            if default is _REQUIRED:
                raise RunnerError("spec", f"{where} is missing the required key {key!r}",
                                  fix=f"required keys: {', '.join(k for k, v in fields.items() if v[1] is _REQUIRED)}")
            out[key] = default
            continue
        value = raw[key]
        label = key if where == "spec" else f"{where}.{key}"
        if kind == "predict":
            out[key] = None if value is None else _validate_fields(value, PREDICT_FIELDS, "predict")
        else:
            _check_type(label, value, kind)
            out[key] = float(value) if kind.startswith("float") else value
    return out


THREADS_PER_CORE = 8  # oversubscribing a device is a measurement one may want; thousands of threads are a typo


def validate_spec(raw: Any) -> Dict[str, Any]:
    """Return the spec with defaults filled in, or raise a "spec" RunnerError."""
    spec = _validate_fields(raw, SPEC_FIELDS, "spec")
    if spec["runtime"] not in RUNTIMES:
        raise RunnerError(
            "spec",
            f"unknown runtime {spec['runtime']!r}",
            fix=f"known runtimes: {', '.join(sorted(RUNTIMES))}",
        )
    if spec["min_runs"] > spec["max_runs"] and not spec["windows"]:  # with windows, max_runs bounds a sample
        raise RunnerError("spec", f"min_runs ({spec['min_runs']}) exceeds max_runs ({spec['max_runs']})",
                          fix="raise max_runs or lower min_runs")
    if spec["min_seconds"] > spec["max_seconds"]:
        raise RunnerError("spec", f"min_seconds ({spec['min_seconds']}) exceeds max_seconds ({spec['max_seconds']})",
                          fix="raise max_seconds or lower min_seconds")
    cores = os.cpu_count() or 1
    if spec["threads"] > THREADS_PER_CORE * cores:
        raise RunnerError("spec", f"threads {spec['threads']} is more than {THREADS_PER_CORE}x the {cores} cores of "
                                  "this device",
                          why="the runtime starts that many threads: a million made the bench hang while the kernel "
                              "refused their stacks; past the cores, threads only contend for them",
                          fix=f"use at most {cores} threads (the device's cores), or up to {THREADS_PER_CORE * cores} "
                              "to measure oversubscription")
    return spec


def read_spec(arg: str) -> "tuple[Dict[str, Any], str]":
    """Read the spec from a file or stdin ("-"); return it and the folder relative paths resolve against."""
    try:
        if arg == "-":
            text, base = sys.stdin.read(), os.getcwd()
        else:
            with open(arg, encoding="utf-8") as f:
                text = f.read()
            base = os.path.dirname(os.path.abspath(arg))
    except OSError as e:
        raise RunnerError("spec", f"cannot read spec {arg!r}", why=str(e), fix="pass an existing JSON file or '-' for stdin")
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise RunnerError("spec", "spec is not valid JSON", why=str(e), fix="write the spec as one JSON object")
    return validate_spec(raw), base


def resolve(path: str, base: str) -> str:
    """Spec paths are relative to the spec's folder so a pushed bundle works from any cwd."""
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))


# --------------------------------------------------------------------------- runtimes

TensorInfo = Dict[str, Any]  # {"name": str, "shape": [int | str | None], "dtype": str | None}
Invoker = Tuple[Callable[[Any], Any], Any]  # (fn, arg): one inference is fn(arg)


class Model:
    """What every runtime adapter returns from load(): feed once, invoke many times, fetch.

    The split exists so the timed loop calls the runtime with inputs already
    bound and no per-call conversion.  ``invoker()`` returns ``(fn, arg)`` and
    one inference is ``fn(arg)``: a bound method plus its single argument
    (ORT: ``sess.run_with_iobinding, binding``; LiteRT would use
    ``Interpreter.invoke, interpreter``).  A functools.partial or lambda
    around it measurably added ~0.13 µs (~4%) to a 3.4 µs call here.
    """

    inputs: List[TensorInfo]
    outputs: List[TensorInfo]

    def feed(self, arrays: Dict[str, Any]) -> None:
        raise NotImplementedError

    def invoker(self) -> Invoker:
        raise NotImplementedError

    def fetch(self) -> List[Any]:
        raise NotImplementedError

    def runtime_info(self) -> Dict[str, Any]:
        raise NotImplementedError


class RuntimeAdapter(NamedTuple):
    """How to import a runtime and load an artifact with it.

    ``module`` is the import name (probed by --info without importing),
    ``distributions`` the pip names it may be installed under, and ``load``
    is called as load(module, path, threads) -> Model.  A NamedTuple rather
    than a dataclass so the file also loads via importlib without being
    registered in sys.modules (dataclasses look their module up there).
    """

    module: str
    distributions: Sequence[str]
    pip_hint: str
    load: Callable[[Any, str, int], Model]


_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(int16)": "int16", "tensor(uint16)": "uint16", "tensor(int32)": "int32",
    "tensor(uint32)": "uint32", "tensor(int64)": "int64", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool", "tensor(string)": "object",
}


class OrtModel(Model):
    """onnxruntime session driven through IOBinding.

    Binding inputs once as OrtValues and outputs to CPU roughly halves ORT's
    per-call floor compared with sess.run(feeds), which converts the feed dict
    on every call; for tiny models that floor would otherwise dominate.
    """

    def __init__(self, ort: Any, path: str, threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._ort = ort
        self._threads = threads
        self._sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._binding = self._sess.io_binding()
        self._arrays: Dict[str, Any] = {}
        self.inputs = [self._info(a) for a in self._sess.get_inputs()]
        self.outputs = [self._info(a) for a in self._sess.get_outputs()]

    @staticmethod
    def _info(arg: Any) -> TensorInfo:
        shape = [d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else None) for d in arg.shape]
        return {"name": arg.name, "shape": shape, "dtype": _ORT_DTYPES.get(arg.type, arg.type)}

    def feed(self, arrays: Dict[str, Any]) -> None:
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        self._arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}  # OrtValues share this memory
        for name, array in self._arrays.items():
            binding.bind_ortvalue_input(name, self._ort.OrtValue.ortvalue_from_numpy(array))
        for out in self.outputs:
            binding.bind_output(out["name"], "cpu")

    def invoker(self) -> Invoker:
        return self._sess.run_with_iobinding, self._binding

    def fetch(self) -> List[Any]:
        return list(self._binding.copy_outputs_to_cpu())

    def runtime_info(self) -> Dict[str, Any]:
        return {
            "name": "onnxruntime",
            "version": self._ort.__version__,
            "providers": list(self._sess.get_providers()),
            "intra_op_threads": self._threads,
            "inter_op_threads": 1,
            "execution_mode": "sequential",
            "io_binding": True,
            "delegate": None,
        }


LITERT_DISTRIBUTIONS = ("ai-edge-litert", "ai-edge-litert-nightly")


def delegation(ops: List[Dict[str, Any]]) -> "tuple[set, Dict[str, int]]":
    """(indices of operators a DELEGATE node took, counts of the operators left) from LiteRT's ops details.

    A DELEGATE node replaces the operators between its inputs and outputs; walking back from its outputs
    to its inputs finds them. Also used on the host (edgekd.export.tflite), so it lives here, import-free.
    """
    plain = {op["index"]: op for op in ops if op["op_name"] != "DELEGATE"}
    producer = {int(t): i for i, op in plain.items() for t in op["outputs"]}
    taken: set = set()
    for node in (op for op in ops if op["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            tensor = stack.pop()
            i = producer.get(tensor)
            if tensor in boundary or i is None or i in taken:
                continue
            taken.add(i)
            stack.extend(int(t) for t in plain[i]["inputs"])
    left: Dict[str, int] = {}
    for i, op in plain.items():
        if i not in taken:
            left[op["op_name"]] = left.get(op["op_name"], 0) + 1
    return taken, left


class LiteRTModel(Model):
    """LiteRT (TFLite) ``ai_edge_litert.interpreter.Interpreter`` with its default XNNPACK delegate.

    Uses only API present in ai-edge-litert 1.4 (ARM boards) and 2.x. Tensors
    are named by the model's signature (``x``/``logits``) when it has one. An
    integer-quantized input (e.g. ``static_wi8_ai8`` makes it int8) is given
    as float and quantized with the tensor's (scale, zero point) in feed();
    integer outputs are dequantized in fetch(): both outside the timed call,
    which is ``invoke()`` alone.
    """

    def __init__(self, litert: Any, path: str, threads: int):
        self._threads = threads
        self._interpreter = litert.Interpreter(model_path=path, num_threads=threads)
        self._interpreter.allocate_tensors()
        self._invoke = litert.Interpreter.invoke
        self._in, self._out = self._signature_io()
        self._shapes = {d["index"]: [int(v) for v in d["shape"]] for _, d in self._in}
        self.inputs = [self._info(name, d) for name, d in self._in]
        self.outputs = [self._info(name, d) for name, d in self._out]

    def _signature_io(self) -> "tuple[List[Tuple[str, Dict]], List[Tuple[str, Dict]]]":
        interp = self._interpreter
        inputs, outputs = interp.get_input_details(), interp.get_output_details()
        plain = ([(d["name"], d) for d in inputs], [(d["name"], d) for d in outputs])
        try:
            signatures = interp.get_signature_list()
            if len(signatures) != 1:  # none, or several (each its own subgraph): use the main subgraph's tensors
                return plain
            runner = interp.get_signature_runner(next(iter(signatures)))
            named = ([(n, d["index"]) for n, d in runner.get_input_details().items()],
                     [(n, d["index"]) for n, d in runner.get_output_details().items()])
        except (AttributeError, ValueError, KeyError):  # an older runtime without signature runners
            return plain
        by_index = {d["index"]: d for d in inputs + outputs}
        if not all(i in by_index for pairs in named for _, i in pairs):
            return plain
        return [(n, by_index[i]) for n, i in named[0]], [(n, by_index[i]) for n, i in named[1]]

    @staticmethod
    def _quantization(d: Dict[str, Any]) -> "Optional[Tuple[float, int]]":
        scale, zero_point = d["quantization"]
        if scale and np.dtype(d["dtype"]).kind in "iu":
            return float(scale), int(zero_point)
        return None

    def _info(self, name: str, d: Dict[str, Any]) -> TensorInfo:
        shape = [int(v) if v >= 0 else None for v in d.get("shape_signature", d["shape"])]
        dtype = np.dtype(d["dtype"]).name
        info: TensorInfo = {"name": name, "shape": shape, "dtype": dtype}
        quant = self._quantization(d)
        if quant is not None:  # the caller gives/gets float; the model holds integers
            info.update(dtype="float32", model_dtype=dtype, quantization={"scale": quant[0], "zero_point": quant[1]})
        return info

    def feed(self, arrays: Dict[str, Any]) -> None:
        interp = self._interpreter
        values = []
        for name, d in self._in:
            array = np.asarray(arrays[name])
            quant = self._quantization(d)
            if quant is not None:
                limits = np.iinfo(np.dtype(d["dtype"]))
                array = np.clip(np.round(array / quant[0]) + quant[1], limits.min, limits.max)
            values.append((d["index"], np.ascontiguousarray(array, dtype=d["dtype"])))
        resized = False
        for index, value in values:
            if list(value.shape) != self._shapes[index]:
                interp.resize_tensor_input(index, list(value.shape))
                self._shapes[index] = list(value.shape)
                resized = True
        if resized:
            interp.allocate_tensors()
        for index, value in values:
            interp.set_tensor(index, value)

    def invoker(self) -> Invoker:
        return self._invoke, self._interpreter

    def fetch(self) -> List[Any]:
        out = []
        for _, d in self._out:
            value = self._interpreter.get_tensor(d["index"])
            quant = self._quantization(d)
            if quant is not None:
                value = ((value.astype(np.float32) - quant[1]) * quant[0]).astype(np.float32)
            out.append(value)
        return out

    def _undelegated_ops(self) -> Optional[Dict[str, int]]:
        """Operators left outside XNNPACK's DELEGATE nodes (they run on LiteRT's built-in kernels)."""
        try:
            ops = self._interpreter._get_ops_details()  # noqa: SLF001 - present in 1.4 and 2.x
        except Exception:
            return None
        return delegation(ops)[1]

    def runtime_info(self) -> Dict[str, Any]:
        return {
            "name": "litert",
            "version": _module_version("ai_edge_litert", LITERT_DISTRIBUTIONS),
            "threads": self._threads,
            "delegate": "xnnpack (default)",
            "undelegated_ops": self._undelegated_ops(),
            "quantized_io": {i["name"]: {"dtype": i["model_dtype"], **i["quantization"]}
                             for i in self.inputs + self.outputs if "model_dtype" in i},
        }


# A runtime is one Model subclass plus one entry here.
RUNTIMES: Dict[str, RuntimeAdapter] = {
    "onnxruntime": RuntimeAdapter(
        module="onnxruntime",
        distributions=("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-qnn",
                       "onnxruntime-directml", "onnxruntime-silicon", "ort-nightly"),
        pip_hint="pip install onnxruntime",
        load=OrtModel,
    ),
    "litert": RuntimeAdapter(
        module="ai_edge_litert.interpreter",
        distributions=LITERT_DISTRIBUTIONS,
        pip_hint="pip install ai-edge-litert",
        load=LiteRTModel,
    ),
}

# Modules --info reports, whether or not an adapter exists yet.
PROBED_MODULES: Dict[str, Sequence[str]] = {
    "onnxruntime": RUNTIMES["onnxruntime"].distributions,
    "ai_edge_litert": ("ai-edge-litert", "ai-edge-litert-nightly"),
}


def install_hint(package: str, pip_hint: str) -> str:
    """How to install a package for this Python. A wrapper around it may say (EDGEKD_PIP_INSTALL, with
    {package}), e.g. an emulated board whose packages are installed from its host; else pip on the device."""
    hint = os.environ.get("EDGEKD_PIP_INSTALL")
    if hint:
        return hint.replace("{package}", package) if "{package}" in hint else f"{hint} {package}"
    return f"on the device: {sys.executable} -m {pip_hint}"


def import_runtime(name: str) -> Any:
    """Import the runtime module; a missing module is the device's problem, so say how to install it."""
    adapter = RUNTIMES[name]
    try:
        return importlib.import_module(adapter.module)
    except ImportError as e:
        raise RunnerError(
            "runtime_missing",
            f"runtime {name!r} is not installed in this Python ({sys.executable})",
            why=f"import {adapter.module} failed: {e}",
            fix=install_hint(adapter.distributions[0], adapter.pip_hint),
        )


def load_model(name: str, module: Any, path: str, threads: int) -> Model:
    if not os.path.isfile(path):
        raise RunnerError("artifact_missing", f"artifact not found: {path}",
                          fix="push the artifact to the device or fix 'artifact' in the spec")
    try:
        return RUNTIMES[name].load(module, path, threads)
    except Exception as e:  # runtimes raise their own exception types
        raise RunnerError(
            "artifact_load",
            f"{name} could not load {path}",
            why=f"{type(e).__name__}: {e}".strip(),
            fix=("register the library that implements its custom operators with the runtime, or export the model "
                 "with standard ones" if "is not a registered function/op" in str(e) else
                 "re-export the artifact; check it is complete (size, sha256) and that this runtime version supports "
                 "its opset/ops"),
        )


# --------------------------------------------------------------------------- inputs

def describe_inputs(infos: Sequence[TensorInfo]) -> str:
    return "; ".join(f"{i['name']}: {i['dtype']} {i['shape']}" for i in infos)


def load_arrays(paths: Dict[str, str], base: str) -> Dict[str, Any]:
    arrays: Dict[str, Any] = {}
    for name, rel in paths.items():
        path = resolve(rel, base)
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise RunnerError("input", f"input file for {name!r} not found: {path}",
                              fix="push the .npy file or fix the path in the spec")
        except (OSError, ValueError) as e:
            raise RunnerError("input", f"cannot read input {name!r} from {path}", why=str(e),
                              fix="save it with numpy.save (no pickled objects)")
    return arrays


def check_arrays(arrays: Dict[str, Any], infos: Sequence[TensorInfo], *, any_batch: bool = False) -> None:
    """Fail early with the model's signature rather than with a runtime's cryptic shape error.

    any_batch relaxes the first dimension (the predict pass slices and pads batches itself).
    """
    expected = {i["name"] for i in infos}
    given = set(arrays)
    if given != expected:
        missing, extra = sorted(expected - given), sorted(given - expected)
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(extra)}"] if extra else [])
        raise RunnerError("input", f"input names do not match the model ({'; '.join(parts)})",
                          why=f"model inputs: {describe_inputs(infos)}",
                          fix="use the model's input names as keys of 'inputs'")
    for info in infos:
        array = arrays[info["name"]]
        want = info["shape"]
        dtype = str(array.dtype)
        if info["dtype"] in _KNOWN_DTYPES and dtype != info["dtype"] and not _fits_integer(array, info["dtype"]):
            raise RunnerError("input", f"input {info['name']!r} has dtype {dtype}, the model expects {info['dtype']}",
                              why=f"model inputs: {describe_inputs(infos)}",
                              fix=f"save the array as {info['dtype']} (array.astype(numpy.{info['dtype']}))")
        bad = len(array.shape) != len(want) or any(
            isinstance(w, int) and w != got and not (any_batch and axis == 0)
            for axis, (w, got) in enumerate(zip(want, array.shape))
        )
        if any_batch and len(array.shape) == 0:
            bad = True
        if bad:
            raise RunnerError("input", f"input {info['name']!r} has shape {list(array.shape)}, the model expects {want}",
                              why=f"model inputs: {describe_inputs(infos)}",
                              fix="match the model's rank and fixed dimensions (named dimensions may be any size)")


_KNOWN_DTYPES = set(_ORT_DTYPES.values()) - {"bfloat16", "object"}


def _fits_integer(array: Any, dtype: str) -> bool:
    """Integer ids given as int64 to a model that narrowed them to int32 (the TFLite converter does) are fed
    as int32 when every value fits; anything else must match the model's dtype exactly."""
    if array.dtype.kind not in "iu" or np.dtype(dtype).kind not in "iu":
        return False
    limits = np.iinfo(np.dtype(dtype))
    return array.size == 0 or (int(array.min()) >= limits.min and int(array.max()) <= limits.max)


def tensor_json(name: str, array: Any, model_shape: Any) -> Dict[str, Any]:
    if not hasattr(array, "shape"):  # no tensor: a scikit-learn ZipMap's list of {class: probability}
        return {"name": name, "shape": None, "dtype": type(array).__name__, "model_shape": model_shape}
    return {"name": name, "shape": list(array.shape), "dtype": str(array.dtype), "model_shape": model_shape}


# --------------------------------------------------------------------------- memory and system

def read_memory_kb() -> Dict[str, Optional[int]]:
    """VmHWM (peak RSS) and VmRSS from /proc/self/status; None where it doesn't exist (macOS, Windows)."""
    out: Dict[str, Optional[int]] = {"vmhwm": None, "vmrss": None}
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key.lower()] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _cpuinfo() -> "tuple[Optional[str], List[str]]":
    """CPU model and inference-relevant feature flags from /proc/cpuinfo (x86 'flags', ARM 'Features')."""
    board = (_read_text("/proc/device-tree/model") or "").strip("\x00 \n") or None  # ARM boards: their name
    model, features = parse_cpuinfo(_read_text("/proc/cpuinfo") or "", board)
    return model or platform.processor() or None, features


def parse_cpuinfo(text: str, board: Optional[str] = None) -> "tuple[Optional[str], List[str]]":
    """(CPU model, feature flags of interest) from the text of a /proc/cpuinfo (also a device's, read by the
    harness where the device has no Python). An arm64 kernel prints no model name, only each core's part number:
    there the model is the board or SoC (`Model`, `Hardware`, else `board`: the device tree's model, Android's
    ro.soc.model) with the cores it has, as lscpu names them, e.g. "Raspberry Pi 4 Model B Rev 1.4: 4× Cortex-A72".
    A phone's big.LITTLE mix is what its latency depends on, and "BCM2835" alone (what a Pi 4's kernel says) is
    wrong. A 32-bit kernel's "ARMv7 Processor rev 3 (v7l)" (an old arm64 one's "AArch64 Processor rev 4") names
    no core either."""
    names: Dict[str, str] = {}
    flags: set = set()
    cores: List[str] = []
    implementer = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "model", "hardware", "cpu model", "processor") and value and not value.isdigit():
            names.setdefault(key, value)  # x86 "model: 85" and ARM "processor: 0" are numbers, not names
        elif key in ("flags", "features"):
            flags.update(value.split())
        elif key == "cpu implementer":
            implementer = value
        elif key == "cpu part":
            cores.append(arm_core_name(implementer, value))
    features = [f for f in CPU_FEATURES_OF_INTEREST if f in flags]
    named = names.get("model name") or names.get("cpu model") or names.get("processor")
    if named and cores and named.startswith(("ARMv", "AArch64 Processor")):  # generic: "ARMv7 Processor rev 3"
        named = None
    if named or not cores:
        return named or names.get("model") or names.get("hardware") or board, features
    counts: Dict[str, int] = {}
    for core in cores:
        counts[core] = counts.get(core, 0) + 1
    mix = " + ".join(f"{count}× {core}" for core, count in counts.items())
    board = names.get("model") or names.get("hardware") or board
    return (f"{board}: {mix}" if board else mix), features


# (CPU implementer, CPU part) of the cores edge devices have -> their name (lscpu's, util-linux lscpu-arm.c).
ARM_CORES = {
    0x41: {0xd03: "Cortex-A53", 0xd04: "Cortex-A35", 0xd05: "Cortex-A55", 0xd07: "Cortex-A57", 0xd08: "Cortex-A72",
           0xd09: "Cortex-A73", 0xd0a: "Cortex-A75", 0xd0b: "Cortex-A76", 0xd0c: "Neoverse-N1", 0xd0d: "Cortex-A77",
           0xd0e: "Cortex-A76AE", 0xd40: "Neoverse-V1", 0xd41: "Cortex-A78", 0xd42: "Cortex-A78AE",
           0xd44: "Cortex-X1", 0xd46: "Cortex-A510", 0xd47: "Cortex-A710", 0xd48: "Cortex-X2", 0xd49: "Neoverse-N2",
           0xd4b: "Cortex-A78C", 0xd4c: "Cortex-X1C", 0xd4d: "Cortex-A715", 0xd4e: "Cortex-X3",
           0xd4f: "Neoverse-V2", 0xd80: "Cortex-A520", 0xd81: "Cortex-A720", 0xd82: "Cortex-X4",
           0xd84: "Neoverse-V3", 0xd85: "Cortex-X925", 0xd87: "Cortex-A725", 0xc07: "Cortex-A7",
           0xc09: "Cortex-A9", 0xc0f: "Cortex-A15", 0xc0e: "Cortex-A17"},
    0x4e: {0x000: "Denver", 0x003: "Denver 2", 0x004: "Carmel"},
    0x51: {0x800: "Kryo-2XX-Gold", 0x801: "Kryo-2XX-Silver", 0x802: "Kryo-3XX-Gold", 0x803: "Kryo-3XX-Silver",
           0x804: "Kryo-4XX-Gold", 0x805: "Kryo-4XX-Silver", 0x001: "Oryon"},
    0x53: {0x001: "Exynos-M1", 0x002: "Exynos-M3", 0x003: "Exynos-M4", 0x004: "Exynos-M5"},
}


def arm_core_name(implementer: Optional[str], part: str) -> str:
    """A core's name from its cpuinfo `CPU implementer` and `CPU part` (hex), or the raw ids when unknown."""
    try:
        return ARM_CORES[int(implementer or "", 16)][int(part, 16)]
    except (KeyError, ValueError):
        return f"core {implementer}:{part}" if implementer else f"core part {part}"


def system_info() -> Dict[str, Any]:
    """Describe the device so results can be compared across machines (stdlib only)."""
    cpu_model, features = _cpuinfo()
    affinity: Optional[List[int]] = None
    if hasattr(os, "sched_getaffinity"):
        try:
            affinity = sorted(os.sched_getaffinity(0))
        except OSError:
            affinity = None
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "release": platform.release(),
        "cpu_model": cpu_model,
        "cpu_count_logical": os.cpu_count(),
        "cpu_features": features,
        "governor": _read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "affinity": affinity,
    }


def _module_version(module: str, distributions: Sequence[str]) -> Optional[str]:
    """Installed version of a module without importing it (importing ORT/LiteRT costs time and memory)."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        return "unknown"
    names = list(distributions)
    if hasattr(metadata, "packages_distributions"):  # Python >= 3.10
        names = list(metadata.packages_distributions().get(module, [])) + names
    for dist in names:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def device_info() -> Dict[str, Any]:
    return {
        "schema": INFO_SCHEMA,
        "python": platform.python_version(),
        "numpy": _module_version("numpy", ("numpy",)),
        "runtimes": {m: _module_version(m, d) for m, d in PROBED_MODULES.items()},
        "system": system_info(),
    }


# --------------------------------------------------------------------------- phases

def first_inference(fn: Callable[[Any], Any], arg: Any) -> float:
    """The first call pays for lazy allocation and kernel selection; report it alone, in µs."""
    t0 = time.perf_counter_ns()
    fn(arg)
    return (time.perf_counter_ns() - t0) / 1e3


def memory_pass(fn: Callable[[Any], Any], arg: Any, runs: int) -> Dict[str, Optional[int]]:
    """Run a few inferences, then read peak memory; kept apart so reading /proc never disturbs timing."""
    for _ in range(runs):
        fn(arg)
    return read_memory_kb()


def warmup(fn: Callable[[Any], Any], arg: Any, runs: int, min_seconds: float, max_seconds: float) -> Dict[str, Any]:
    """At least `runs` calls and at least `min_seconds`; capped by `max_seconds` so a slow model can't run away."""
    pc = time.perf_counter_ns
    min_ns, max_ns = int(min_seconds * 1e9), int(max_seconds * 1e9)
    n = 0
    start = pc()
    elapsed = 0
    while (n < runs or elapsed < min_ns) and not (n >= 1 and elapsed >= max_ns):
        fn(arg)
        n += 1
        elapsed = pc() - start
    return {"runs": n, "seconds": elapsed / 1e9}


def chunk_size(seconds_per_call: float) -> int:
    """Calls between clock checks: about CHECK_INTERVAL_S of work, at least 1."""
    if seconds_per_call <= 0:
        return MAX_CHUNK_RUNS
    return max(1, min(MAX_CHUNK_RUNS, int(CHECK_INTERVAL_S / seconds_per_call)))


def time_calls(fn: Callable[[Any], Any], arg: Any, into: List[int], start: int, stop: int) -> None:
    """Time calls start..stop-1 into `into` with perf_counter_ns: per call only two clock reads, the invoke
    and one store into a preallocated list (the measured path of timed_loop and windowed_loop alike)."""
    pc = time.perf_counter_ns
    for i in range(start, stop):
        t0 = pc()
        fn(arg)
        into[i] = pc() - t0


def timed_loop(
    fn: Callable[[Any], Any], arg: Any, *, min_runs: int, min_seconds: float, max_seconds: float, max_runs: int, chunk: int
) -> "tuple[List[int], float]":
    """Time each call with perf_counter_ns, like benchmark_model: >= min_runs AND >= min_seconds, capped by max_*.

    The calls are timed in chunks (time_calls); the stop condition is evaluated once per chunk.
    """
    pc = time.perf_counter_ns
    latencies = [0] * max_runs
    min_ns, max_ns = int(min_seconds * 1e9), int(max_seconds * 1e9)
    n = 0
    start = pc()
    while True:
        stop = min(n + chunk, max_runs)
        time_calls(fn, arg, latencies, n, stop)
        n = stop
        elapsed = pc() - start
        if n >= max_runs or elapsed >= max_ns or (n >= min_runs and elapsed >= min_ns):
            break
    del latencies[n:]
    return latencies, elapsed / 1e9


class Reservoir:
    """A uniform random sample of at most `size` of the values added, in bounded memory (Algorithm R).

    Every value added so far is in the sample with the same probability, size / seen; while no more than
    `size` were added, the sample is all of them. Values come in batches (a chunk of the timed loop) and a
    batch is sampled with numpy: item i (0-based over all batches) replaces slot randint(0, i) when that is
    below `size`, and of several items of a batch that draw the same slot the last one wins, exactly as
    the item-by-item algorithm would leave it. Each kept value's position in the stream is kept too, so the
    sample can be given back in call order.
    """

    def __init__(self, size: int, rng: Any):
        self.size = size
        self.rng = rng
        self.values = np.empty(size, dtype=np.int64)
        self.positions = np.empty(size, dtype=np.int64)
        self.seen = 0

    def clear(self) -> None:
        self.seen = 0

    def add(self, batch: Any) -> None:
        n = len(batch)
        free = max(0, min(n, self.size - self.seen))
        if free:
            self.values[self.seen:self.seen + free] = batch[:free]
            self.positions[self.seen:self.seen + free] = np.arange(self.seen, self.seen + free)
        if free < n:
            position = np.arange(self.seen + free, self.seen + n, dtype=np.int64)
            slot = (self.rng.random_sample(n - free) * (position + 1)).astype(np.int64)  # uniform in 0..position
            hit = np.nonzero(slot < self.size)[0]
            if hit.size:
                _, last = np.unique(slot[hit][::-1], return_index=True)  # each slot's last draw in the batch
                take = hit[hit.size - 1 - last]
                self.values[slot[take]] = batch[free:][take]
                self.positions[slot[take]] = position[take]
        self.seen += n

    def sample(self) -> Any:
        """The kept values in the order they were added."""
        k = min(self.seen, self.size)
        return self.values[:k][np.argsort(self.positions[:k], kind="stable")]


def _window(index: int, start_ns: int, end_ns: int, calls: int, total_ns: int, low: int, high: int,
            kept: Any) -> Dict[str, Any]:
    p50, p90, p99 = (float(v) for v in np.percentile(kept, [50, 90, 99]))
    return {"index": index, "start_ns": start_ns, "elapsed_ns": end_ns - start_ns, "calls": calls,
            "busy_ns": total_ns, "min_ns": low, "max_ns": high, "p50_ns": p50, "p90_ns": p90, "p99_ns": p99,
            "kept": int(len(kept))}


def windowed_loop(
    fn: Callable[[Any], Any], arg: Any, *, windows: int, keep: int, min_runs: int, min_seconds: float,
    max_seconds: float, chunk: int, seed: int = 0,
) -> "tuple[List[int], List[Dict[str, Any]], int, float]":
    """timed_loop for long runs (--sustained): the same loop and stop rule, without keeping every call.

    Returns (sample, windows, calls, seconds). max_seconds is cut into `windows` windows of equal wall time;
    each is summarised when it ends: its calls, wall and busy time, min/max (exact) and p50/p90/p99 of its
    calls (exact while a window has at most `keep` calls, else of a uniform sample of `keep` of them). A
    window no chunk of calls started in (a call longer than a window) is absent. `sample` is a uniform
    sample of at most `keep` calls of the whole run, in call order: the run's percentiles and intervals are
    estimated from it, as from every call of a short run. max_runs does not stop this loop, so it runs
    until the seconds asked at any speed; memory is two samples of `keep` plus one chunk, whatever the
    duration and the speed.
    """
    pc = time.perf_counter_ns
    rng = np.random.RandomState(seed)
    whole, current = Reservoir(keep, rng), Reservoir(keep, rng)
    buffer = [0] * chunk
    min_ns, max_ns = int(min_seconds * 1e9), int(max_seconds * 1e9)
    width = max_ns / windows
    rows: List[Dict[str, Any]] = []
    index, opened, calls, busy, low, high = 0, 0, 0, 0, None, 0
    n = 0
    start = pc()
    while True:
        time_calls(fn, arg, buffer, 0, chunk)
        elapsed = pc() - start
        batch = np.array(buffer, dtype=np.int64)
        whole.add(batch)
        current.add(batch)
        n += chunk
        calls += chunk
        busy += int(batch.sum())
        low = int(batch.min()) if low is None else min(low, int(batch.min()))
        high = max(high, int(batch.max()))
        done = elapsed >= max_ns or (n >= min_runs and elapsed >= min_ns)
        if done or elapsed >= (index + 1) * width:
            rows.append(_window(index, opened, elapsed, calls, busy, low, high, current.sample()))
            if done:
                break
            index, opened, calls, busy, low, high = min(windows - 1, int(elapsed // width)), elapsed, 0, 0, None, 0
            current.clear()
    return [int(v) for v in whole.sample()], rows, n, elapsed / 1e9


def timer_overhead(runs: int = TIMER_RUNS) -> Dict[str, Any]:
    """What the timed loop measures for a call that does nothing: its two clock reads and one call.

    Every latency includes it (~0.13 µs here, ~4% of a 3.4 µs model). It is measured by the very loop that
    times the model (timed_loop, with the builtin `id` as the call) and recorded, not subtracted: it varies
    from call to call like what it would be subtracted from, and every stored latency stays a plain clock
    difference, comparable with results written before it was measured.
    """
    samples, _ = timed_loop(id, None, min_runs=runs, min_seconds=0.0, max_seconds=1.0, max_runs=runs,
                            chunk=MAX_CHUNK_RUNS)
    samples.sort()
    return {"overhead_ns": samples[len(samples) // 2], "runs": len(samples),
            "resolution_ns": time.get_clock_info("perf_counter").resolution * 1e9}


def predict_pass(model: Model, pspec: Dict[str, Any], base: str) -> Dict[str, Any]:
    """Run a whole data set through the model and save the first output, for scoring accuracy on the device.

    A fixed batch dimension in the model wins over batch_size; the last batch
    is then zero-padded and the padding rows trimmed from the output.
    """
    arrays = load_arrays(pspec["inputs"], base)
    check_arrays(arrays, model.inputs, any_batch=True)
    rows_by_input = {name: int(a.shape[0]) for name, a in arrays.items()}
    if len(set(rows_by_input.values())) != 1:
        raise RunnerError("input", f"predict inputs must all have the same number of rows, got {rows_by_input}",
                          fix="give every predict input the same first dimension")
    rows = next(iter(rows_by_input.values()))
    if rows == 0:
        raise RunnerError("input", "predict inputs have no rows", fix="give at least one row")
    fixed = sorted({i["shape"][0] for i in model.inputs if isinstance(i["shape"][0], int)})
    if len(fixed) > 1:
        raise RunnerError("input", f"model inputs have different fixed batch sizes {fixed}",
                          why=f"model inputs: {describe_inputs(model.inputs)}", fix="export with one batch dimension")
    batch = fixed[0] if fixed else pspec["batch_size"]
    chunks = []
    t0 = time.perf_counter()
    for start in range(0, rows, batch):
        feed = {k: a[start:start + batch] for k, a in arrays.items()}
        real = min(batch, rows - start)
        if fixed and real < batch:
            feed = {k: _pad_rows(a, batch) for k, a in feed.items()}
        out = _predict_batch(model, feed, start, real)
        fed_rows = batch if fixed else real
        if out.ndim == 0 or out.shape[0] != fed_rows:
            raise RunnerError("inference", f"predict: first output has shape {list(out.shape)} for a batch of {fed_rows} rows",
                              why="predict needs a batch-major first output (one row per input row)",
                              fix="export the model with the batch as the first output dimension")
        chunks.append(out[:real])
    seconds = time.perf_counter() - t0
    path = resolve(pspec["output"], base)
    outputs = np.concatenate(chunks)
    try:
        atomic_save(path, outputs)
    except OSError as e:  # a full device is the user's to fix, not a runner bug (numpy's short write has no errno)
        raise RunnerError("output", f"cannot write the predictions ({outputs.nbytes / 1e6:.1f} MB) to {path}",
                          why=f"{e.strerror or e}; {_free_mb(os.path.dirname(path))} free there",
                          fix="free space on the device (`edgekd devices --clean DEVICE` on the host removes the files "
                              "earlier benches left in its work directory), or point `workdir:` in its device "
                              "profile at a larger file system")
    return {"output": path, "rows": rows, "batch_size": batch, "seconds": seconds}


def _free_mb(folder: str) -> str:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs (Windows), or no folder
        return "unknown space"
    return f"{st.f_bavail * st.f_frsize / 1e6:.1f} MB"


def _predict_batch(model: Model, feed: Dict[str, Any], start: int, real: int) -> Any:
    try:
        model.feed(feed)
        fn, arg = model.invoker()
        fn(arg)
        return model.fetch()[0]
    except Exception as e:
        raise RunnerError("inference", f"predict failed on rows {start}..{start + real - 1}",
                          why=f"{type(e).__name__}: {e}")


def _pad_rows(array: Any, rows: int) -> Any:
    pad = np.zeros((rows - array.shape[0],) + array.shape[1:], dtype=array.dtype)
    return np.concatenate([array, pad])


_WRITING: set = set()  # temp files atomic_save has open: the tether removes them before it ends the process


def atomic_save(path: str, array: Any) -> None:
    """Write to a temp file in the same folder, then rename: a reader never sees half a file."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npy")
    _WRITING.add(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        _WRITING.discard(tmp)


def _remove_unfinished_writes() -> None:
    """os._exit skips every `finally`: without this, a run the tether ends mid-write leaves its temp file."""
    for tmp in list(_WRITING):
        try:
            os.unlink(tmp)
        except OSError:
            pass


# --------------------------------------------------------------------------- device lock

# One lock file per device, at a path every user's runner on the device finds whatever started it (another user,
# another host machine, another profile name for the same board): the device's shared temp area, not
# tempfile.gettempdir() ($TMPDIR is often per user: macOS, Termux) nor the profile's work directory (each
# profile and user has its own). /tmp and Android's /data/local/tmp (where adb's shell user may write) are
# shared; a file right in them (not in a folder of ours) cannot be removed or replaced by another user in a
# sticky /tmp, and needs no shared folder whose permissions we would have to set.
LOCK_ENV = "EDGEKD_DEVICE_LOCK"  # the lock file's path instead (tests; a device whose shared temp is elsewhere)
LOCK_FILE = "edgekd-bench.lock"
ANDROID_TMP = "/data/local/tmp"
_LOCK_INFO_MAX = 4096  # bytes of the holder's line read back: the file is writable by every user


def device_lock_path() -> str:
    """$EDGEKD_DEVICE_LOCK, else edgekd-bench.lock in /data/local/tmp on Android and /tmp elsewhere."""
    configured = os.environ.get(LOCK_ENV)
    if configured:
        return configured
    android = os.path.isdir(ANDROID_TMP) and os.path.isdir("/system/bin")
    return os.path.join(ANDROID_TMP if android else "/tmp", LOCK_FILE)


class DeviceLock:
    """The device's bench lock, held (flock) by one runner at a time for its measuring phases.

    A second runner on the device waits for it, up to the spec's lock_wait_seconds, and then fails with a
    "device_busy" error: two runners timing at once would each report its latency under the other's load.
    The host's own lock cannot see this: it lives on the host, so two machines, two users or two profile
    names of one board never meet there. The OS releases the lock when the runner ends, however it ends.

    The file is shared with every user of the device, so it is treated as theirs: opened without following a
    symlink (O_NOFOLLOW: no planted link makes us write a file of ours), without O_CREAT when it exists
    (fs.protected_regular refuses that for another user's file in a sticky folder), only as a regular file,
    and what it says (the holder's pid, user and host, written after locking) is only ever shown, cleaned.
    A file we create gets mode 0666 (fchmod: the umask would narrow it), so that other users can open it to
    lock it too. Where the lock cannot be had (no fcntl, a file system without flock, a file in the way) the
    run goes on unlocked and says so (state "unavailable"): refusing to measure would help no one.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: Optional[int] = None
        self.record: Dict[str, Any] = {"path": path, "state": "unavailable"}

    def acquire(self, wait_s: float) -> Dict[str, Any]:
        """Hold the lock (waiting up to wait_s) and return the record for the result, or raise device_busy."""
        try:
            import fcntl
        except ImportError:
            return self._unavailable("this Python has no fcntl (no flock)")
        t0 = time.monotonic()
        holder = None
        while True:
            try:
                fd = self._open()
            except OSError as e:
                return self._unavailable(self._open_problem(e))
            if fd is None:
                return self._unavailable("it is not a regular file with one link")
            try:
                outcome, holder = self._lock(fcntl, fd, max(0.0, wait_s - (time.monotonic() - t0)), holder)
            except OSError as e:
                os.close(fd)
                return self._unavailable(f"its file system refuses flock ({e.strerror or e})")
            if outcome != "locked":
                if outcome == "busy":  # else the waiting thread still blocks on fd: it closes it
                    os.close(fd)
                raise RunnerError(
                    "device_busy", f"the device is busy with another bench ({holder or self._holder_of(self.path)})",
                    why=f"that bench's runner holds the device's bench lock {self.path}, and a runner timing at the "
                        "same time would measure both models under each other's load; this one waited "
                        f"{time.monotonic() - t0:.1f} s (lock_wait_seconds) for it to end",
                    fix="wait for the other bench to end (benches from other machines, users or profiles of this "
                        "device take turns), then run this one again")
            if self._same_file(fd):
                break
            os.close(fd)  # removed (a temp cleaner) or replaced while we waited: lock the file that is there now
        self.fd = fd
        self._write_holder(fd)
        waited = round(time.monotonic() - t0, 3) if holder else 0.0  # holder: who was there when we came
        self.record = {"path": self.path, "state": "held", "waited_s": waited, "waited_for": holder}
        return self.record

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock; the file stays (removing it would let a third runner in)
            self.fd = None

    def _unavailable(self, why: str) -> Dict[str, Any]:
        self.record = {"path": self.path, "state": "unavailable", "why": why}
        sys.stderr.write(f"edgekd runner: running without the device's bench lock {self.path}: {why}\n")
        sys.stderr.flush()
        return self.record

    def _open(self) -> Optional[int]:
        """An fd of the lock file (created if missing), or None when something other than a plain file is there."""
        nofollow = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK  # NONBLOCK: a planted FIFO
        for _ in range(5):
            try:
                try:
                    fd = os.open(self.path, os.O_RDWR | nofollow)
                except PermissionError:  # another user's file we may not write: a read-only fd locks as well
                    fd = os.open(self.path, os.O_RDONLY | nofollow)
            except FileNotFoundError:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | nofollow, 0o666)
                except FileExistsError:  # another runner created it just now: open that one
                    continue
                try:
                    os.fchmod(fd, 0o666)
                except OSError:  # a file system without modes (FAT): everyone may open the file anyway
                    pass
            st = os.fstat(fd)
            # One link only: a hard link planted at the path would make the holder's line overwrite the file it
            # links (where fs.protected_hardlinks is off, or the file is anyone's to write).
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                os.close(fd)
                return None
            return fd
        raise FileExistsError(errno.EEXIST, "it keeps being created and removed")

    @staticmethod
    def _open_problem(e: OSError) -> str:
        if e.errno == errno.ELOOP:
            return "it is a symbolic link (not followed: whoever planted it could point it at a file of ours)"
        return f"it cannot be opened: {e.strerror or e}"

    def _lock(self, fcntl: Any, fd: int, wait_s: float, holder: Optional[str]) -> "tuple[str, Optional[str]]":
        """("locked", "busy" or "abandoned" (a thread still waits on fd), who held it when we had to wait). Blocks in flock in a helper thread, so that the wait
        costs the device no polling while another runner times, the lock is ours the moment it is released,
        and the wait stays bounded (the tether's thread can end the process meanwhile too)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return "locked", holder
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        holder = holder or self._holder_of(self.path)
        if wait_s <= 0:
            return "busy", holder
        notice(f"the device is busy with another bench ({holder}); waiting up to {wait_s:.0f} s for it to end")
        done = threading.Event()
        guard = threading.Lock()
        state: Dict[str, Any] = {"error": None, "abandoned": False}

        def block() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                state["error"] = e
            with guard:
                if state["abandoned"]:  # the wait ended first: not ours to keep (nor the fd, which we close)
                    os.close(fd)
                done.set()

        threading.Thread(target=block, name="edgekd-device-lock", daemon=True).start()
        done.wait(wait_s)
        with guard:
            if not done.is_set():
                state["abandoned"] = True
                return "abandoned", holder
        if state["error"] is not None:
            raise state["error"]
        return "locked", holder

    def _same_file(self, fd: int) -> bool:
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        mine = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)

    @staticmethod
    def _write_holder(fd: int) -> None:
        """Who holds the device, for the message of the runner that waits: pid, user, device name and, over
        SSH, the address of the host machine that started us (the device cannot see which bench it is)."""
        try:
            import pwd

            user = pwd.getpwuid(os.getuid()).pw_name
        except (ImportError, KeyError, OSError):  # Android's uids have no passwd entries
            user = f"uid {os.getuid()}" if hasattr(os, "getuid") else None
        ssh = os.environ.get("SSH_CLIENT", "").split()
        holder = {"pid": os.getpid(), "user": user, "device": platform.node(), "from": ssh[0] if ssh else None,
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError:  # a read-only fd (another user's file): we hold the lock all the same
            pass

    @staticmethod
    def _holder_of(path: str) -> str:
        """'pid N, user U, from ADDRESS' from the lock file as far as it can be read (see holder_summary)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                text = os.read(fd, _LOCK_INFO_MAX).decode("utf-8", "replace")
            finally:
                os.close(fd)
        except OSError:
            text = ""
        return holder_summary(text)


def holder_summary(text: str) -> str:
    """'pid N, user U, from ADDRESS' from what a holder wrote in the lock file (DeviceLock._write_holder, or the
    device's shell for a native tool: edgekd.bench.shell_lock); any user may have written it, so only short
    printable values are taken from it."""
    try:
        raw = json.loads(text[:_LOCK_INFO_MAX])
    except ValueError:
        raw = None

    def clean(key: str) -> Optional[str]:
        value = raw.get(key) if isinstance(raw, dict) else None
        text = "".join(c for c in str(value) if c.isprintable())[:64] if isinstance(value, (str, int)) else ""
        return text or None

    pid, user, source = clean("pid"), clean("user"), clean("from")
    return ", ".join([f"pid {pid}" if pid else "pid unknown", *([f"user {user}"] if user else []),
                      *([f"from {source}"] if source else [])])


def notice(message: str) -> None:
    """Tell the user something now, not at the end: a line on stderr marked with NOTICE, which the host passes
    on as it reads it (edgekd.bench.harness), where a bench that waits minutes for the device looked hung."""
    sys.stderr.write(f"{NOTICE}{message}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- orchestration

def run(spec: Dict[str, Any], base: str) -> Dict[str, Any]:
    """All phases in order; returns the result object (schema edgekd.runner/1)."""
    if np is None:
        raise RunnerError("runtime_missing", "numpy is not installed in this Python",
                          fix=install_hint("numpy", "pip install numpy"))
    module = import_runtime(spec["runtime"])
    lock = DeviceLock(device_lock_path())  # after the import: a missing runtime is said without waiting
    try:
        return _measure(spec, base, module, lock.acquire(spec["lock_wait_seconds"]))
    finally:
        lock.release()


def _measure(spec: Dict[str, Any], base: str, module: Any, device_lock: Dict[str, Any]) -> Dict[str, Any]:
    """The phases of run(), while this runner holds the device (or runs without its lock, as recorded)."""
    baseline = read_memory_kb()

    artifact = resolve(spec["artifact"], base)
    t0 = time.perf_counter_ns()
    model = load_model(spec["runtime"], module, artifact, spec["threads"])
    load_ms = (time.perf_counter_ns() - t0) / 1e6

    arrays = load_arrays(spec["inputs"], base)
    check_arrays(arrays, model.inputs)
    try:
        model.feed(arrays)
    except Exception as e:
        raise RunnerError("input", "the runtime rejected the inputs", why=f"{type(e).__name__}: {e}",
                          fix=f"model inputs: {describe_inputs(model.inputs)}")
    fn, arg = model.invoker()

    try:
        first_us = first_inference(fn, arg)
        outputs = model.fetch()
        memory = memory_pass(fn, arg, spec["memory_runs"])
        gc.collect()
        gc.disable()  # a collection inside the loop would be timed as model latency
        try:
            warm = warmup(fn, arg, spec["warmup_runs"], spec["warmup_min_seconds"], spec["max_seconds"])
            chunk = chunk_size(warm["seconds"] / max(1, warm["runs"]))
            bounds = dict(min_runs=spec["min_runs"], min_seconds=spec["min_seconds"],
                          max_seconds=spec["max_seconds"], chunk=chunk)
            windows: Optional[List[Dict[str, Any]]] = None
            if spec["windows"]:
                latencies, windows, calls, seconds = windowed_loop(
                    fn, arg, windows=spec["windows"], keep=spec["max_runs"], **bounds)
            else:
                latencies, seconds = timed_loop(fn, arg, max_runs=spec["max_runs"], **bounds)
                calls = len(latencies)
            timer = timer_overhead()
        finally:
            gc.enable()
    except RunnerError:
        raise
    except Exception as e:
        raise RunnerError("inference", "inference failed", why=f"{type(e).__name__}: {e}",
                          fix="check the artifact with its verify step on the host; the runtime message above says which node failed")

    predict = None if spec["predict"] is None else predict_pass(model, spec["predict"], base)

    return {
        "schema": SCHEMA,
        "ok": True,
        "runtime": model.runtime_info(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "system": system_info(),
        "artifact": {"path": artifact, "size_bytes": os.path.getsize(artifact)},
        "inputs": [tensor_json(i["name"], arrays[i["name"]], i["shape"]) for i in model.inputs],
        "outputs": [tensor_json(i["name"], o, i["shape"]) for i, o in zip(model.outputs, outputs)],
        "load_ms": load_ms,
        "first_inference_us": first_us,
        "memory_kb": {
            "baseline_vmhwm": baseline["vmhwm"],
            "baseline_vmrss": baseline["vmrss"],
            "vmhwm": memory["vmhwm"],
            "vmrss": memory["vmrss"],
        },
        "warmup": warm,
        "timed": {"runs": calls, "seconds": seconds, "check_every_runs": chunk, "gc_disabled": True,
                  "kept": len(latencies)},
        "latencies_ns": latencies,  # every call's time; with windows, a uniform sample of them (in call order)
        "windows": windows,
        "timer": timer,
        "predict": predict,
        "device_lock": device_lock,  # held (and how long it waited for another bench) or unavailable, and why
    }


def _claim_stdout() -> TextIO:
    """Keep the real stdout for our one JSON object and point fd 1 at stderr.

    Native runtimes sometimes print to stdout; without this a stray line
    would make the host's JSON parse fail.
    """
    sys.stdout.flush()
    try:
        real = os.dup(1)
        os.dup2(2, 1)
    except OSError:
        return sys.stdout
    sys.stdout = sys.stderr
    return os.fdopen(real, "w", encoding="utf-8")


def tether(silence_s: float, fd: int = 0) -> None:
    """End this process when the host that started it is gone: stdin (fd) is its link.

    The host keeps stdin open as a pipe for as long as it waits for the result, writing a byte every few
    seconds. Over SSH nothing else tells the runner that the link dropped: sshd sends no SIGHUP to a session
    without a terminal, the shell that started the runner stays its parent, and a write to the dead stdout
    fails only at the very end. A pipe closed by the host's side (EOF) or silent for `silence_s` seconds (the
    network went away without a word, or the host froze) makes a daemon thread end the process at once, so
    an abandoned run does not load the device for minutes and disturb the next measurement. The thread
    sleeps in select() without the GIL and wakes once per heartbeat (every few seconds) to read it: a few
    microseconds of work every few seconds, next to the timed loop.
    """

    def watch() -> None:
        why = None
        while why is None:
            try:
                ready, _, _ = select.select([fd], [], [], silence_s)
                if not ready:
                    why = f"no word from the host for {silence_s:g} s"
                elif not os.read(fd, 4096):
                    why = "the host closed the link"
            except (OSError, ValueError) as e:  # stdin cannot be watched (closed, not selectable)
                why = f"stdin cannot be read: {e}"
        _remove_unfinished_writes()
        try:
            os.write(2, f"edgekd runner: stopped: {why} (--tether)\n".encode())
        except OSError:  # stderr went with the link
            pass
        os._exit(EXIT_LINK_LOST)

    threading.Thread(target=watch, name="edgekd-tether", daemon=True).start()


def _tether_args(args: List[str]) -> List[str]:
    """Strip `--tether SECONDS` off the front of args and start watching stdin; the rest is returned."""
    if args[:1] != ["--tether"]:
        return args
    try:
        silence_s = float(args[1])
        if not (math.isfinite(silence_s) and silence_s > 0):
            raise ValueError
    except (IndexError, ValueError):
        raise RunnerError("spec", f"--tether needs a number of seconds > 0, got {args[1:2]}",
                          fix="usage: runner.py --tether SECONDS SPEC.json") from None
    rest = args[2:]
    if rest == ["-"]:
        raise RunnerError("spec", "--tether cannot be used with a spec on stdin ('-')",
                          why="stdin is then the host's link, not the spec",
                          fix="pass the spec as a file: runner.py --tether SECONDS SPEC.json")
    tether(silence_s)
    return rest


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    out = _claim_stdout()
    try:
        args = _tether_args(args)
        if args == ["--info"]:
            result: Dict[str, Any] = device_info()
        elif len(args) == 1 and not args[0].startswith("--"):
            spec, base = read_spec(args[0])
            result = run(spec, base)
        else:
            raise RunnerError("spec", f"bad arguments: {args}",
                              fix="usage: runner.py SPEC.json | runner.py - (spec on stdin) | runner.py --info "
                                    "| runner.py --tether SECONDS SPEC.json")
        code = EXIT_OK
    except RunnerError as e:
        result, code = e.to_json(), EXIT_ERROR
    except Exception as e:  # a bug in the runner: still answer in JSON so the host can show it
        result = RunnerError("internal", "the runner crashed", why="".join(
            traceback.format_exception_only(type(e), e)).strip() + "\n" + traceback.format_exc(),
            fix="report this with the spec that caused it").to_json()
        code = EXIT_ERROR
    out.write(json.dumps(result) + "\n")
    out.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
