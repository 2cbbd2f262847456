"""Hardware-aware INT8: which integer instructions this CPU has, which INT8 format is fast on it, and why INT8
may not beat FP32 here.

Detection reads the flag lines of /proc/cpuinfo (`flags` on x86, `Features` on Arm) and `platform.machine()`.

The recommendation follows onnxruntime's quantization guide (docs/performance/model-optimizations/quantization):
- "S8S8 with QDQ is the default setting and balances performance and accuracy"; S8S8 in QOperator format is
  slow on x86-64 and is never recommended.
- x86-64 with AVX2/AVX-512 but without VNNI: onnxruntime computes U8S8 with VPMADDUBSW, whose 16-bit
  intermediate sums can saturate; `reduce_range` (7-bit weights) "is designed for the U8S8 format on AVX2 and
  AVX512 (non-VNNI) machines to mitigate saturation issues", U8U8 is the fallback if accuracy still drops.
  Speed-ups over FP32 are modest there ("x86-64 with VNNI ... and ARM with dot-product instructions can get
  better performance in general").
- x86-64 with VNNI (AVX512_VNNI, AVX_VNNI) or AMX: no saturation issue, reduce_range not needed; S8S8 QDQ.
- Arm64: no saturation issue; dot-product (asimddp: SDOT/UDOT) and i8mm (SMMLA) make INT8 GEMMs fast; S8S8 QDQ.
"""

from __future__ import annotations

import platform
from pathlib import Path

X86_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "sve", "svei8mm")
X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
ARM_MACHINES = ("aarch64", "arm64", "armv8l", "armv8", "armv7l")


def cpu_flags(cpuinfo: str) -> set[str]:
    """All flags of the `flags` (x86) / `Features` (Arm) lines, and of lscpu's `Flags:` line."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.lower().split())
    return flags


def _arch(machine: str, flags: set[str]) -> str:
    m = machine.lower()
    if m in X86_MACHINES or (not m and "sse2" in flags):
        return "x86_64"
    if m in ARM_MACHINES or m.startswith("arm") or (not m and "asimd" in flags):
        return "arm64" if m not in ("armv7l",) else "arm32"
    return m or "unknown"


def cpu_int8_features(cpuinfo: str | None = None, machine: str | None = None) -> dict:
    """The INT8-relevant instruction sets of this CPU (or of a given /proc/cpuinfo text and machine name).

    Keys: machine, arch ("x86_64", "arm64", ...), avx2, avx512, avx512_vnni, avx_vnni, vnni (either), amx_int8,
    dotprod (asimddp), i8mm (i8mm or svei8mm), known (False when no flag line could be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    if machine is None:
        machine = platform.machine()
    flags = cpu_flags(cpuinfo)
    return {
        "machine": machine,
        "arch": _arch(machine, flags),
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "amx_int8": "amx_int8" in flags,
        "dotprod": "asimddp" in flags,
        "i8mm": "i8mm" in flags or "svei8mm" in flags,
        "known": bool(flags),
    }


def _names(features: dict) -> str:
    keys = [k for k in ("amx_int8", "avx512_vnni", "avx_vnni", "avx512", "avx2", "i8mm", "dotprod") if features.get(k)]
    return ", ".join(keys) or "none of avx2/avx512/vnni/amx/dotprod/i8mm"


def recommend_int8(features: dict) -> dict:
    """The INT8 format fast on this CPU: {format, activations, weights, reduce_range, per_channel, fast_int8,
    kernel, reason}. `fast_int8` says whether INT8 GEMMs are expected to beat FP32 clearly."""
    arch = features.get("arch")
    base = {"format": "QDQ", "activations": "int8", "weights": "int8", "reduce_range": False, "per_channel": True}
    if arch == "x86_64":
        if features.get("amx_int8") or features.get("vnni"):
            kernel = "AMX tiles (TDPBSSD)" if features.get("amx_int8") else "VNNI VPDPBUSD"
            return {**base, "fast_int8": True, "kernel": kernel,
                    "reason": f"x86-64 with {_names(features)}: onnxruntime runs INT8 GEMMs with {kernel}, without "
                              "the 16-bit saturation of the pre-VNNI path, so S8S8 QDQ (onnxruntime's default) is "
                              "fast and reduce_range is not needed"}
        if features.get("avx2") or features.get("avx512"):
            return {**base, "reduce_range": True, "fast_int8": False, "kernel": "VPMADDUBSW (U8S8)",
                    "reason": f"x86-64 without VNNI ({_names(features)}): onnxruntime computes U8S8 with VPMADDUBSW, "
                              "whose 16-bit sums can saturate; its guide advises reduce_range (7-bit weights) for "
                              "this case and U8U8 if accuracy still drops. S8S8 QDQ stays the format (activations "
                              "are converted to u8 inside onnxruntime; S8S8 QOperator would be slow). INT8 gains "
                              "over FP32 are modest here"}
        return {**base, "fast_int8": False, "kernel": "SSE4.1",
                "reason": "x86-64 without AVX2: INT8 kernels are SSE-only and rarely beat FP32"}
    if arch in ("arm64", "arm32"):
        if features.get("i8mm") or features.get("dotprod"):
            kernel = "SMMLA (i8mm)" if features.get("i8mm") else "SDOT/UDOT (dotprod)"
            return {**base, "fast_int8": True, "kernel": kernel,
                    "reason": f"Arm with {_names(features)}: INT8 GEMMs use {kernel} and have no saturation issue; "
                              "S8S8 QDQ without reduce_range"}
        return {**base, "fast_int8": False, "kernel": "NEON widening multiply (SMULL/SMLAL)",
                "reason": "Arm without dot-product (asimddp) or i8mm (e.g. Cortex-A72/A53): INT8 GEMMs widen to "
                          "16 bits with plain NEON, so INT8 is often no faster than FP32; S8S8 QDQ still halves "
                          "memory traffic"}
    return {**base, "fast_int8": False, "kernel": "unknown",
            "reason": f"unknown CPU architecture '{features.get('machine') or arch}': onnxruntime's default S8S8 QDQ"}


def explain_int8_speed(int8_p50: float, fp32_p50: float, features: dict) -> str | None:
    """None when INT8 is faster than FP32; otherwise a sentence saying that it is not, and why.
    Both p50s are in microseconds (the small-model remark uses the FP32 p50)."""
    if not (int8_p50 > 0 and fp32_p50 > 0) or int8_p50 < fp32_p50:
        return None
    ratio = int8_p50 / fp32_p50
    head = (f"INT8 is not faster than FP32 on this CPU (p50 {int8_p50:.1f} µs vs {fp32_p50:.1f} µs, "
            f"{ratio:.2f}x)")
    return f"{head}: " + "; ".join(int8_slow_reasons(fp32_p50, features)) + "."


def int8_slow_reasons(fp32_p50: float, features: dict) -> list[str]:
    """Why INT8 does not beat FP32 on a CPU with these `features`, for a model whose FP32 p50 is `fp32_p50` µs."""
    arch = features.get("arch")
    reasons: list[str] = []
    if not features.get("known", True):
        reasons.append("the device's CPU flags are unknown, so its INT8 instructions cannot be named")
    elif arch == "x86_64" and not (features.get("vnni") or features.get("amx_int8")):
        reasons.append("no VNNI or AMX: INT8 matmuls use AVX2 VPMADDUBSW (multiply, then widen and add in "
                       "separate steps), barely faster per multiply than FP32 FMA")
    elif arch in ("arm64", "arm32") and not (features.get("dotprod") or features.get("i8mm")):
        reasons.append("no dot-product (asimddp) or i8mm: INT8 matmuls widen to 16 bits with plain NEON")
    if fp32_p50 < 50:
        reasons.append(f"a {fp32_p50:.0f} µs model spends most of its time in per-call overhead and in the "
                       "QuantizeLinear/DequantizeLinear of its input and output, which INT8 adds")
    if not reasons:
        reasons.append(f"the CPU has fast INT8 instructions ({_names(features)}), so the layers are likely too "
                       "small to amortise quantize/dequantize and requantization between layers")
    return reasons

REDUCE_RANGE_SETTINGS = ("auto", True, False)


def choose_reduce_range(setting: str | bool = "auto", features: dict | None = None) -> dict:
    """Whether ONNX INT8 weights use onnxruntime's `reduce_range` (7-bit weights, [-64, 64]) and why:
    {"reduce_range": bool, "setting": "auto" | True | False, "reason": str}.

    "auto" decides for this host's CPU (`features`, default: detected), where the artifact is verified and
    benchmarked: on x86-64 without VNNI/AMX onnxruntime's U8S8 kernels multiply with VPMADDUBSW, whose 16-bit
    pair sums saturate with 8-bit weights (255·127·2 > 32767) and not with 7-bit ones (255·64·2 = 32640).
    """
    from edgekd.errors import ExportError

    if setting not in REDUCE_RANGE_SETTINGS or not isinstance(setting, (str, bool)):
        raise ExportError(f"int8_reduce_range must be 'auto', true or false, got {setting!r}",
                          fix="set export.int8_reduce_range to auto (decide for this CPU), true or false")
    features = cpu_int8_features() if features is None else features
    auto = _auto_reduce_range(features)
    if setting == "auto":
        return {"reduce_range": auto[0], "setting": "auto", "reason": f"auto: {auto[1]}"}
    agrees = "as auto would on this host" if setting == auto[0] else f"auto would choose {auto[0]} here"
    return {"reduce_range": bool(setting), "setting": bool(setting),
            "reason": f"set by the recipe (export.int8_reduce_range: {str(setting).lower()}; {agrees})"}


def _auto_reduce_range(features: dict) -> tuple[bool, str]:
    if not features.get("known"):
        return False, "the CPU's flags could not be read; onnxruntime's default 8-bit weights"
    arch = features.get("arch")
    if arch == "x86_64" and not (features.get("vnni") or features.get("amx_int8")):
        if features.get("avx2") or features.get("avx512"):
            return True, (f"x86-64 without AVX-VNNI/AMX ({_names(features)}): onnxruntime's int8 kernels "
                          "(VPMADDUBSW) saturate their 16-bit sums with 8-bit weights (255·127·2 > 32767); 7-bit "
                          "weights keep them in range")
        return False, "x86-64 without AVX2: SSE int8 kernels widen before adding, no saturation; 8-bit weights"
    if arch == "x86_64":
        return False, f"x86-64 with {_names(features)}: VNNI/AMX int8 kernels do not saturate; 8-bit weights"
    return False, f"{arch} ({_names(features)}): no 16-bit saturation in onnxruntime's int8 kernels; 8-bit weights"
