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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

X86_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "sve", "svei8mm")
X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
ARM_MACHINES = ("aarch64", "arm64", "armv8l", "armv8", "armv7l")
# 32-bit Arm user space (uname -m): an ARMv6/v7 board, or 32-bit Linux on an ARMv8 CPU (armv8l)
ARM32_MACHINES = ("armv8l", "arm", "armhf", "armel")
# What a device profile's `cpu:` may say (edgekd.devices.profiles): the architectures `_arch` names, each with the
# flags the runner reports for it (edgekd.bench.runner.CPU_FEATURES_OF_INTEREST), so a profile and a bench result
# describe a CPU in the same words. The machine name stands in for the arch when features are computed.
CPU_ARCHES = {"x86_64": "x86_64", "arm64": "aarch64", "arm32": "armv7l"}
_X86_PROFILE_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                      "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
_ARM_PROFILE_FLAGS = ("neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme")
PROFILE_FLAGS = {"x86_64": _X86_PROFILE_FLAGS, "arm64": _ARM_PROFILE_FLAGS, "arm32": _ARM_PROFILE_FLAGS}
# Without a measured per-call floor (bench.floor: false, or results without one), a model whose FP32 p50 is under
# this many µs is taken to be overhead-bound: onnxruntime's floor is ~4 µs on the x86 VM edgekd is developed on
# (LiteRT's ~1 µs, /work/shared/FACTS.md), and INT8's quantize/dequantize of the input and output add a few µs
# more, so below ~50 µs they are a large share of a call. A measured floor replaces this guess.
FALLBACK_SMALL_MODEL_US = 50.0


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
        return "arm32" if m in ARM32_MACHINES or m.startswith(("armv6", "armv7")) else "arm64"
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


def declared_cpu_features(cpu: dict) -> dict:
    """cpu_int8_features of the CPU a device profile declares (`cpu: {arch: ..., flags: [...]}`, checked by
    edgekd.devices.profiles): its flags are all the profile knows, so they count as read (`known`) when listed."""
    flags = list(cpu.get("flags") or ())
    features = cpu_int8_features("flags : " + " ".join(flags), CPU_ARCHES[cpu["arch"]])
    return {**features, "arch": cpu["arch"], "known": "flags" in cpu}


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


def explain_int8_speed(int8_p50: float, fp32_p50: float, features: dict,
                       floor_p50: float | None = None) -> str | None:
    """None when INT8 is faster than FP32; otherwise a sentence saying that it is not, and why.
    All p50s are in microseconds (the small-model remark uses the FP32 p50 and the runtime's per-call floor,
    `floor_p50`, when it was measured)."""
    if not (int8_p50 > 0 and fp32_p50 > 0) or int8_p50 < fp32_p50:
        return None
    ratio = int8_p50 / fp32_p50
    head = (f"INT8 is not faster than FP32 on this CPU (p50 {int8_p50:.1f} µs vs {fp32_p50:.1f} µs, "
            f"{ratio:.2f}x)")
    return f"{head}: " + "; ".join(int8_slow_reasons(fp32_p50, features, floor_p50)) + "."


def int8_slow_reasons(fp32_p50: float, features: dict, floor_p50: float | None = None) -> list[str]:
    """Why INT8 does not beat FP32 on a CPU with these `features`, for a model whose FP32 p50 is `fp32_p50` µs.
    The per-call overhead is blamed from the runtime's measured floor (`floor_p50` µs, an Identity graph timed
    beside the model) when there is one, else from FALLBACK_SMALL_MODEL_US."""
    from edgekd.bench.stats import OVERHEAD_BOUND

    arch = features.get("arch")
    reasons: list[str] = []
    if not features.get("known", True):
        reasons.append("the device's CPU flags are unknown, so its INT8 instructions cannot be named")
    elif arch == "x86_64" and not (features.get("vnni") or features.get("amx_int8")):
        reasons.append("no VNNI or AMX: INT8 matmuls use AVX2 VPMADDUBSW (multiply, then widen and add in "
                       "separate steps), barely faster per multiply than FP32 FMA")
    elif arch in ("arm64", "arm32") and not (features.get("dotprod") or features.get("i8mm")):
        reasons.append("no dot-product (asimddp) or i8mm: INT8 matmuls widen to 16 bits with plain NEON")
    if floor_p50 and floor_p50 > 0:
        if fp32_p50 < OVERHEAD_BOUND * floor_p50:
            reasons.append(f"the runtime's per-call floor ({floor_p50:.1f} µs, measured) is {floor_p50 / fp32_p50:.0%} "
                           f"of this {fp32_p50:.1f} µs model's time, and INT8 adds the "
                           "QuantizeLinear/DequantizeLinear of its input and output")
    elif fp32_p50 < FALLBACK_SMALL_MODEL_US:
        reasons.append(f"a {fp32_p50:.0f} µs model likely spends much of its time in per-call overhead (no floor "
                       "was measured to say how much) and in the QuantizeLinear/DequantizeLinear of its input and "
                       "output, which INT8 adds")
    if not reasons:
        reasons.append(f"the CPU has fast INT8 instructions ({_names(features)}), so the layers are likely too "
                       "small to amortise quantize/dequantize and requantization between layers")
    return reasons

REDUCE_RANGE_SETTINGS = ("auto", True, False)


@dataclass(frozen=True)
class TargetCpu:
    """The CPU of a device the artifacts are meant for, as far as export can know it without connecting:
    `features` (cpu_int8_features) or None when its profile does not say; `source` says how it is known."""

    device: str
    features: dict | None
    source: str


def target_cpu(device: str) -> TargetCpu:
    """What a device profile (name or path) says about its CPU, read at export time without connecting:

    - a `cpu:` field (ssh and adb profiles): the CPU it declares;
    - kind local: it runs on this machine, so this machine's CPU;
    - kind ssh with `board_dir:`: the emulated board (edgekd.devices.emulated), qemu-aarch64: an Arm64 CPU;
    - any other ssh or adb profile: unknown (the board or phone may be offline).
    """
    from edgekd.devices.profiles import find_profile
    from edgekd.errors import EdgeKDError

    try:
        profile = find_profile(device)
    except EdgeKDError as exc:
        return TargetCpu(device, None, f"its profile cannot be read ({exc.what})")
    declared = profile.options.get("cpu")
    if declared:
        flags = f" with {', '.join(declared['flags']) or 'no listed flag'}" if "flags" in declared else ""
        return TargetCpu(profile.name, declared_cpu_features(declared),
                         f"its profile's cpu: {declared['arch']}{flags}")
    if profile.kind == "local":
        return TargetCpu(profile.name, cpu_int8_features(), "a local profile: this machine's CPU")
    if profile.kind == "ssh" and profile.options.get("board_dir"):
        return TargetCpu(profile.name, cpu_int8_features("", "aarch64"), "the emulated board: qemu-aarch64, Arm64")
    return TargetCpu(profile.name, None, f"its {profile.kind} profile does not say which CPU the device has "
                                         "(no `cpu:` field)")


def recipe_targets(recipe: Any) -> tuple[TargetCpu, ...]:
    """The devices a recipe benchmarks its artifacts on: bench.device when the bench stage runs, else none
    (the artifacts may then run anywhere)."""
    return (target_cpu(recipe.bench.device),) if recipe.bench.enabled else ()


def choose_reduce_range(setting: str | bool = "auto", targets: Sequence[TargetCpu] = ()) -> dict:
    """Whether ONNX INT8 weights use onnxruntime's `reduce_range` (7-bit weights, [-64, 64]) and why:
    {"reduce_range": bool, "setting": "auto" | True | False, "reason": str, "targets": [...]}.

    It matters on the CPU that runs the artifact, not on the one that exports it: on x86-64 without VNNI/AMX
    onnxruntime's U8S8 kernels multiply with VPMADDUBSW, whose 16-bit pair sums saturate with 8-bit weights
    (255·127·2 > 32767) and not with 7-bit ones (255·64·2 = 32640); Arm and VNNI/AMX kernels do not saturate.
    "auto" decides for the `targets` (recipe_targets): 7-bit when any of them needs it, or when any target's CPU
    is unknown, or when there is no target: 7-bit weights are right on every CPU (they cost at most a bit of
    precision, which parity measures), 8-bit ones silently saturate on some.
    """
    from edgekd.errors import ExportError

    if setting not in REDUCE_RANGE_SETTINGS or not isinstance(setting, (str, bool)):
        raise ExportError(f"int8_reduce_range must be 'auto', true or false, got {setting!r}",
                          fix="set export.int8_reduce_range to auto (decide for the target device), true or false")
    decided = [(t, *_auto_reduce_range(t.features)) for t in targets]
    records = [{"device": t.device, "cpu": t.source, "reduce_range": needs, "why": why} for t, needs, why in decided]
    auto, why = _combine(decided)
    if setting == "auto":
        chosen, reason = auto, f"auto: {why}"
    else:
        chosen = bool(setting)
        agrees = "as auto would" if chosen == auto else f"auto would choose {auto}"
        reason = f"set by the recipe (export.int8_reduce_range: {str(setting).lower()}; {agrees}: {why})"
    host_needs = _auto_reduce_range(cpu_int8_features())[0]
    if not chosen and host_needs:
        reason += ("; this host's int8 kernels saturate 8-bit weights, so the parity it measures can be lower "
                   "than on the target")
    return {"reduce_range": chosen, "setting": setting if setting == "auto" else bool(setting), "reason": reason,
            "targets": records}


def _combine(decided: list[tuple[TargetCpu, bool | None, str]]) -> tuple[bool, str]:
    """One grid for every target: 7-bit if any target needs it or is unknown (or there is none)."""
    if not decided:
        return True, ("no target device (no bench.device, nor export --device), so the CPU that will run the "
                      "artifact is unknown: 7-bit weights, which no CPU's int8 kernels saturate")
    unknown = [t for t, needs, _ in decided if needs is None]
    if unknown:
        t = unknown[0]
        return True, (f"the CPU of target '{t.device}' is unknown ({t.source}): 7-bit weights, which no CPU's int8 "
                      "kernels saturate; add `cpu:` to its profile (e.g. `cpu: {arch: arm64}`) or set "
                      "export.int8_reduce_range: false if it is Arm or x86 with VNNI/AMX")
    needing = [(t, why) for t, needs, why in decided if needs]
    if needing:
        t, why = needing[0]
        return True, f"target '{t.device}' ({t.source}): {why}"
    return False, "; ".join(f"target '{t.device}' ({t.source}): {why}" for t, _, why in decided)


def _auto_reduce_range(features: dict | None) -> tuple[bool | None, str]:
    """(whether a CPU with these features needs 7-bit weights — None when unknown —, why)."""
    arch = (features or {}).get("arch")
    if arch in ("arm64", "arm32"):
        return False, "Arm: onnxruntime's int8 kernels widen to 32 bits, no 16-bit saturation; 8-bit weights"
    if arch == "x86_64":
        if not features.get("known"):
            return None, "x86-64 whose instruction sets could not be read"
        if features.get("vnni") or features.get("amx_int8"):
            return False, f"x86-64 with {_names(features)}: VNNI/AMX int8 kernels do not saturate; 8-bit weights"
        if features.get("avx2") or features.get("avx512"):
            return True, (f"x86-64 without AVX-VNNI/AMX ({_names(features)}): onnxruntime's int8 kernels "
                          "(VPMADDUBSW) saturate their 16-bit sums with 8-bit weights (255·127·2 > 32767); 7-bit "
                          "weights keep them in range")
        return False, "x86-64 without AVX2: SSE int8 kernels widen before adding, no saturation; 8-bit weights"
    if features is None or arch in (None, "", "unknown"):
        return None, "the CPU's architecture is unknown"
    return False, f"{arch}: no 16-bit saturation in onnxruntime's int8 kernels; 8-bit weights"
