"""What a device without Python is, read through its shell: the `system` record edgekd's runner reports
(architecture, kernel, CPU model and features, logical CPUs, governor), for the results of a native tool. So a
report names the CPU a phone's latency was measured on, and a phone of another architecture than this host's
gets the cross-architecture check of its outputs, as with the runner."""

from __future__ import annotations

import logging
from typing import Any

from edgekd.bench.runner import parse_cpuinfo

logger = logging.getLogger(__name__)

_PARTS = ("machine", "system", "release", "cpuinfo", "device_model", "soc_model", "board", "governor")
_SEPARATOR = "@@edgekd@@"
# One fixed script (no value of the caller's in it). getprop answers on Android only; elsewhere it is absent.
# The device tree names an ARM board ("Raspberry Pi 4 Model B Rev 1.4"); x86 has none.
_SCRIPT = f'; echo "{_SEPARATOR}"; '.join((
    "uname -m", "uname -s", "uname -r", "cat /proc/cpuinfo 2>/dev/null", "getprop ro.product.model 2>/dev/null",
    "getprop ro.soc.model 2>/dev/null", "cat /proc/device-tree/model 2>/dev/null",
    "cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null",
)) + "; exit 0"


def native_system(device: Any) -> dict[str, Any] | None:
    """The device's system as the runner's `system_info` records it (plus `device_model` on Android), or None
    when its shell did not answer as expected: the results then name no CPU, as before."""
    proc = device.run(["sh", "-c", _SCRIPT], timeout=60)
    parts = [part.strip() for part in proc.stdout.split(_SEPARATOR)]
    if proc.returncode != 0 or len(parts) != len(_PARTS):
        logger.debug("%s: no system description (exit %s, %d parts)", device.name, proc.returncode, len(parts))
        return None
    found = dict(zip(_PARTS, parts))
    board = found["soc_model"] or found["board"].strip("\x00") or None
    cpu_model, features = parse_cpuinfo(found["cpuinfo"], board)
    processors = sum(1 for key, _, value in (line.partition(":") for line in found["cpuinfo"].splitlines())
                     if key.strip().lower() == "processor" and value.strip().isdigit())  # old ARM: "Processor: <name>"
    return {"machine": found["machine"] or None, "system": found["system"] or None,
            "release": found["release"] or None, "cpu_model": cpu_model,
            "cpu_count_logical": processors or None, "cpu_features": features, "governor": found["governor"] or None,
            "affinity": None, "device_model": found["device_model"] or None}
