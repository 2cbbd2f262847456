"""A runtime's own benchmark binary on a device without Python: argv, run, and parsers for its log.

Where a phone has no Python (stock Android), edgekd cannot run its device-side runner; it pushes the
runtime's benchmark binary once and reads what it prints:

* LiteRT / TFLite ``benchmark_model`` (logs to stderr): warm-up and timed phases as ``count=… first=… curr=…
  min=… max=… avg=… std=…`` lines (recent builds append ``p5=… median=… p95=…``), then
  ``Inference timings in us: Init: …, First inference: …, Warmup (avg): …, Inference (avg): …`` and the
  memory line (``Memory footprint delta from the start of the tool (MB): init=… overall=…``; TF 2.4 said
  ``Peak memory footprint (MB)``; ``--report_peak_memory_footprint`` adds ``Overall peak memory footprint
  (MB) via periodic monitoring: …``). Its statistics are LiteRT's ``Stat``: integer microseconds, ``std``
  the population deviation truncated to an integer, percentiles the element at ``n * p / 100`` of the sorted
  values (no interpolation; ``median`` is p50 in that sense). Numbers use C++ stream formatting, so large
  averages read ``2.95034e+06``.
* onnxruntime ``onnxruntime_perf_test`` (stdout): ``Session creation time cost: … s``, ``First inference
  time cost: … ms`` (newer builds; whole milliseconds), ``Total inference requests: …``, ``Average inference
  time cost: … ms``, ``Avg CPU usage: … %``, ``Peak working set size: … bytes`` and with ``-s``
  ``Min/Max/P50/P90/P95/P99/P999 Latency: … s`` (early builds: ``Total iterations``, ``Average time cost``,
  ``P50 Latency is … sec``). Its percentiles are ``sorted[int(n * p)]``; it prints no standard deviation.
  It always runs exactly one warm-up inference (the "first inference"); the 1.x sources read for this
  module have no flag for more.

Both parsers return one normalized dict (schema ``edgekd.native/1``)::

    {"schema", "harness": "native", "tool", "runs", "warmup_runs",
     "latency_us": {"n", "mean", "min", "max", "std", "p5", "p50", "p90", "p95", "p99", "p999"},
     "init_ms", "first_inference_us", "warmup_avg_us", "memory_kb": {...}, "extra": {...}}

Every value is read from the text (or converted between units); what the tool did not print is None,
never estimated. ``memory_kb`` keys: benchmark_model ``init_footprint`` / ``overall_footprint`` (growth of
the process's peak RSS since the tool started, MB x 1024) and ``peak`` (periodic monitoring, when on);
perf_test ``peak`` (its peak working set: ru_maxrss on Linux/Android, the same quantity as the runner's
``vmhwm``). A text without the tool's summary raises BenchError (what / why / fix).

``run_native`` pushes the binary (once, by sha256), runs it through ``device.run`` holding the device's bench
lock (the runner's, taken with the device's flock tool: see shell_lock) and parses the output;
``bench_result_fields`` turns the dicts of a bench's rounds into the fields of a BenchResult (harness "native",
rounds combined as the runner path combines them where a summary allows: total calls, p50 interval over the
rounds, p99 only when every round had enough calls; no per-call latencies, so the only stability verdict is
the rounds' drift).
"""

from __future__ import annotations

import logging
import math
import re
import shlex
import statistics
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from edgekd.errors import BenchError

logger = logging.getLogger(__name__)

NATIVE_SCHEMA = "edgekd.native/1"
BENCHMARK_MODEL = "benchmark_model"
PERF_TEST = "onnxruntime_perf_test"
TOOLS = (BENCHMARK_MODEL, PERF_TEST)
TOOL_FOR_FORMAT = {"tflite": BENCHMARK_MODEL, "onnx": PERF_TEST}  # the runtime's own benchmark binary
LATENCY_KEYS = ("n", "mean", "min", "max", "std", "p5", "p50", "p90", "p95", "p99", "p999")
NATIVE_TIMEOUT_S = 600.0
NATIVE_LOCK_WAIT_S = 300.0  # as the runner's lock_wait_seconds when a spec does not say
_TAIL_LINES = 3  # lines of the tool's own output quoted in an error's `why`

# ---------------------------------------------------------------------- shared helpers

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf"
# What precedes a message on a line: indentation (pasted docs), an Android logcat header
# ("07-08 15:34:26.201 I/tflite  ( 5395): ", "07-14 13:14:52.097 22838 22838 I tflite  : ") and the
# severity LiteRT's logger writes ("INFO: ", "VERBOSE: ", …).
_PREFIX = re.compile(
    r"^\s*(?:\d\d-\d\d\s+\d\d:\d\d:\d\d\.\d+\s+(?:\d+\s+\d+\s+)?[VDIWEF][/ ]\s*\S+\s*(?:\(\s*\d+\s*\))?\s*:\s*)?"
    r"(?:(?:INFO|VERBOSE|WARNING|ERROR|FATAL): )?"
)


def _message(line: str) -> str:
    return line[_PREFIX.match(line).end():].rstrip()


def _number(text: str | None) -> float | None:
    """A number as printed by C++ streams (`2.95034e+06`, `nan`); None for a missing or non-finite value."""
    if text is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _scaled(text: str | None, factor: float) -> float | None:
    value = _number(text)
    return None if value is None else value * factor


def _latency(**values: float | None) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {key: None for key in LATENCY_KEYS}
    out.update(values)
    return out


def _tail(text: str, n: int = _TAIL_LINES) -> str:
    """The last non-empty lines of the tool's output, for an error's `why`."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return " | ".join(lines[-n:]) if lines else "no output at all"


def _check_text(text: Any, tool: str) -> str:
    if not isinstance(text, str):
        raise BenchError(f"cannot parse {tool} output of type {type(text).__name__}",
                         fix="pass the tool's stdout and stderr as one str")
    if not text.strip():
        raise BenchError(f"{tool} printed nothing", why="the output is empty",
                         fix=f"run {tool} by hand on the device to see whether it starts at all "
                             "(wrong ABI, missing shared libraries, killed for memory)")
    return text


def _result(tool: str, **fields: Any) -> dict[str, Any]:
    return {"schema": NATIVE_SCHEMA, "harness": "native", "tool": tool, **fields}


# ---------------------------------------------------------------------- benchmark_model

_BM_SUMMARY = re.compile(
    rf"Inference timings in us: Init: (?P<init>{_NUM}), First inference: (?P<first>{_NUM}), "
    rf"Warmup \(avg\): (?P<warmup>{_NUM}), Inference \(avg\): (?P<avg>{_NUM})")
_BM_STAT = re.compile(
    rf"^count=(?P<count>\d+)(?:(?: first=(?P<first>{_NUM}))? curr=(?P<curr>{_NUM})(?P<same>\(all same\))?"
    rf"(?: min=(?P<min>{_NUM}) max=(?P<max>{_NUM}) avg=(?P<avg>{_NUM}) std=(?P<std>{_NUM}))?)?"
    rf"(?: p5=(?P<p5>{_NUM}) median=(?P<median>{_NUM}) p95=(?P<p95>{_NUM}))?(?:\s|$)")
_BM_MEMORY = re.compile(
    rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
    rf"init=(?P<init>{_NUM}) overall=(?P<overall>{_NUM})")
_BM_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: (?P<peak>{_NUM})")
_BM_MODEL_SIZE = re.compile(rf"The input model file size \(MB\): (?P<mb>{_NUM})")
_BM_SESSION = re.compile(rf"Initialized session in (?P<ms>{_NUM}) ?ms")
_BM_THREADS = re.compile(r"#threads used for CPU inference: \[(?P<n>-?\d+)\]")


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """LiteRT/TFLite `benchmark_model` output (stdout + stderr, log prefixes allowed) -> normalized dict.

    The last "Inference timings in us" summary is the run; its timed statistics are the last `count=` line
    before it (the one before that, if any, is the warm-up phase). Op-profiling tables printed after the
    summary ("Timings (microseconds): count=…") are never read as the run's statistics.
    """
    tool = BENCHMARK_MODEL
    _check_text(text, tool)
    lines = text.splitlines()
    messages = [_message(line) for line in lines]
    summary_at = None
    for i, msg in enumerate(messages):
        if _BM_SUMMARY.search(msg):
            summary_at = i
    if summary_at is None:
        failed = any(m.startswith("Benchmarking failed") for m in messages)
        raise BenchError(
            f"{tool} did not report any timings",
            why=("it failed: " if failed else "no 'Inference timings in us' line in its output; it ends with: ")
            + _error_lines(text),
            fix=f"run the same {tool} command by hand on the device; check the model path, that the model loads "
                "with the chosen delegate (try --use_xnnpack=false) and that the run was not cut short by a timeout")
    summary = _BM_SUMMARY.search(messages[summary_at])
    previous = max((i for i in range(summary_at) if _BM_SUMMARY.search(messages[i])), default=-1)
    section = messages[previous + 1: summary_at + 1]
    stats = [m for m in (_BM_STAT.match(msg) for msg in section) if m]
    if not stats:
        raise BenchError(f"{tool} printed its summary but no 'count=…' statistics line for the timed runs",
                         why=f"summary line: {messages[summary_at].strip()}",
                         fix="pass the complete output of the tool (stderr included: benchmark_model logs there)")
    timed = _stat(stats[-1])
    warm = _stat(stats[-2]) if len(stats) > 1 else None
    if timed["count"] == 0:
        raise BenchError(f"{tool} reported no timed runs ('count=0')",
                         why=f"summary line: {messages[summary_at].strip()}",
                         fix="raise --num_runs / --min_secs, or --max_secs if the model is slow")

    # This run's lines: from its "STARTING!" (or the previous run's summary) to the next run's "STARTING!".
    start = max([previous + 1] + [i for i in range(previous + 1, summary_at) if messages[i].startswith("STARTING!")])
    end = next((i for i in range(summary_at + 1, len(messages)) if messages[i].startswith("STARTING!")), len(messages))
    memory: dict[str, float] = {}
    extra: dict[str, Any] = {}
    for msg in messages[start:end]:
        if m := _BM_MEMORY.search(msg):
            for key, group in (("init_footprint", "init"), ("overall_footprint", "overall")):
                if (kb := _scaled(m.group(group), 1024.0)) is not None:
                    memory[key] = kb
        elif m := _BM_PEAK.search(msg):
            if (kb := _scaled(m.group("peak"), 1024.0)) is not None:
                memory["peak"] = kb
        elif m := _BM_MODEL_SIZE.search(msg):
            extra["model_size_mb"] = _number(m.group("mb"))
        elif m := _BM_SESSION.search(msg):
            extra["initialized_session_ms"] = _number(m.group("ms"))
        elif m := _BM_THREADS.search(msg):
            extra["threads"] = int(m.group("n"))

    mean = _number(summary.group("avg"))
    if timed["mean"] is not None and mean is not None and not math.isclose(timed["mean"], mean, rel_tol=1e-4):
        logger.warning("%s: the timed statistics (avg=%g) disagree with 'Inference (avg)' (%g); using the latter",
                       tool, timed["mean"], mean)
    latency = _latency(n=timed["count"], mean=mean if mean is not None else timed["mean"], min=timed["min"],
                       max=timed["max"], std=timed["std"], p5=timed["p5"], p50=timed["median"], p95=timed["p95"])
    return _result(
        tool,
        runs=timed["count"],
        warmup_runs=warm["count"] if warm else None,
        latency_us=latency,
        init_ms=_scaled(summary.group("init"), 1e-3),
        first_inference_us=_number(summary.group("first")),
        warmup_avg_us=_number(summary.group("warmup")),
        memory_kb=memory,
        extra=extra,
    )


def _stat(m: re.Match) -> dict[str, Any]:
    """One LiteRT `Stat` line. "count=N curr=X" (and "(all same)") is how it prints N equal values."""
    count = int(m.group("count"))
    if m.group("curr") is None:  # "count=0": nothing was measured
        same = {"min": None, "max": None, "mean": None, "std": None}
    elif m.group("avg") is None:  # all values equal: the tool prints only the value
        value = _number(m.group("curr"))
        same = {"min": value, "max": value, "mean": value, "std": 0.0}
    else:
        same = {"min": _number(m.group("min")), "max": _number(m.group("max")), "mean": _number(m.group("avg")),
                "std": _number(m.group("std"))}
    return {"count": count, **same, "p5": _number(m.group("p5")), "median": _number(m.group("median")),
            "p95": _number(m.group("p95"))}


_ERROR_LINE = re.compile(r"(?i)\b(?:error|fatal|failed|failure|could not|can ?not|unable to|no such file)\b")


def _error_lines(text: str) -> str:
    """The tool's last error lines (log prefixes removed), else its last lines."""
    errors = [_message(line).strip() for line in text.splitlines()
              if _ERROR_LINE.search(line) and not line.lstrip().startswith("#")]
    errors = [e for e in errors if e and not e.startswith("Benchmarking failed")]
    return " | ".join(errors[-_TAIL_LINES:]) if errors else _tail(text)


# ---------------------------------------------------------------------- onnxruntime_perf_test

_PT_FIELDS = {
    "init_s": re.compile(rf"^Session creation time cost:\s*(?P<v>{_NUM})\s*s\b"),
    "first_ms": re.compile(rf"^First inference time cost:\s*(?P<v>{_NUM})\s*ms\b"),
    "total_s": re.compile(rf"^Total (?:inference )?time cost:\s*(?P<v>{_NUM})"),
    "requests": re.compile(r"^Total (?:inference requests|iterations):\s*(?P<v>\d+)"),
    "avg_ms": re.compile(rf"^Average (?:inference )?time cost:\s*(?P<v>{_NUM})\s*ms\b"),
    "run_s": re.compile(rf"^Total (?:inference )?run time:\s*(?P<v>{_NUM})\s*s\b"),
    "per_s": re.compile(rf"^Number of inferences per second:\s*(?P<v>{_NUM})"),
    "cpu_pct": re.compile(rf"^(?:Avg|Total) CPU usage:\s*(?P<v>{_NUM})"),
    "peak_bytes": re.compile(r"^Peak working set size:\s*(?P<v>\d+)"),
    "runs": re.compile(r"^Runs:\s*(?P<v>\d+)"),
    "threads": re.compile(r"^Setting intra_op_num_threads to (?P<v>\d+)"),
}
_PT_LATENCY = re.compile(rf"^(?P<name>Min|Max|P50|P90|P95|P99|P999) Latency(?::| is)\s*(?P<v>{_NUM})\s*(?:s|sec)\b")
_PT_KEYS = {"Min": "min", "Max": "max", "P50": "p50", "P90": "p90", "P95": "p95", "P99": "p99", "P999": "p999"}


def parse_perf_test(text: str) -> dict[str, Any]:
    """onnxruntime `onnxruntime_perf_test` output (stdout, stderr allowed) -> normalized dict."""
    tool = PERF_TEST
    _check_text(text, tool)
    found: dict[str, str] = {}
    percentiles: dict[str, float | None] = {}
    for line in text.splitlines():
        msg = line.strip()
        for key, pattern in _PT_FIELDS.items():
            if key not in found and (m := pattern.match(msg)):
                found[key] = m.group("v")
                break
        else:
            if m := _PT_LATENCY.match(msg):
                percentiles[_PT_KEYS[m.group("name")]] = _scaled(m.group("v"), 1e6)
    if "requests" not in found or "avg_ms" not in found:
        raise BenchError(
            f"{tool} did not report its timings",
            why="no 'Total inference requests' / 'Average inference time cost' lines; its output ends with: "
                + _tail(text),
            fix=f"run the same {tool} command by hand on the device; without test_data_set_* folders next to the "
                "model it needs -I (generated inputs), and the execution provider given with -e must be built in")
    runs = int(found["requests"])
    if "runs" in found and int(found["runs"]) != runs:
        logger.warning("%s: 'Runs:%s' disagrees with 'Total inference requests: %d'", tool, found["runs"], runs)
    latency = _latency(n=runs, mean=_scaled(found["avg_ms"], 1e3), **percentiles)
    memory = {"peak": int(found["peak_bytes"]) / 1024.0} if "peak_bytes" in found else {}
    extra: dict[str, Any] = {}
    for key, name in (("total_s", "total_inference_time_s"), ("run_s", "total_run_time_s"),
                      ("per_s", "inferences_per_s"), ("cpu_pct", "cpu_usage_pct")):
        if key in found:
            extra[name] = _number(found[key])
    if "threads" in found:
        extra["threads"] = int(found["threads"])
    return _result(
        tool,
        runs=runs,
        warmup_runs=None,
        latency_us=latency,
        init_ms=_scaled(found.get("init_s"), 1e3),
        first_inference_us=_scaled(found.get("first_ms"), 1e3),
        warmup_avg_us=None,
        memory_kb=memory,
        extra=extra,
    )


PARSERS = {BENCHMARK_MODEL: parse_benchmark_model, PERF_TEST: parse_perf_test}
RUNTIMES = {BENCHMARK_MODEL: "litert", PERF_TEST: "onnxruntime"}  # the runner's runtime names


def parse_native(tool: str, text: str) -> dict[str, Any]:
    return PARSERS[_check_tool(tool)](text)


# ---------------------------------------------------------------------- argv and the device run

def _check_tool(tool: Any) -> str:
    if tool not in TOOLS:
        raise BenchError(f"unknown native benchmark tool {tool!r}", why=f"known tools: {', '.join(TOOLS)}",
                         fix="name one of them in the device profile")
    return tool


def _positive_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BenchError(f"{name} must be an integer ≥ {minimum}, got {value!r}",
                         fix=f"pass {name}={max(minimum, 1)} or more")
    return value


def native_argv(tool: str, device_binary: str, model: str, threads: int, runs: int, warmup: int,
                free_dims: Mapping[str, int] | None = None) -> list[str]:
    """The argv that runs `tool` (already on the device at `device_binary`) on `model` (a device path).

    benchmark_model: --graph --num_threads --num_runs --warmup_runs --use_xnnpack=true (it still runs for at
    least its min_secs = 1 s and warm-up min 0.5 s, so it may do more runs than asked; the parsed "runs" is
    what it did). onnxruntime_perf_test: -m times -r RUNS -x THREADS -e cpu, plus -I (generate inputs: there
    are no test_data_set_* folders on the device) and -s (print percentiles); it always does one warm-up run,
    so `warmup` is not passed to it. `free_dims` sizes the model's named dynamic dimensions, one
    ``-f NAME:SIZE`` each: without it perf_test times every free dimension at 1 (a text model's length too).
    benchmark_model has no such option (it times a model's declared sizes), so it takes none.
    """
    _check_tool(tool)
    threads = _positive_int("threads", threads, 1)
    runs = _positive_int("runs", runs, 1)
    warmup = _positive_int("warmup", warmup, 0)
    sizes = _free_dim_args(tool, free_dims or {})
    for name, value in (("device_binary", device_binary), ("model", model)):
        if not isinstance(value, str) or not value or value.startswith("-") or "\n" in value or "\0" in value:
            raise BenchError(f"invalid {name} {value!r} for {tool}", fix="give an absolute path on the device")
    if tool == BENCHMARK_MODEL:
        return [device_binary, f"--graph={model}", f"--num_threads={threads}", f"--num_runs={runs}",
                f"--warmup_runs={warmup}", "--use_xnnpack=true"]
    if warmup != 1:
        logger.debug("%s always runs exactly one warm-up inference; warmup=%d is not passed", tool, warmup)
    return [device_binary, "-m", "times", "-r", str(runs), "-x", str(threads), "-e", "cpu", "-I", *sizes, "-s",
            model]


def _free_dim_args(tool: str, free_dims: Mapping[str, int]) -> list[str]:
    """``-f NAME:SIZE`` per named free dimension (perf_test splits the option at ':' and at spaces)."""
    if free_dims and tool != PERF_TEST:
        raise BenchError(f"{tool} cannot size a named dimension ({', '.join(free_dims)})",
                         why=f"{tool} times the sizes the model declares",
                         fix="export the model with fixed input shapes")
    args = []
    for name, size in free_dims.items():
        if not isinstance(name, str) or not re.fullmatch(r"[^\s:-][^\s:]*", name):
            raise BenchError(f"invalid dimension name {name!r} for {tool}",
                             why="perf_test reads -f NAME:SIZE and splits it at ':' and at spaces",
                             fix="rename the model's dynamic dimension (letters, digits, '_')")
        args += ["-f", f"{name}:{_positive_int(f'the size of dimension {name!r}', size, 1)}"]
    return args


# What a shell says for a command it cannot find: dash/ash "taskset: not found", bash "taskset: command not found",
# Android's mksh "taskset: inaccessible or not found", zsh "command not found: taskset". (taskset's own failure to
# start the command after it, e.g. "taskset: failed to execute python", is not one of them.)
_NO_TASKSET = re.compile(r"\btaskset: (command |inaccessible or )?not found|not found: taskset\b")


def no_taskset(device: str, returncode: int, output: str) -> BenchError | None:
    """The error for a pinned command whose device shell has no taskset (exit 127), else None: without this the
    shell's 127 was taken for a missing Python or benchmark binary, and the fix named those."""
    match = _NO_TASKSET.search(output) if returncode == 127 else None
    if match is None:
        return None
    line = next(ln.strip() for ln in output.splitlines() if match.group(0) in ln)
    return BenchError(f"device '{device}' has no taskset, which its `cpus:` needs to pin the benchmark", why=line,
                      fix="remove `cpus:` from the device profile, or install taskset on the device "
                          "(util-linux, busybox or toybox)")


def cpu_mask(cpus: list[int]) -> str:
    """taskset's hex mask: understood by util-linux, busybox and Android's toybox taskset (which lacks -c)."""
    if not cpus or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cpus):
        raise BenchError(f"cpus must be a list of CPU numbers ≥ 0, got {cpus!r}",
                         fix="fix `cpus:` in the device profile")
    return format(sum(1 << c for c in set(cpus)), "x")


_ALLOWED_CPUS = re.compile(r"^Cpus_allowed_list:\s*([0-9][0-9,\-]*)\s*$", re.MULTILINE)


def device_cpus(device: Any) -> list[int] | None:
    """The CPUs the device lets our processes run on (Linux's and Android's /proc/self/status of a process its
    shell starts: what taskset may pin to), or None where it cannot tell (no /proc)."""
    result = device.run(["cat", "/proc/self/status"], timeout=60)
    match = _ALLOWED_CPUS.search(result.stdout) if result.returncode == 0 else None
    if match is None:
        return None
    cpus: list[int] = []
    for part in match.group(1).strip(",").split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def check_cpus(device: Any) -> None:
    """Refuse `cpus:` naming CPUs the device does not have, before any measurement: taskset pins to the ones it
    has and drops the others (the bench measured on fewer CPUs than asked, and only its JSON said so), and with
    none of them it fails ("taskset: failed to set pid's affinity: Invalid argument", called a runner crash)."""
    from edgekd.devices.base import DeviceError

    wanted = getattr(device.profile, "cpus", None)
    if not wanted:
        return
    cpu_mask(wanted)  # a list of CPU numbers at all
    have = device_cpus(device)
    missing = sorted(set(wanted) - set(have)) if have is not None else []
    if missing:
        listed = ", ".join(map(str, have or []))
        raise DeviceError(
            f"`cpus: {list(wanted)}` in the profile of device '{device.name}' names "
            f"{'CPU' if len(missing) == 1 else 'CPUs'} {', '.join(map(str, missing))}, which it does not have "
            f"(its CPUs: {listed})",
            why="taskset pins the benchmark to the listed CPUs the device has and drops the others, so it would "
                "run on fewer CPUs than `cpus:` asks; with none of them it fails",
            fix=f"set `cpus:` in the device profile to CPUs among {listed}, or remove it")


def remote_binary_path(device: Any, local: Path) -> str:
    """Where the benchmark binary lives on the device: WORKDIR/bin/<its local file name>."""
    return str(PurePosixPath(device.workdir) / "bin" / Path(local).name)


def push_binary(device: Any, local: Path) -> tuple[str, str]:
    """Push the benchmark binary to DEVICE_WORKDIR/bin/NAME unless the device already has it (by sha256),
    then make it executable. Returns (device path, sha256)."""
    from edgekd.rundir import sha256_file

    local = Path(local)
    if not local.is_file():
        raise BenchError(f"native benchmark binary not found: {local}",
                         fix="build the runtime's benchmark tool for the device's ABI (e.g. arm64-v8a) and point the "
                             "device profile at it")
    remote = remote_binary_path(device, local)
    digest = sha256_file(local)
    if device.sha256(remote) != digest:
        device.push(local, remote)
    chmod = device.run(["chmod", "755", remote], timeout=60)
    if chmod.returncode != 0:
        output = (chmod.stdout + chmod.stderr).strip()
        raise BenchError(f"cannot make {remote} executable on {device.name}",
                         why=_tail(output, 1) if output else f"chmod exit code {chmod.returncode}",
                         fix="keep the work directory on a file system that allows executables "
                             "(/data/local/tmp on Android; /sdcard is mounted noexec)")
    return remote, digest


def run_native(device: Any, binary_local_path: Path, artifact_remote_path: str, tool: str, threads: int,
               runs: int, warmup: int, timeout: float | None = NATIVE_TIMEOUT_S,
               lock_wait: float = NATIVE_LOCK_WAIT_S, notice: Callable[[str], None] | None = None,
               free_dims: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Run `tool` on the device against an artifact already pushed there, and parse what it printed.

    The binary is pushed once (skipped when the device's copy has the same sha256) and chmod'ed; the command
    is pinned with taskset when the profile names `cpus`, and runs holding the device's bench lock, the
    runner's (shell_lock: waiting up to lock_wait seconds for another bench there, from any machine or user,
    then BenchError "busy"; unlocked where the device has no flock tool, as "device_lock" says). `timeout` is
    for the tool once it has the device. stdout and stderr are parsed together (benchmark_model logs to stderr,
    perf_test to stdout). Returns the parsed dict plus "argv", "returncode", "device", "binary" {remote,
    sha256} and "device_lock" (runner.DeviceLock's record). `notice` is told at once when the tool has to wait
    for the device (shell_lock.notices). `free_dims` sizes perf_test's free dimensions (native_argv). A
    non-zero exit or an output without timings raises BenchError.
    """
    from edgekd.bench import shell_lock

    argv = native_argv(tool, remote_binary_path(device, Path(binary_local_path)), artifact_remote_path, threads,
                       runs, warmup, free_dims)  # validates the arguments before anything is pushed
    try:
        shell_lock.wait_arg(lock_wait)
    except ValueError as exc:
        raise BenchError(f"invalid lock wait for {tool}", why=str(exc), fix="pass seconds >= 0") from None
    remote, digest = push_binary(device, Path(binary_local_path))
    cpus = getattr(device.profile, "cpus", None)
    if cpus:
        argv = ["taskset", cpu_mask(cpus), *argv]
    text, lock = run_holding_lock(device, argv, tool, timeout=timeout, lock_wait=lock_wait, notice=notice,
                                  pinned=bool(cpus))
    try:
        parsed = PARSERS[tool](text)
    except BenchError as exc:
        raise BenchError(f"{device.name}: {exc.what}", why=exc.why, fix=exc.fix) from None
    parsed.update(argv=argv, returncode=0, device=device.name,
                  binary={"remote": remote, "sha256": digest}, device_lock=lock.record())
    return parsed


def run_holding_lock(device: Any, argv: list[str], tool: str, *, timeout: float | None, lock_wait: float,
                     notice: Callable[[str], None] | None = None, pinned: bool = False,
                     by_hand: list[str] | None = None) -> tuple[str, Any]:
    """Run `argv` on the device holding its bench lock (shell_lock) and return (stdout + stderr without the
    lock's lines, the shell_lock.LockReport). A busy device, a missing taskset (`pinned`) and a non-zero exit
    raise BenchError; its fix names `by_hand` (default: argv) as the command to try on the device."""
    from edgekd.bench import shell_lock

    wait = float(shell_lock.wait_arg(lock_wait))
    logger.debug("%s: %s", device.name, shlex.join(argv))
    proc = device.run(shell_lock.locked_argv(argv, lock_wait), timeout=None if timeout is None else timeout + wait,
                      on_line=shell_lock.notices(notice) if notice is not None else None)
    lock = shell_lock.report(proc.stderr)
    if lock.busy:
        raise busy_error(device.name, lock)
    stderr = lock.output
    text = proc.stdout + ("\n" if proc.stdout and not proc.stdout.endswith("\n") else "") + stderr
    missing = no_taskset(device.name, proc.returncode, text) if pinned else None
    if missing is not None:
        raise missing
    if proc.returncode != 0:
        raise BenchError(f"{tool} failed on {device.name} (exit code {proc.returncode})",
                         why=_exit_why(proc.returncode, text),
                         fix=_exit_fix(proc.returncode, tool, device.name, by_hand or argv))
    return text, lock


def busy_error(device: str, lock: Any) -> BenchError:
    """The runner's device_busy, for a native tool that found the device's bench lock held for its whole wait
    (lock: a shell_lock.LockReport)."""
    from edgekd.bench.harness import DEVICE_WAIT_ENV

    waited = f"{lock.waited_s:.1f} s" if lock.waited_s is not None else "its lock wait"
    return BenchError(
        f"device '{device}' is busy with another bench ({lock.holder or 'pid unknown'})",
        why=f"that bench holds the device's bench lock {lock.path} (its runner, or its native benchmark tool), and "
            "a benchmark tool timing at the same time would measure both models under each other's load; this "
            f"one waited {waited} (lock_wait_seconds) for it to end",
        fix="wait for the other bench to end (benches from other machines, users or profiles of this device take "
            f"turns), then run this one again; or set {DEVICE_WAIT_ENV} to the seconds to wait for it")


def _exit_why(code: int, text: str) -> str:
    if code == 127:
        return "the shell could not find or start the binary (exit 127): " + _tail(text, 2)
    if code == 126:
        return "the binary is not executable here (exit 126; wrong ABI, or a noexec file system): " + _tail(text, 2)
    if code >= 128:
        return f"killed by signal {code - 128} (exit {code}): " + _tail(text, 2)
    return _error_lines(text)


def _exit_fix(code: int, tool: str, device: str, argv: list[str]) -> str:
    if code in (126, 127):
        return (f"build {tool} for {device}'s ABI (`adb shell getprop ro.product.cpu.abi`) and put its shared "
                "libraries next to it; then try it by hand")
    if code >= 128:
        return "check the device's memory (`dumpsys meminfo`) and the log (`adb logcat`); try fewer threads"
    return f"run it by hand on the device to see the full log: {shlex.join(argv)}"


# ---------------------------------------------------------------------- toward a BenchResult

def _all(values: list[Any]) -> list[Any] | None:
    """The values when every round printed one, else None: a figure missing from a round is not made up."""
    return None if not values or any(v is None for v in values) else values


def _median(values: list[float] | None) -> float | None:
    return None if values is None else float(statistics.median(values))


def below_resolution(latency: dict[str, Any]) -> bool:
    """A run benchmark_model timed at a median of 0 µs but a mean above 0: its calls take under a microsecond.
    The tool times each call as the difference of two whole-µs clock readings (NowMicros before and after), so a
    0.3 µs call reads 1 with chance 0.3 and 0 otherwise: the median is 0 while the mean of the readings is still
    the calls' mean. Such a run has a latency (that mean); all zeros (mean 0) has none."""
    return latency.get("p50") == 0 and bool(latency.get("mean"))


def _round_latencies(rounds: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """Each round's latencies, and whether they are below the tool's resolution: then every round's p50 is its
    mean (one estimate for all rounds, not a whole-µs median in some), and no percentile is kept."""
    lats = [r["latency_us"] for r in rounds]
    if not any(below_resolution(lat) for lat in lats) or not all(lat.get("mean") for lat in lats):
        return lats, False
    unresolved = dict.fromkeys(("p5", "p90", "p95", "p99", "p999"))
    return [{**lat, **unresolved, "p50": lat["mean"]} for lat in lats], True


def latency_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The parsed latencies of every round (one tool run each) under the keys of `stats.summarize` (the runner
    path), combined the way the runner path combines its rounds, so reports read both alike.

    A tool prints summaries, not per-call times, so the rounds cannot be pooled call by call. n is the total
    of the rounds' calls; mean, std (population, as the tools print it), min and max are the exact figures of
    all calls together; p50 and the other percentiles are the median over the rounds, and the interval of the
    p50 is over the rounds' p50s (`stats.rounds_interval`, as `ci95_p50_rounds` on the runner path). A tail
    percentile is kept only when EVERY round had the calls to estimate it (p99: `stats.MIN_P99_SAMPLES`,
    p99.9: `stats.MIN_P999_SAMPLES`): one of a few calls' largest values is not an estimate, and a median with
    such a round in it would pass for one. What needs per-call latencies (the interval within a process,
    trimmed mean, the per-call stability metrics) is None; the verdict comes from the rounds' p50s alone
    (`_round_drift`), none from a single round. Calls under the tool's whole µs (`below_resolution`): each
    round's p50 is its mean, without percentiles, and `resolution_limited` says so.
    """
    from edgekd.bench import stats

    lats, limited = _round_latencies(rounds)
    col = {key: _all([lat.get(key) for lat in lats]) for key in LATENCY_KEYS}
    n = sum(col["n"]) if col["n"] is not None else None
    mean = std = None
    if n and col["mean"] is not None:
        mean = sum(k * m for k, m in zip(col["n"], col["mean"])) / n
        if col["std"] is not None:  # the law of total variance over the rounds (population, as printed)
            second = sum(k * (s * s + m * m) for k, s, m in zip(col["n"], col["std"], col["mean"])) / n
            std = math.sqrt(max(0.0, second - mean * mean))
    enough = {"p99": stats.MIN_P99_SAMPLES, "p999": stats.MIN_P999_SAMPLES}
    pct = {key: _median(col[key]) if col["n"] is not None and min(col["n"]) >= enough.get(key, 0) else None
           for key in ("p5", "p50", "p90", "p95", "p99", "p999")}
    interval = stats.rounds_interval([lat["p50"] for lat in lats]) if col["p50"] is not None else None
    drift, unstable, reasons = _round_drift(col["p50"])
    return {
        "n": n, "p50": pct["p50"], "p90": pct["p90"], "p99": pct["p99"], "mean": mean,
        "trimmed_mean": None, "std": std, "cv": std / mean if std is not None and mean else None,
        "ci95_p50": None, "ci95_p50_rounds": list(interval) if interval else None,
        "min": min(col["min"]) if col["min"] is not None else None,
        "max": max(col["max"]) if col["max"] is not None else None,
        "p5": pct["p5"], "p95": pct["p95"], "p999": pct["p999"],
        "trimmed_cv": None, "rel_ci95_half_width": None, "p99_p50": None, "tail_time_share": None, "drift": drift,
        "unstable": unstable, "unstable_reasons": reasons,
        "timer_overhead_us": None,  # the tool's own clock: its cost per call is not known here
        "resolution_limited": limited,
    }


def _round_drift(p50s: list[float] | None) -> tuple[float | None, bool | None, list[str]]:
    """(largest / smallest round p50, verdict, reasons): the one stability check a tool's summaries allow, the
    runner's drift rule (stats.MAX_DRIFT) applied to rounds instead of blocks of calls; no verdict from one round."""
    from edgekd.bench import stats

    if not p50s or len(p50s) < 2 or min(p50s) <= 0:
        return None, None, []
    drift = max(p50s) / min(p50s)
    if drift <= stats.MAX_DRIFT:
        return drift, False, []
    return drift, True, [f"round p50s differ by {drift:.2f}x (> {stats.MAX_DRIFT:g}x): the device changed speed "
                         "between rounds"]


def bench_result_fields(rounds: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    """The BenchResult fields a native run fills, from the parsed output of each round (one tool run each, or
    one dict for a single run): BenchResult(artifact=…, device=…, settings=…, **these).

    Combined like the runner path combines its rounds: the latency summary as `latency_summary` says, every
    round's p50 in round_p50_us, load and first inference as the median over the rounds, each memory figure
    as its largest (a peak), runtime["runs"] the total calls with runs_per_round beside it.
    """
    rounds = [rounds] if isinstance(rounds, dict) else list(rounds)
    if not rounds:
        raise ValueError("no native rounds to combine")
    first = rounds[0]
    memory: dict[str, float] = {}
    for r in rounds:
        for key, kb in (r.get("memory_kb") or {}).items():
            memory[key] = max(memory.get(key, kb), kb)
    runs = [r["runs"] for r in rounds]
    return {
        "harness": "native",
        "runtime": {"name": RUNTIMES[first["tool"]], "tool": first["tool"],
                    "binary_sha256": (first.get("binary") or {}).get("sha256"), "argv": first.get("argv"),
                    "runs": sum(runs), "runs_per_round": runs, "warmup_runs": first.get("warmup_runs"),
                    "warmup_avg_us": _median(_all([r.get("warmup_avg_us") for r in rounds])),
                    **first.get("extra", {})},
        "latency_us": latency_summary(rounds),
        "round_p50_us": [p for p in (lat.get("p50") for lat in _round_latencies(rounds)[0]) if p is not None],
        "load_ms": _median(_all([r.get("init_ms") for r in rounds])),
        "first_inference_us": _median(_all([r.get("first_inference_us") for r in rounds])),
        "memory_kb": memory,
        "latencies_ns": [],  # a native tool does not print per-call times
    }
