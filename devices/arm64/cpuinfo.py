"""Print the /proc/cpuinfo an ARM64 Linux kernel would show for the CPU this Python runs on under qemu-aarch64.

Run by devices/arm64/setup.sh with the board's own (emulated) Python; the output becomes rootfs/proc/cpuinfo,
which qemu's `-L rootfs` shows the board's programs instead of the host's x86 file. onnxruntime's CPU detection
(pytorch/cpuinfo) crashes on the x86 file and needs a known core there. Nothing is invented: the features are
decoded from the AT_HWCAP/AT_HWCAP2 words qemu hands this process (what the emulated core really offers), the
core is the MIDR qemu gives its CPU model, and there is one entry per CPU qemu lets us use.

    python3 cpuinfo.py MIDR MODEL      e.g.  python3 cpuinfo.py 0x414fd0b1 Cortex-A76

Standard library only (it runs before anything is installed on the board).
"""

from __future__ import annotations

import os
import platform
import struct
import sys

AT_HWCAP, AT_HWCAP2 = 16, 26
# Bit i of AT_HWCAP / AT_HWCAP2 -> the name /proc/cpuinfo prints (Linux arch/arm64/include/uapi/asm/hwcap.h).
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop "
         "sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 "
          "i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 smei8i32 smef16f32 smeb16f32 "
          "smef32f32 smefa64").split()


def auxv() -> dict[int, int]:
    """The auxiliary vector of this process (qemu-user emulates /proc/self/auxv for the guest)."""
    with open("/proc/self/auxv", "rb") as f:
        data = f.read()
    pairs = (struct.unpack_from("<QQ", data, i) for i in range(0, len(data) - 15, 16))
    return {key: value for key, value in pairs}


def features(hwcap: int, hwcap2: int) -> list[str]:
    return ([name for bit, name in enumerate(HWCAP) if hwcap >> bit & 1]
            + [name for bit, name in enumerate(HWCAP2) if hwcap2 >> bit & 1])


def cpuinfo(midr: int, model: str, cpus: int, feature_names: list[str]) -> str:
    entry = [
        # An arm64 kernel prints no model name; the runner reads this one into the result's cpu_model, so the
        # result itself says the board was emulated.
        ("model name", f"{model} (emulated by qemu-aarch64)"),
        ("Features", " ".join(feature_names)),
        ("CPU implementer", f"0x{midr >> 24 & 0xff:02x}"),
        ("CPU architecture", "8"),
        ("CPU variant", f"0x{midr >> 20 & 0xf:x}"),
        ("CPU part", f"0x{midr >> 4 & 0xfff:03x}"),
        ("CPU revision", str(midr & 0xf)),
    ]
    return "".join(f"processor\t: {i}\n" + "".join(f"{k}\t: {v}\n" for k, v in entry) + "\n" for i in range(cpus))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    if platform.machine() != "aarch64":
        print(f"cpuinfo.py must run on the emulated board (this Python runs on {platform.machine()})", file=sys.stderr)
        return 2
    vector = auxv()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    sys.stdout.write(cpuinfo(int(argv[0], 16), argv[1], cpus,
                             features(vector.get(AT_HWCAP, 0), vector.get(AT_HWCAP2, 0))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
