"""The CPU a result names, from /proc/cpuinfo texts as real kernels print them: x86 says its model; an arm64
kernel only lists each core's part number, so the runner (and the harness, for phones without Python) names
the board and its core mix the way lscpu does."""

from __future__ import annotations

import pytest

from edgekd.bench.runner import parse_cpuinfo


def arm_cores(parts: list[tuple[str, str]], features: str, tail: str = "", model_name: str = "") -> str:
    """A cpuinfo with one entry per core: (CPU implementer, CPU part), then the kernel's closing lines."""
    entries = [f"processor\t: {i}\n" + (f"model name\t: {model_name}\n" if model_name else "")
               + f"BogoMIPS\t: 38.40\nFeatures\t: {features}\nCPU implementer\t: {implementer}\n"
               "CPU architecture: 8\nCPU variant\t: 0x1\n"
               f"CPU part\t: {part}\nCPU revision\t: 0\n\n" for i, (implementer, part) in enumerate(parts)]
    return "".join(entries) + tail


ARMV8_2 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
# Raspberry Pi 4 on 64-bit Raspberry Pi OS: the kernel calls the SoC BCM2835 (it is a BCM2711); Model is the board.
PI4_64 = arm_cores([("0x41", "0xd08")] * 4, "fp asimd evtstrm crc32 cpuid",
                   "Hardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 10000000a1b2c3d4\n"
                   "Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
# The same board on a 32-bit kernel: every core has a model name that names no core.
PI4_32 = arm_cores([("0x41", "0xd08")] * 4, "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt "
                   "vfpd32 lpae evtstrm crc32",
                   "Hardware\t: BCM2711\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n",
                   model_name="ARMv7 Processor rev 3 (v7l)")
# Snapdragon 8 Gen 2 (Android, kernel 5.15): ARM's own part numbers, no Hardware line, four kinds of core.
SM8550 = arm_cores([("0x41", "0xd46")] * 3 + [("0x41", "0xd4d")] * 2 + [("0x41", "0xd47")] * 2
                   + [("0x41", "0xd4e")], ARMV8_2 + " i8mm bf16")
# Snapdragon 855 (Android, kernel 4.14): Qualcomm's own Kryo part numbers and a Hardware line.
SM8150 = arm_cores([("0x51", "0x805")] * 4 + [("0x51", "0x804")] * 4, ARMV8_2,
                   "Hardware\t: Qualcomm Technologies, Inc SM8150\n")
EPYC = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
        "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_2 avx avx2 fma f16c\n\n")


@pytest.mark.parametrize(("text", "board", "model", "features"), [
    (PI4_64, None, "Raspberry Pi 4 Model B Rev 1.4: 4× Cortex-A72", ["asimd"]),
    (PI4_32, None, "Raspberry Pi 4 Model B Rev 1.1: 4× Cortex-A72", ["neon"]),
    (SM8550, "SM8550", "SM8550: 3× Cortex-A510 + 2× Cortex-A715 + 2× Cortex-A710 + 1× Cortex-X3",
     ["asimd", "asimdhp", "asimddp", "i8mm", "bf16"]),
    (SM8550, None, "3× Cortex-A510 + 2× Cortex-A715 + 2× Cortex-A710 + 1× Cortex-X3",
     ["asimd", "asimdhp", "asimddp", "i8mm", "bf16"]),
    (SM8150, "SM8150", "Qualcomm Technologies, Inc SM8150: 4× Kryo-4XX-Silver + 4× Kryo-4XX-Gold",
     ["asimd", "asimdhp", "asimddp"]),
    # Jetson Orin: the board's name comes from the device tree (the runner reads /proc/device-tree/model)
    (arm_cores([("0x41", "0xd42")] * 6, ARMV8_2), "NVIDIA Jetson Orin Nano Developer Kit",
     "NVIDIA Jetson Orin Nano Developer Kit: 6× Cortex-A78AE", ["asimd", "asimdhp", "asimddp"]),
    # a core this table does not know keeps its ids, so the result still tells cores apart
    (arm_cores([("0x41", "0xd05"), ("0x41", "0xfff")], "fp asimd"), None, "1× Cortex-A55 + 1× core 0x41:0xfff",
     ["asimd"]),
    # an Android 3.x arm64 kernel's generic "Processor" line names no core
    ("Processor\t: AArch64 Processor rev 4 (aarch64)\n" + arm_cores([("0x41", "0xd03")] * 4, "fp asimd"), "MSM8953",
     "MSM8953: 4× Cortex-A53", ["asimd"]),
    (EPYC, None, "AMD EPYC 7B13", ["sse4_2", "avx", "avx2", "fma", "f16c"]),
    # the emulated board's cpuinfo (devices/arm64/cpuinfo.py) has a model name saying it is emulated: kept
    (arm_cores([("0x41", "0xd0b")] * 2, ARMV8_2, model_name="Cortex-A76 (emulated by qemu-aarch64)"), None,
     "Cortex-A76 (emulated by qemu-aarch64)", ["asimd", "asimdhp", "asimddp"]),
    ("", "SM8550", "SM8550", []),
    ("", None, None, []),
])
def test_parse_cpuinfo_names_the_cpu(text: str, board: str | None, model: str | None, features: list[str]):
    assert parse_cpuinfo(text, board) == (model, features)
