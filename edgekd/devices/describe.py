"""`edgekd devices --info NAME`: what a bench would find on a device, before spending a bench on it. The CPU
(model and core mix, logical CPUs, the instruction-set features INT8 kernels use), the Python, numpy and
runtimes edgekd's runner would use (or that it has none, and the native tools its profile names instead),
Android's facts and the thermal state now. Each value comes from the device, the same calls a bench makes."""

from __future__ import annotations

from typing import Any

from edgekd.devices.base import Device, temperature


def describe(device: Device) -> list[tuple[str, str]]:
    """(what, value) rows describing the connected `device`."""
    info = device.info()
    system = info.get("system") or {}
    profile = device.profile
    rows = [("device", f"{device.name} ({profile.kind})"),
            ("architecture", (system.get("machine") or "unknown") + (" (emulated)" if profile.emulated else "")),
            ("system", " ".join(str(v) for v in (system.get("system"), system.get("release")) if v) or "unknown"),
            ("CPU", system.get("cpu_model") or "unknown"),
            ("logical CPUs", _cpus(system)),
            ("CPU features", ", ".join(system.get("cpu_features") or []) or "none of those INT8 kernels use"),
            ("governor", system.get("governor") or "unknown")]
    rows += _software(info, profile)
    rows += _android(info.get("android"))
    rows.append(("thermal", _thermal(info.get("thermal") or temperature(device))))  # adb's status, else zones
    if "ssh_host_key_checking" in info:
        rows.append(("ssh host keys", info["ssh_host_key_checking"]))
    return rows


def _cpus(system: dict[str, Any]) -> str:
    count, affinity = system.get("cpu_count_logical"), system.get("affinity")
    text = str(count) if count else "unknown"
    if affinity and count and len(affinity) != count:
        text += f" (this process may use {len(affinity)}: {', '.join(str(c) for c in affinity)})"
    return text


def _software(info: dict[str, Any], profile: Any) -> list[tuple[str, str]]:
    if not info.get("python"):
        native = profile.options.get("native") or {}
        tools = (", ".join(f"{fmt}: {path}" for fmt, path in native.items())
                 or "none: set `native: {tflite: PATH}` (or onnx:) in its profile, or `python:`")
        return [("Python", "none: each runtime's own benchmark tool times the artifacts"), ("native tools", tools)]
    runtimes = info.get("runtimes") or {}
    return [("Python", str(info["python"])), ("numpy", str(info.get("numpy") or "missing: the runner needs it")),
            ("runtimes", ", ".join(f"{name} {version}" for name, version in runtimes.items() if version)
             or "none: pip install onnxruntime or ai-edge-litert on the device")]


def _android(props: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not props:
        return []
    phone = " ".join(str(props[k]) for k in ("manufacturer", "model") if props.get(k)) or "unknown"
    version = ", ".join(f"{label} {props[k]}" for label, k in (("Android", "release"), ("SDK", "sdk"),
                                                                ("ABI", "abi")) if props.get(k))
    return [("Android", f"{phone} ({version})" if version else phone)]


def _thermal(reading: dict[str, Any] | None) -> str:
    if not reading:
        return "not readable"
    if "status_name" in reading:
        return f"status {reading['status']} ({reading['status_name']})"
    return f"{reading['max_celsius']:.1f} °C, the hottest of {reading['zones']} thermal zones"
