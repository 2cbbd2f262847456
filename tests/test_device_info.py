"""`edgekd devices --info NAME`: a device described the way a bench finds it, through the real CLI: this host
(the runner's --info), and a phone without Python over the real adb client (its shell, getprop, dumpsys)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import yaml

from edgekd.bench.runner import parse_cpuinfo
from test_adb_device import WD, adb_server, phone  # noqa: F401  (fixtures)

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


def test_an_unknown_device_is_named_with_the_known_ones(tmp_path):
    proc = _info(tmp_path, "no-such-phone")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown device 'no-such-phone'" in proc.stderr and "edgekd devices --example" in proc.stderr
