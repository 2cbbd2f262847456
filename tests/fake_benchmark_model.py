#!/usr/bin/env python3
"""TEST STAND-IN for LiteRT's ``benchmark_model`` binary. It is NOT the real tool.

No real ``benchmark_model`` can be downloaded or built here, so edgekd's tests push THIS program to the
loopback adb device (tests/adb_device.py) in its place: the test copies it with a ``#!`` line naming the
test's Python, so the device shell runs it like a native binary.

What is real: it loads the ``--graph`` .tflite with LiteRT's Python interpreter (ai_edge_litert), fills the
inputs with random data in the tool's ranges (integers 0-99, floats -0.5-0.5), or with the raw bytes of the
files ``--input_layer_value_files`` names, and times every ``invoke()`` with ``time.perf_counter_ns``; memory
is this process's peak RSS (``ru_maxrss``), as the real tool reads it. ``--output_filepath`` gets the raw
bytes of every output after the last call, in the model's output order.

What is imitated: the command line (``--name=value`` flags of the real tool; the subset edgekd uses plus
its loop bounds) and the log. The log copies, line for line, the format of LiteRT 2.20's benchmark_model
as captured in tests/native_samples/benchmark_model_tf2.20_xnnpack_percentiles.txt ("INFO: " prefix on
stderr, warm-up and timed ``count=…`` lines with ``p5= median= p95=``, the "Inference timings in us"
summary and the memory-footprint line). A call's time is, as in the tool's loop, the difference of two
readings of a whole-µs clock (``NowMicros``): a 0.3 µs call reads 1 or 0, 1 with chance 0.3. The
statistics follow LiteRT's ``Stat``: integer microseconds,
population std truncated to an integer, percentile = sorted[n * p / 100], ``count=N curr=X`` when all
values are equal. The loops follow benchmark_model: at least N runs AND at least min_secs, stopping past
max_secs. Error messages are approximations; the exit status is 1 on failure, like the real tool.

    fake_benchmark_model.py --graph=model.tflite --num_threads=1 --num_runs=50 --warmup_runs=1 --use_xnnpack=true

As in the real tool (tflite/tools/benchmark/benchmark_tflite_model.cc): ``--input_layer`` (names, split at
',') and ``--input_layer_shape`` (shapes, split at ':') must have as many items as each other and as the model
has inputs, which they describe in order (a name that is not the tensor's only warns); each input is resized to
its shape; ``--input_layer_value_files`` is ``NAME:PATH`` items split at ',' (``::`` for a ':' in a name), and a
file must hold exactly the tensor's bytes.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from array import array

FLAGS = {  # name: (type, default) as in benchmark_model
    "graph": (str, ""),
    "num_threads": (int, -1),
    "num_runs": (int, 50),
    "min_secs": (float, 1.0),
    "max_secs": (float, 150.0),
    "warmup_runs": (int, 1),
    "warmup_min_secs": (float, 0.5),
    "use_xnnpack": (bool, True),
    "verbose": (bool, False),
    "input_layer": (str, ""),
    "input_layer_shape": (str, ""),
    "input_layer_value_files": (str, ""),
    "output_filepath": (str, ""),
}


def log(message: str) -> None:
    print(f"INFO: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> int:
    print(f"ERROR: {message}", file=sys.stderr, flush=True)
    print("Benchmarking failed.", file=sys.stderr, flush=True)
    return 1


def parse_flags(argv: list[str]) -> tuple[dict, dict, list[str]]:
    values = {name: default for name, (_, default) in FLAGS.items()}
    given: dict = {}
    unknown = []
    for arg in argv:
        name, sep, text = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not sep or name not in FLAGS:
            unknown.append(arg)
            continue
        kind = FLAGS[name][0]
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1")
            else:
                value = kind(text)
        except ValueError:
            unknown.append(arg)
            continue
        values[name] = given[name] = value
    return values, given, unknown


def fmt(x: float) -> str:
    """A double as a C++ ostream prints it by default (6 significant digits, like %g)."""
    return "nan" if math.isnan(x) else f"{x:g}"


def stat_line(values: array) -> str:
    """LiteRT's StatWithPercentiles::OutputToStream for integer microseconds (numpy on the int64 buffer, so
    the statistics create no Python int per run)."""
    import numpy as np

    x = np.frombuffer(values, dtype=np.int64) if len(values) else np.zeros(0, dtype=np.int64)
    n = int(x.size)
    if n == 0:
        return "count=0"
    lo, hi = int(x.min()), int(x.max())
    if lo == hi:
        line = f"count={n} curr={int(x[-1])}" + ("(all same)" if n > 1 else "")
    else:
        avg = int(x.sum()) / n
        squared = float(np.square(x, dtype=np.float64).sum())
        variance = int(squared / n - avg * avg)  # ValueType (int64): truncated
        std = int(math.sqrt(variance))
        line = f"count={n} first={int(x[0])} curr={int(x[-1])} min={lo} max={hi} avg={fmt(avg)} std={std}"
    ordered = np.sort(x)
    p5, p50, p95 = (int(ordered[n * p // 100]) for p in (5, 50, 95))
    return f"{line} p5={p5} median={p50} p95={p95}"


def timed_loop(invoke, min_runs: int, min_secs: float, max_secs: float) -> array:
    """benchmark_model's loop: run while (runs < min_runs or elapsed < min_secs) and elapsed <= max_secs.

    Times go to an int64 array, like the real tool's std::vector<int64_t>, so storing them does not inflate
    the memory numbers the way a list of Python ints would."""
    times = array("q")
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if not ((len(times) < min_runs or elapsed < min_secs) and elapsed <= max_secs):
            return times
        t0 = time.perf_counter_ns() // 1000  # a whole-µs clock, read before and after (the tool's NowMicros)
        invoke()
        times.append(time.perf_counter_ns() // 1000 - t0)


# The tool's value ranges for random inputs (LiteRT's tools/utils.cc, GetDataRangesForType): token ids in
# [0, 99] are valid indices of any embedding table, which a text model's Gather needs.
RANGES = {"f": (-0.5, 0.5), "int32": (0, 99), "int64": (0, 99), "uint32": (0, 99), "uint64": (0, 99),
          "uint8": (0, 254), "int8": (-127, 127)}


def random_input(np, detail: dict, rng):
    shape = [d if d > 0 else 1 for d in detail["shape"]]
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return rng.uniform(*RANGES["f"], size=shape).astype(dtype)
    if dtype.name in RANGES:
        low, high = RANGES[dtype.name]
        return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    raise ValueError(f"input {detail['name']!r} has unsupported type {dtype}")


def input_layers(values: dict) -> list[tuple[str, list[int], str | None]]:
    """(name, shape, value file) per --input_layer item, in order; ValueError as the real tool's errors."""
    names = values["input_layer"].split(",") if values["input_layer"] else []
    shapes = values["input_layer_shape"].split(":") if values["input_layer_shape"] else []
    if len(names) != len(shapes):
        raise ValueError(f"The number of items in --input_layer_shape ({values['input_layer_shape']}, with "
                         f"{len(shapes)} items) must match the number of items in --input_layer "
                         f"({values['input_layer']}, with {len(names)} items).")
    files: dict[str, str] = {}
    for item in values["input_layer_value_files"].split(",") if values["input_layer_value_files"] else []:
        marked = item.replace("::", "\0")
        if marked.count(":") != 1:
            raise ValueError(f"Wrong input value file item specified: {item}")
        name, path = (part.replace("\0", ":") for part in marked.split(":"))
        if name not in names:
            raise ValueError(f"Cannot find the corresponding input_layer name({name}) in --input_layer as "
                             f"{values['input_layer']}")
        files[name] = path
    return [(name, [int(d) for d in shape.split(",")], files.get(name)) for name, shape in zip(names, shapes)]


def file_input(np, detail: dict, path: str):
    with open(path, "rb") as fh:
        data = fh.read()
    dtype = np.dtype(detail["dtype"])
    expected = int(np.prod(detail["shape"])) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"The size of {path} is {len(data)} bytes. It should be {expected} bytes.")
    return np.frombuffer(data, dtype=dtype).reshape(detail["shape"])


def max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def main(argv: list[str]) -> int:
    values, given, unknown = parse_flags(argv)
    log("STARTING!")
    if unknown:
        return fail(f"Unconsumed cmdline flags: {' '.join(unknown)}")
    log(f"Log parameter values verbosely: [{int(values['verbose'])}]")
    labels = {"num_runs": "Min num runs", "num_threads": "Num threads", "warmup_runs": "Min warmup runs",
              "min_secs": "Min runs duration (seconds)", "max_secs": "Max runs duration (seconds)",
              "warmup_min_secs": "Min warmup runs duration (seconds)"}
    for name, label in labels.items():
        if name in given:
            log(f"{label}: [{fmt(given[name]) if isinstance(given[name], float) else given[name]}]")
    if not values["graph"]:
        return fail("Please specify the name of your TF Lite input file with --graph")
    log(f"Graph: [{values['graph']}]")
    log("Signature to run: []")
    if "num_threads" in given:
        log(f"#threads used for CPU inference: [{values['num_threads']}]")
    if "use_xnnpack" in given:
        log(f"Use xnnpack: [{int(values['use_xnnpack'])}]")

    import numpy as np
    from ai_edge_litert import interpreter as litert

    start_kb = max_rss_kb()  # "the start of the tool": the runtime is loaded, no model yet
    graph = values["graph"]
    if not os.path.isfile(graph):
        return fail(f"Could not open '{graph}'.")
    log(f"Loaded model {graph}")
    t0 = time.perf_counter_ns()
    try:
        resolver = (litert.OpResolverType.AUTO if values["use_xnnpack"]
                    else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        threads = values["num_threads"] if values["num_threads"] > 0 else None
        interp = litert.Interpreter(model_path=graph, num_threads=threads, experimental_op_resolver_type=resolver)
        layers = input_layers(values)
        details = interp.get_input_details()
        if layers and len(layers) != len(details):
            raise ValueError(f"Inputs mismatch: Model inputs #:{len(layers)} expected: {len(details)}")
        for k, detail in enumerate(details):
            if layers:
                name, shape, _ = layers[k]
                if name != detail["name"]:
                    print(f"WARNING: Tensor # {detail['index']} is named {detail['name']} but flags call it {name}",
                          file=sys.stderr, flush=True)
                if len(shape) != len(detail["shape"]):
                    raise ValueError(f"Input tensor #{detail['index']} should have {len(detail['shape'])} dimensions!")
                interp.resize_tensor_input(detail["index"], shape)
            elif any(d < 1 for d in detail["shape_signature"]):
                interp.resize_tensor_input(detail["index"], [d if d > 0 else 1 for d in detail["shape"]])
        interp.allocate_tensors()
        rng = np.random.default_rng(0)
        for k, detail in enumerate(interp.get_input_details()):
            path = layers[k][2] if layers else None
            interp.set_tensor(detail["index"], file_input(np, detail, path) if path else random_input(np, detail, rng))
    except (OSError, ValueError, RuntimeError) as exc:
        return fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    init_us = (time.perf_counter_ns() - t0) // 1000
    init_kb = max_rss_kb()
    log(f"The input model file size (MB): {fmt(os.path.getsize(graph) / 1e6)}")
    log(f"Initialized session in {fmt(init_us / 1e3)}ms.")

    try:
        log(f"Running benchmark for at least {values['warmup_runs']} iterations and at least "
            f"{fmt(values['warmup_min_secs'])} seconds but terminate if exceeding {fmt(values['max_secs'])} seconds.")
        warmup = timed_loop(interp.invoke, values["warmup_runs"], values["warmup_min_secs"], values["max_secs"])
        log(stat_line(warmup))
        log(f"Running benchmark for at least {values['num_runs']} iterations and at least "
            f"{fmt(values['min_secs'])} seconds but terminate if exceeding {fmt(values['max_secs'])} seconds.")
        runs = timed_loop(interp.invoke, values["num_runs"], values["min_secs"], values["max_secs"])
        log(stat_line(runs))
    except RuntimeError as exc:
        return fail(str(exc).strip().splitlines()[0])
    overall_kb = max_rss_kb()
    if values.get("output_filepath"):  # the real tool's OutputSaver: every output's raw bytes, in the model's order
        with open(values["output_filepath"], "wb") as fh:
            for detail in interp.get_output_details():
                fh.write(np.ascontiguousarray(interp.get_tensor(detail["index"])).tobytes())

    def avg(xs: array) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    first = warmup[0] if warmup else (runs[0] if runs else 0)
    log(f"Inference timings in us: Init: {init_us}, First inference: {first}, Warmup (avg): {fmt(avg(warmup))}, "
        f"Inference (avg): {fmt(avg(runs))}")
    log("Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the "
        "actual memory footprint of the model at runtime. Take the information at your discretion.")
    log(f"Memory footprint delta from the start of the tool (MB): init={fmt((init_kb - start_kb) / 1024.0)} "
        f"overall={fmt((overall_kb - start_kb) / 1024.0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
