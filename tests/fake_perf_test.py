#!/usr/bin/env python3
"""TEST STAND-IN for onnxruntime's ``onnxruntime_perf_test`` binary. It is NOT the real tool.

No real ``onnxruntime_perf_test`` can be downloaded or built here (the onnxruntime wheel does not ship it), so
edgekd's tests push THIS program to the loopback adb device (tests/adb_device.py) in its place, with a ``#!``
line naming the test's Python, as tests/fake_benchmark_model.py stands in for LiteRT's benchmark_model.

What is real: it loads the model with onnxruntime's Python session, sizes the named free dimensions given
with ``-f NAME:SIZE`` through the same session option the real tool sets (AddFreeDimensionOverrideByName),
and times every ``run()`` with ``time.perf_counter``; memory is this process's peak RSS (``ru_maxrss``), what
the real tool reads on Linux.

What is imitated, from onnxruntime's perftest sources (command_args_parser.cc, ort_test_session.cc) and the
published output in tests/native_samples/perf_test_spacemit_k1_statistics.txt: the options edgekd uses
(``-m times -r N -x THREADS -e cpu -I -s -f NAME:SIZE``, ``-f`` repeatable); ``-I`` generates the inputs: every
free dimension not sized by ``-f`` is 1, and with no ``-S`` seed every element is zero; one warm-up run, then N
timed runs; the summary lines and the latency percentiles ``sorted[int(n * p)]`` in seconds. The exit status is
non-zero on failure, like the real tool's.

    fake_perf_test.py -m times -r 100 -x 1 -e cpu -I -f batch:1 -f length:32 -s model.onnx
"""

from __future__ import annotations

import os
import resource
import sys
import time

VALUE_OPTIONS = {"-m", "-r", "-x", "-e", "-f"}
FLAG_OPTIONS = {"-I", "-s"}


def parse(argv: list[str]) -> tuple[dict, list[tuple[str, int]], list[str]]:
    """(options, free-dimension sizes in order, positional); raises ValueError on what the tool would refuse."""
    options: dict = {"-m": "duration", "-r": "1000", "-x": "0", "-e": "cpu", "-I": False, "-s": False}
    sizes: list[tuple[str, int]] = []
    positional: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in FLAG_OPTIONS:
            options[arg] = True
        elif arg in VALUE_OPTIONS:
            value = next(args, None)
            if value is None:
                raise ValueError(f"Missing value for flag: {arg}")
            if arg == "-f":
                name, sep, size = value.partition(":")
                if not name or not sep or not size.isdigit() or int(size) < 1:
                    raise ValueError(f"Invalid value for flag -f: '{value}' (dimension_name:override_value)")
                sizes.append((name, int(size)))
            else:
                options[arg] = value
        elif arg.startswith("-"):
            raise ValueError(f"Unknown command line flag '{arg.lstrip('-')}'")
        else:
            positional.append(arg)
    if options["-m"] not in ("times", "duration") or options["-e"] != "cpu" or len(positional) not in (1, 2):
        raise ValueError("invalid command line")
    return options, sizes, positional


def main(argv: list[str]) -> int:
    try:
        options, sizes, positional = parse(argv)
        runs, threads = int(options["-r"]), int(options["-x"])
    except ValueError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        print("onnxruntime_perf_test [options...] model_path [result_file]", file=sys.stderr)
        return 255
    model = positional[0]
    if not options["-I"]:  # no test_data_set_* folders are ever next to the model on a device
        print(f"there is no test data for model {os.path.basename(os.path.dirname(model)) or model}")
        return 255

    t0 = time.perf_counter()
    try:
        session = open_session(model, threads, sizes)
        feeds = generated_inputs(session)
    except Exception as exc:  # noqa: BLE001 - the tool prints onnxruntime's error and exits non-zero
        print(f"Error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 255
    print(f"Session creation time cost: {time.perf_counter() - t0:g} s")
    try:
        t0 = time.perf_counter()
        session.run(None, feeds)
        print(f"First inference time cost: {int((time.perf_counter() - t0) * 1e3)} ms")
        latencies = []
        cpu0, start = time.process_time(), time.perf_counter()
        for _ in range(runs):
            t0 = time.perf_counter()
            session.run(None, feeds)
            latencies.append(time.perf_counter() - t0)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    except Exception as exc:  # noqa: BLE001
        print(f"Error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 255
    total = sum(latencies)
    usage = int(100 * cpu / wall / (os.cpu_count() or 1)) if wall else 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"Total inference time cost: {total:g} s\nTotal inference requests: {runs}\n"
          f"Average inference time cost: {total / runs * 1e3:g} ms\nTotal inference run time: {wall:g} s\n"
          f"Number of inferences per second: {runs / wall:g}\nAvg CPU usage: {usage} %\n"
          f"Peak working set size: {peak} bytes")
    if options["-s"]:
        ordered = sorted(latencies)
        print(f"Avg CPU usage:{usage}\nPeak working set size:{peak}\nRuns:{runs}")
        print(f"Min Latency: {ordered[0]:g} s\nMax Latency: {ordered[-1]:g} s")
        for name, p in (("P50", 0.5), ("P90", 0.9), ("P95", 0.95), ("P99", 0.99), ("P999", 0.999)):
            print(f"{name} Latency: {ordered[min(int(runs * p), runs - 1)]:g} s")
    return 0


def open_session(model: str, threads: int, sizes: list[tuple[str, int]]):
    import onnxruntime as ort

    session_options = ort.SessionOptions()
    if threads:
        session_options.intra_op_num_threads = threads
        print(f"Setting intra_op_num_threads to {threads}")
    for name, size in sizes:
        session_options.add_free_dimension_override_by_name(name, size)
        print(f"Overriding dimension with name, {name}, to {size}")
    return ort.InferenceSession(model, session_options, providers=["CPUExecutionProvider"])


def generated_inputs(session) -> dict:
    """-I with no seed: each input at its sizes, a free dimension not sized by -f at 1, every element zero."""
    import numpy as np

    return {spec.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in spec.shape],
                                dtype=_numpy_type(np, spec.type)) for spec in session.get_inputs()}


def _numpy_type(np, onnx_type: str):
    """numpy dtype of an onnxruntime type string such as 'tensor(int64)'."""
    name = onnx_type.removeprefix("tensor(").removesuffix(")")
    return np.dtype({"float": "float32", "double": "float64"}.get(name, name))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
