"""`edgekd devices --info NAME`: a device described the way a bench finds it, through the real CLI: this host
(the runner's --info), and a phone without Python over the real adb client (its shell, getprop, dumpsys)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import yaml

import pytest

from adb_device import LoopbackAdbDevice
from edgekd.bench.runner import parse_cpuinfo
from test_adb_device import WD, _attached, adb_server, phone  # noqa: F401  (fixtures)
from test_cpuinfo import SM8550

CLI = [sys.executable, "-m", "edgekd.cli"]


def _info(cwd: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "devices", "--info", name], cwd=cwd, env={**os.environ, "COLUMNS": "300"},
                          capture_output=True, text=True, timeout=120, check=False)


def _rows(stdout: str) -> dict[str, str]:
    """The table's rows as {what: value} (Rich draws them between │ characters)."""
    cells = (line.strip("│ ").split("│") for line in stdout.splitlines() if line.startswith("│"))
    return {what.strip(): value.strip() for what, value in (c for c in cells if len(c) == 2)}


def test_this_host_is_described_as_the_runner_sees_it(tmp_path):
    import onnxruntime

    proc = _info(tmp_path, "host")
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    cpu, features = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    assert rows["device"] == "host (local)" and rows["architecture"] == platform.machine()
    assert rows["CPU"] == cpu and rows["logical CPUs"].startswith(str(os.cpu_count()))
    assert rows["CPU features"] == ", ".join(features)
    assert rows["Python"] == platform.python_version() and f"onnxruntime {onnxruntime.__version__}" in rows["runtimes"]


def test_a_phone_without_python_is_described_from_its_shell(adb_server, phone, tmp_path):  # noqa: F811
    profile = tmp_path / "phone.yaml"
    profile.write_text(yaml.safe_dump({"name": "phone", "kind": "adb", "serial": phone.address,
                                       "server_port": adb_server.port, "workdir": WD, "python": None,
                                       "native": {"tflite": "/opt/benchmark_model"}}))
    proc = _info(tmp_path, str(profile))
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    assert rows["device"] == "phone (adb)" and rows["system"] == "Android 14"  # getprop's release
    assert rows["CPU"] == parse_cpuinfo(Path("/proc/cpuinfo").read_text())[0]  # the phone's /proc/cpuinfo
    assert rows["logical CPUs"] == str(os.cpu_count()) and rows["governor"] == "schedutil"
    assert rows["Python"].startswith("none") and rows["native tools"] == "tflite: /opt/benchmark_model"
    assert rows["Android"] == "edgekd edgekd-loopback (Android 14, SDK 34, ABI x86_64)"
    assert rows["thermal"] == "status 1 (light)"  # dumpsys thermalservice


@pytest.fixture()
def snapdragon(adb_server, tmp_path_factory):  # noqa: F811
    """A loopback phone whose shell shows a Snapdragon 8 Gen 2's /proc/cpuinfo (its /proc is the sandbox's) and
    whose getprop names the SoC, as Android 12+ does (ro.soc.model)."""
    sandbox = tmp_path_factory.mktemp("snapdragon")
    (sandbox / "proc").mkdir()
    (sandbox / "proc" / "cpuinfo").write_text(SM8550)
    device = LoopbackAdbDevice(sandbox, mapped_prefixes=("/data/local/tmp", "/proc"),
                               props={"ro.soc.model": "SM8550", "ro.product.model": "SM-S911B",
                                      "ro.product.manufacturer": "samsung", "ro.product.cpu.abi": "arm64-v8a"})
    with _attached(adb_server, device):
        yield device


def test_an_android_phones_cpu_is_named_by_its_soc_and_cores(adb_server, snapdragon, tmp_path):  # noqa: F811
    """What a bench result on such a phone names (native_system, over the real adb client): the SoC with its
    big.LITTLE mix, its 8 cores and the INT8 features its cores have (dotprod, i8mm)."""
    profile = tmp_path / "s23.yaml"
    profile.write_text(yaml.safe_dump({"name": "s23", "kind": "adb", "serial": snapdragon.address,
                                       "server_port": adb_server.port, "workdir": WD, "python": None}))
    rows = _rows(_info(tmp_path, str(profile)).stdout)
    assert rows["CPU"] == "SM8550: 3× Cortex-A510 + 2× Cortex-A715 + 2× Cortex-A710 + 1× Cortex-X3"
    assert rows["logical CPUs"] == "8" and rows["CPU features"] == "asimd, asimdhp, asimddp, i8mm, bf16"
    assert rows["Android"] == "samsung SM-S911B (Android 14, SDK 34, ABI arm64-v8a)"


def test_an_unknown_device_is_named_with_the_known_ones(tmp_path):
    proc = _info(tmp_path, "no-such-phone")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown device 'no-such-phone'" in proc.stderr and "edgekd devices --example" in proc.stderr


def test_a_work_directory_made_in_python_is_never_an_option_to_the_devices_python(tmp_path, monkeypatch):
    """load_profile refuses a workdir starting with '-'; a DeviceProfile made in Python skips that check, so
    the path the runner is started from must not turn into an option of the device's Python (`-c…` ran code)."""
    from edgekd.devices.base import DeviceProfile, info_via_runner
    from edgekd.devices.local import LocalDevice

    monkeypatch.chdir(tmp_path)
    device = LocalDevice(DeviceProfile(name="py-made", kind="local", python=sys.executable, workdir="-Wignore"))
    assert device.workdir == "./-Wignore"
    assert info_via_runner(device)["system"]["machine"] == platform.machine()
    assert any((tmp_path / "-Wignore").glob("edgekd_runner-*.py"))
