"""The emulated ARM64 board end to end, for real: devices/arm64/setup.sh builds it (Debian arm64 userspace under
qemu-aarch64, the aarch64 wheels of numpy/onnxruntime/ai-edge-litert) and serves it over SSH on 127.0.0.1;
`edgekd bench --device arm64-emulated` (devices/arm64-emulated.yaml) benchmarks INT8 artifacts on it and
compares their outputs on ARM with this host's. Then each bad input gives one message and exit 2.

The first build downloads ~100 MB (about a minute here); later runs reuse it (setup.sh builds only what is
missing). Nothing is skipped: a machine without the tools fails with setup.sh's message (CI installs them).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgekd.bench.result import BenchResult
from edgekd.devices.emulated import Board, apt_mirror, read_settings
from edgekd.devices.loopback import answers_ssh, free_port
from edgekd.devices.profiles import load_profile, open_device
from edgekd.errors import EdgeKDError

REPO = Path(__file__).resolve().parents[1]
BOARD = REPO / "devices" / "arm64"
SETUP = BOARD / "setup.sh"
PROFILE = REPO / "devices" / "arm64-emulated.yaml"
EDGEKD = [sys.executable, "-m", "edgekd.cli"]
# Short timings: the emulator's latency means nothing anyway; the outputs (parity) are what is checked.
FAST = ["--rounds", "1", "--min-seconds", "0.05"]


def _setup(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable}, stdin=subprocess.DEVNULL)


def _edgekd(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEKD, *args], capture_output=True, text=True, cwd=cwd, timeout=900,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def board():
    """The board built (or reused) and served; its sshd is stopped afterwards unless it already ran."""
    port = load_profile(PROFILE).options["port"]
    was_served = answers_ssh(port)
    started = time.monotonic()
    proc = _setup()
    took = time.monotonic() - started
    if proc.returncode != 0:
        pytest.fail(f"devices/arm64/setup.sh failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    print(f"\nboard ready in {took:.0f} s:\n{proc.stdout}")
    yield proc
    if not was_served:
        _setup("--stop", timeout=60)


def _bench_json(results_dir: Path) -> dict[str, BenchResult]:
    return {r.artifact["name"]: r for r in map(BenchResult.load, sorted(results_dir.glob("bench-*.json")))}


# ---------------------------------------------------------------------- the board works
def test_a_second_setup_builds_nothing(board):
    state = Board(BOARD).ready_file.parent  # rootfs/.edgekd: one marker per build step, and the ready file
    markers = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in state.iterdir()}
    proc = _setup(timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "already built" in proc.stdout and "already runs" in proc.stdout
    assert "downloading" not in proc.stdout and "installing" not in proc.stdout
    # no step ran again (its marker would be rewritten) and the sshd the fixture left is the one still serving
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in state.iterdir()} == markers
    pids = re.findall(r"\(pid (\d+)", proc.stdout)
    assert len(pids) == 1 and pids == re.findall(r"\(pid (\d+)", board.stdout), (board.stdout, proc.stdout)


def test_info_reports_the_boards_own_architecture_and_emulation(board):
    device = open_device(str(PROFILE))
    try:
        info = device.info()
    finally:
        device.close()
    assert platform.machine() != "aarch64"  # this test is about running ARM code on another architecture
    assert info["arch"] == "aarch64" and info["system"]["machine"] == "aarch64"  # the board's Python, not uname
    assert info["emulated"] is True
    assert info["emulator"]["cpu"] == "cortex-a76" and info["emulator"]["version"]
    assert "emulated" in info["system"]["cpu_model"] and "asimddp" in info["system"]["cpu_features"]
    assert info["runtimes"]["onnxruntime"] and info["runtimes"]["ai_edge_litert"] and info["numpy"]
    # the same, as `edgekd devices --info` shows it
    proc = _edgekd("devices", "--info", "arm64-emulated")
    assert proc.returncode == 0, proc.stderr
    shown = " ".join(proc.stdout.split())
    assert "│ architecture │ aarch64 (emulated) │" in shown and f"│ CPU │ {info['system']['cpu_model']} │" in shown


def test_the_demo_artifacts_run_on_the_board_and_are_compared_with_this_host(board, tiny_run, tmp_path):
    """ONNX and TFLite, FP32 and INT8, through `edgekd bench` over SSH: aarch64, emulated, parity recorded."""
    names = ["student-onnx-fp32", "student-onnx-int8_static", "student-tflite-int8_static"]
    folders = [str(tiny_run.rundir.artifacts / n) for n in names]
    proc = _edgekd("bench", *folders, "--device", "arm64-emulated", *FAST, "--results-dir", str(tmp_path / "r"),
                   "--history", str(tmp_path / "h.sqlite"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "emulated devices: latency is not a board's latency" in proc.stdout
    assert "cross-architecture parity" in proc.stdout and f"aarch64 vs {platform.machine()}" in proc.stdout
    results = _bench_json(tmp_path / "r")
    assert sorted(results) == sorted(names)
    for name, r in results.items():
        assert r.emulated is True and r.device["emulated"] is True and r.device["arch"] == "aarch64", name
        assert r.device["emulator"]["cpu"] == "cortex-a76"
        assert r.device_accuracy and r.device_accuracy["samples"] > 100
        p = r.cross_arch_parity
        assert p["device_arch"] == "aarch64" and p["host_arch"] == platform.machine(), p
        assert p["samples"] == r.device_accuracy["samples"] and p["passed"] == (p["agreement"] >= 0.99), p
        assert p["device_runtime"] == p["host_runtime"]  # setup.sh gave the board the host's versions
    # FP32 differs only by float rounding; LiteRT INT8 computes the same integers on both architectures.
    for name, tolerance in (("student-onnx-fp32", 1e-4), ("student-tflite-int8_static", 1e-5)):
        p = results[name].cross_arch_parity
        assert p["agreement"] >= 0.99 and p["max_abs_error"] < tolerance, (name, p)
    # The exporter's ONNX INT8 (s8s8 QDQ, full-range weights) is measured, not judged here: on x86 without VNNI
    # onnxruntime's u8s8 kernels can saturate (then the table says DIFFERS); with VNNI or on ARM they are exact.
    onnx_int8 = results["student-onnx-int8_static"].cross_arch_parity
    assert ("DIFFERS" in proc.stdout) == (not onnx_int8["passed"])


def test_an_onnx_int8_model_exact_on_both_architectures_has_full_parity(board, tiny_run, tmp_path):
    """INT8 QDQ with 7-bit weights (reduce_range: no int16 saturation on x86 AVX2) computes the exact integer
    arithmetic on both sides, so the board and this host must give the same outputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    import edgekd
    from edgekd.bench.harness import BenchSettings

    data = tiny_run.rundir.root / "data"
    x = np.load(data / "test_x.npy").astype(np.float32)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([x[i:i + 32] for i in range(0, len(x), 32)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"x": batch}

    model = tmp_path / "student-int8-reduce-range.onnx"
    quantize_static(str(tiny_run.rundir.artifacts / "student-onnx-fp32" / "model.onnx"), str(model), Batches(),
                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    [result] = edgekd.bench([model], device=str(PROFILE), eval_data=(data / "test_x.npy", data / "test_y.npy"),
                            settings=BenchSettings(warmup_runs=5, min_runs=20, min_seconds=0.05, rounds=1))
    p = result.cross_arch_parity
    assert result.emulated and result.device["arch"] == "aarch64"
    assert p["agreement"] >= 0.99 and p["passed"] and p["max_abs_error"] < 1e-5, p


# ---------------------------------------------------------------------- bad input: one message, exit 2
def _fake_board(tmp_path: Path, *, rootfs: str, emulator: str | None = None) -> Path:
    """A board folder beside a copy of the profile: `rootfs` is 'missing', 'half' (a folder without the stamp)
    or 'real' (a link to the built one)."""
    folder = tmp_path / "devices" / "arm64"
    folder.mkdir(parents=True)
    shutil.copy(BOARD / "python", folder / "python")
    settings = (BOARD / "board.env").read_text()
    if emulator:
        settings = settings.replace("BOARD_EMULATOR=qemu-aarch64-static", f"BOARD_EMULATOR={emulator}")
    (folder / "board.env").write_text(settings)
    if rootfs == "half":
        (folder / "rootfs" / ".edgekd").mkdir(parents=True)
        (folder / "rootfs" / ".edgekd" / "downloaded").write_text("done\n")
    elif rootfs == "real":
        (folder / "rootfs").symlink_to(BOARD / "rootfs")
    profile = tmp_path / "devices" / "arm64-emulated.yaml"
    shutil.copy(PROFILE, profile)
    return profile


def _fails_clearly(proc: subprocess.CompletedProcess, *needles: str) -> None:
    out = " ".join((proc.stdout + proc.stderr).split())  # rich wraps long lines
    assert proc.returncode == 2, out
    assert "Traceback" not in out and "internal error" not in out, out
    for needle in needles:
        assert needle in out, (needle, out)


@pytest.mark.parametrize("state, needles", [
    ("missing", ["is not built", "make arm-board"]),
    ("half", ["is half-built", "make arm-board", "resumes"]),
])
def test_a_board_not_built_says_make_arm_board(tiny_run, tmp_path, state, needles):
    profile = _fake_board(tmp_path, rootfs=state)
    folder = str(tiny_run.rundir.artifacts / "student-onnx-int8_static")
    _fails_clearly(_edgekd("bench", folder, "--device", str(profile), *FAST, "--results-dir", str(tmp_path / "r")),
                   *needles)


def test_the_launcher_itself_refuses_a_board_not_built(tmp_path):
    profile = _fake_board(tmp_path, rootfs="half")
    proc = subprocess.run([str(profile.parent / "arm64" / "python"), "-c", "print(1)"], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 126 and "half-built" in proc.stderr and "make arm-board" in proc.stderr


def test_a_missing_emulator_names_the_package(board, tiny_run, tmp_path):
    profile = _fake_board(tmp_path, rootfs="real", emulator="qemu-aarch64-static-not-installed")
    folder = str(tiny_run.rundir.artifacts / "student-onnx-int8_static")
    _fails_clearly(_edgekd("bench", folder, "--device", str(profile), *FAST, "--results-dir", str(tmp_path / "r")),
                   "qemu-aarch64-static-not-installed", "is not installed", "apt-get install qemu-user-static")


def test_a_board_not_served_says_make_arm_board(board, tiny_run, tmp_path):
    profile = tmp_path / "board.yaml"
    raw = yaml.safe_load(PROFILE.read_text())
    raw.update(port=free_port(), board_dir=str(BOARD))  # nothing listens there
    profile.write_text(yaml.safe_dump(raw))
    folder = str(tiny_run.rundir.artifacts / "student-onnx-int8_static")
    _fails_clearly(_edgekd("bench", folder, "--device", str(profile), *FAST, "--results-dir", str(tmp_path / "r")),
                   "is not being served", "make arm-board")


def test_a_runtime_wheel_missing_on_the_board_gives_the_pip_line(board, tiny_run, tmp_path):
    """The board's Python without its site-packages (-S) but with numpy: onnxruntime is missing there."""
    site = next((BOARD / "rootfs" / "usr" / "local" / "lib").glob("python3.*/dist-packages"))
    only_numpy = tmp_path / "only-numpy"
    only_numpy.mkdir()
    for name in ("numpy", "numpy.libs"):
        (only_numpy / name).symlink_to(site / name)
    raw = yaml.safe_load(PROFILE.read_text())
    raw.update(board_dir=str(BOARD), identity_file=str(BOARD / "ssh" / "id_ed25519"),
               known_hosts=str(BOARD / "ssh" / "known_hosts"), workdir=str(tmp_path / "work"),
               python=["env", f"PYTHONPATH={only_numpy}", str(BOARD / "python"), "-S"])
    profile = tmp_path / "board.yaml"
    profile.write_text(yaml.safe_dump(raw))
    folder = str(tiny_run.rundir.artifacts / "student-onnx-int8_static")
    proc = _edgekd("bench", folder, "--device", str(profile), *FAST, "--results-dir", str(tmp_path / "r"))
    _fails_clearly(proc, "runtime 'onnxruntime' is not installed", "setup.sh --pip onnxruntime",
                   "pip install --only-binary=:all:", "--platform manylinux_2_17", "--target", str(site))


# ---------------------------------------------------------------------- the mirror comes from apt's sources
def _apt(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "apt"
    (root / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def _os_release(tmp_path: Path, distro: str = "debian", codename: str = "bookworm") -> Path:
    path = tmp_path / "os-release"
    path.write_text(f'ID={distro}\nVERSION_CODENAME={codename}\n')
    return path


def test_the_mirror_is_read_from_deb822_sources(tmp_path):
    root = _apt(tmp_path, {
        "sources.list.d/debian.sources": (
            "Types: deb\n# a comment\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
            "Components: main\n\nTypes: deb-src deb\nURIs: https://mirror.example/debian/\n"
            "Suites: bookworm bookworm-updates\nComponents: main\n"),
        "sources.list.d/other.sources.disabled-by-me": "Types: deb\nURIs: http://wrong\nSuites: bookworm\n",
        "sources.list.d/off.sources": "Enabled: no\nTypes: deb\nURIs: http://off\nSuites: bookworm\n",
    })
    assert apt_mirror(root, _os_release(tmp_path)) == "https://mirror.example/debian"


def test_the_mirror_is_read_from_one_line_sources(tmp_path):
    root = _apt(tmp_path, {"sources.list": (
        "# deb http://commented bookworm main\ndeb-src http://src bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://ftp.example/debian bookworm main contrib\n")})
    assert apt_mirror(root, _os_release(tmp_path)) == "http://ftp.example/debian"


@pytest.mark.parametrize("distro, files, message", [
    ("ubuntu", {}, "not Debian"),
    ("debian", {"sources.list": "deb http://ftp.example/debian trixie main\n"}, "no Debian mirror for 'bookworm'"),
])
def test_no_usable_mirror_says_set_mirror(tmp_path, distro, files, message):
    with pytest.raises(EdgeKDError) as err:
        apt_mirror(_apt(tmp_path, files), _os_release(tmp_path, distro))
    assert message in err.value.what and "MIRROR" in err.value.fix


def test_the_checked_in_settings_are_read_like_bash_reads_them():
    settings = read_settings(BOARD / "board.env")
    bash = subprocess.run(["bash", "-c", 'source "$1"; printf "%s\\n" "$BOARD_PACKAGES" "$BOARD_READY" "$BOARD_CPU"',
                           "bash", str(BOARD / "board.env")], capture_output=True, text=True, check=True)
    assert bash.stdout.splitlines() == [settings["BOARD_PACKAGES"], settings["BOARD_READY"], settings["BOARD_CPU"]]
    assert Board(BOARD).ready_file == BOARD / "rootfs" / settings["BOARD_READY"]
    assert settings and all(isinstance(value, str) for value in settings.values())  # plain strings


def test_the_report_marks_emulated_latency_and_states_parity():
    from edgekd.bench.report import findings

    parity = {"host_arch": "x86_64", "device_arch": "aarch64", "device_runtime": "onnxruntime 1.32.0",
              "host_runtime": "onnxruntime 1.32.0", "samples": 270, "agreement": 0.974, "max_abs_error": 0.34,
              "mean_abs_error": 0.1, "passed": False}
    rows = [{"name": "student-onnx-int8_static", "role": "student", "format": "onnx", "precision": "int8_static",
             "device": "arm64-emulated", "emulated": True, "cross_arch_parity": parity, "ops": 0, "layout_ops": 0}]
    text = " ".join(findings({"rows": rows}))
    assert "Emulated device (arm64-emulated)" in text and "not a board's" in text
    assert "student-onnx-int8_static on aarch64 DIFFERS FROM this x86_64 host" in text and "97.40%" in text
