"""`edgekd bench` through real devices: a loopback sshd (OpenSSH client) — full benchmark, a device that
goes away midway (results kept, --resume measures only what is missing), and bad profiles."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

import edgekd
from edgekd.bench import history
from edgekd.bench.harness import BenchSettings
from edgekd.devices.base import DeviceUnreachable, RuntimeMissing
from edgekd.devices.loopback import alive
from edgekd.errors import EdgeKDError
from edgekd.export.onnx import write_identity_model
from conftest import NoteKeeper, StepReporter, ctrl_c, hold_device_lock, skip_or_fail_on_ci, waiting_on
from sshd import LoopbackSSHD
from test_native import fake_binary, tflite_model  # noqa: F401  (fixtures: the benchmark_model stand-in, an MLP)

FAST = BenchSettings(warmup_runs=5, min_runs=30, min_seconds=0.02, rounds=2)


def _profile(server: LoopbackSSHD, folder: Path, python: str | list[str] = sys.executable) -> Path:
    path = folder / "board.yaml"
    path.write_text(yaml.safe_dump({"name": "board", "kind": "ssh", "python": python,
                                    "workdir": str(folder / "remote"), **server.profile_options()}))
    return path


def _models(folder: Path) -> list[Path]:
    return [write_identity_model(folder / f"m{i}.onnx", (8 * (i + 1),), 18) for i in range(2)]


def test_a_full_benchmark_over_ssh(tmp_path):
    with LoopbackSSHD(tmp_path / "sshd") as server:
        results = edgekd.bench(_models(tmp_path), device=str(_profile(server, tmp_path)), settings=FAST,
                               results_dir=tmp_path / "results", history=tmp_path / "h.sqlite")
    assert [r.device["name"] for r in results] == ["board", "board"] and all(r.complete for r in results)
    assert all(r.latency_us["n"] >= 30 and len(r.round_p50_us) == 2 for r in results)
    assert results[0].device["info"]["system"]["machine"]
    # the runners on the board held the device lock: this test session's (tests/sshd.py), not the machine's
    assert {(lock["state"], lock["path"]) for r in results for lock in r.device_lock} == {
        ("held", os.environ["EDGEKD_DEVICE_LOCK"])}
    assert sorted(p.name for p in (tmp_path / "results").glob("*.json")) == ["bench-m0@board.json", "bench-m1@board.json"]


def test_clean_over_ssh_removes_what_a_bench_left_on_the_board(tmp_path):
    from edgekd.bench.clean import clean

    one_round = BenchSettings(warmup_runs=2, min_runs=5, min_seconds=0.01, rounds=1)
    remote = tmp_path / "remote"
    with LoopbackSSHD(tmp_path / "sshd") as server:
        profile = _profile(server, tmp_path)
        edgekd.bench(_models(tmp_path)[:1], device=str(profile), settings=one_round)
        left = [p for p in remote.rglob("*") if p.is_file()]
        assert len(left) >= 4  # the runner, the model, its input, its spec
        (remote / "notes.txt").write_text("mine")
        cleaned = clean(str(profile))
    assert cleaned.files == len(left) and cleaned.kib > 0 and not cleaned.unsized and not cleaned.failed
    assert [p.name for p in remote.rglob("*")] == ["notes.txt"]  # the emptied subfolders too


def test_clean_over_ssh_stops_while_a_runner_measures_on_the_board(tmp_path):
    """A bench from another laptop holds only the board's lock (its runner's); the clean sees it there."""
    from edgekd.bench.clean import clean
    from edgekd.devices.base import DeviceError

    remote = tmp_path / "remote"
    with LoopbackSSHD(tmp_path / "sshd") as server:
        profile = _profile(server, tmp_path)
        edgekd.bench(_models(tmp_path)[:1], device=str(profile), settings=replace(FAST, rounds=1))
        left = sorted(p for p in remote.rglob("*") if p.is_file())
        fd = hold_device_lock(Path(os.environ["EDGEKD_DEVICE_LOCK"]))  # the board's lock (tests/sshd.py passes it)
        try:
            with pytest.raises(DeviceError, match="is measuring for another bench"):
                clean(str(profile))
        finally:
            os.close(fd)
        assert sorted(p for p in remote.rglob("*") if p.is_file()) == left
        assert clean(str(profile)).files == len(left)


def test_a_board_whose_workdir_is_the_root_is_refused_before_any_copy(tmp_path):
    # `workdir: /` passed (the owner check skipped "/"): `devices --info` left its runner in the board's /, and
    # `edgekd devices --clean` would not clean there. The loopback board is this machine: its / is ours.
    from edgekd.devices.base import runner_name

    left = Path("/") / runner_name()
    assert not left.exists()
    try:
        with LoopbackSSHD(tmp_path / "sshd") as server:
            profile = _profile(server, tmp_path)
            profile.write_text(yaml.safe_dump({**yaml.safe_load(profile.read_text()), "workdir": "/"}))
            proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "devices", "--info", str(profile)],
                                  capture_output=True, text=True, timeout=120)
    finally:
        runner_left = left.exists()
        left.unlink(missing_ok=True)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "will not use the work directory '/' of device 'board'" in err, proc.stderr
    assert "Traceback" not in proc.stderr and "fix: point `workdir:`" in err and not runner_left


def test_a_device_lost_midway_keeps_what_was_measured_and_resume_measures_the_rest(tmp_path):
    from edgekd.bench.result import BenchResult

    models = _models(tmp_path)
    one_round = BenchSettings(warmup_runs=5, min_runs=30, min_seconds=0.02, rounds=1)
    with LoopbackSSHD(tmp_path / "sshd") as server:  # stopped on the way out, whichever assertion fails
        profile = _profile(server, tmp_path)
        with pytest.raises(DeviceUnreachable) as err:
            edgekd.bench(models, device=str(profile), settings=one_round, results_dir=tmp_path / "results",
                         reporter=StepReporter(server.stop), history=tmp_path / "h.sqlite")
        assert "--resume" in err.value.fix and "kept" in err.value.fix
        # the finished result reaches the history now: --resume records only what it measures itself
        began = history.sessions(tmp_path / "h.sqlite")
        assert [s["results"] for s in began] == [1]
        first = BenchResult.load(tmp_path / "results" / "bench-m0@board.json")
        assert first.complete and not (tmp_path / "results" / "bench-m1@board.json").exists()
        server.start()  # the board is back (new port: rewrite the profile)
        profile = _profile(server, tmp_path)
        resumed = edgekd.bench(models, device=str(profile), settings=one_round, results_dir=tmp_path / "results",
                               resume=True, history=tmp_path / "h.sqlite")
        # each once, and in the session the bench began: one bench, one session
        assert [(s["session"], s["results"]) for s in history.sessions(tmp_path / "h.sqlite")] == \
            [(began[0]["session"], 2)]
    assert resumed[0].created_at == first.created_at  # reused, not measured again
    assert resumed[1].complete and resumed[1].latency_us["n"] >= 30


def test_resume_with_every_result_kept_needs_no_device(tmp_path):
    """A bench whose results were all complete still read the board's temperature once per round: with the
    board off, --resume said it kept every result and then failed with "cannot reach board"."""
    models = _models(tmp_path)
    one_round = BenchSettings(warmup_runs=5, min_runs=30, min_seconds=0.02, rounds=2)
    with LoopbackSSHD(tmp_path / "sshd") as server:
        profile = _profile(server, tmp_path)
        measured = edgekd.bench(models, device=str(profile), settings=one_round, results_dir=tmp_path / "results")
        server.stop()
        kept = edgekd.bench(models, device=str(profile), settings=one_round, results_dir=tmp_path / "results",
                            resume=True)
    assert [r.created_at for r in kept] == [r.created_at for r in measured]


def test_a_run_whose_device_is_lost_midway_is_told_to_run_the_recipe_again_not_to_resume(tmp_path):
    """`edgekd run` has no --resume: its bench stage passes its own next step (stages.RUN_BENCH_AGAIN)."""
    from edgekd.stages import RUN_BENCH_AGAIN

    one_round = BenchSettings(warmup_runs=5, min_runs=30, min_seconds=0.02, rounds=1)
    with LoopbackSSHD(tmp_path / "sshd") as server:
        with pytest.raises(DeviceUnreachable) as err:
            edgekd.bench(_models(tmp_path), device=str(_profile(server, tmp_path)), settings=one_round,
                         results_dir=tmp_path / "results", reporter=StepReporter(server.stop),
                         rerun_hint=RUN_BENCH_AGAIN)
    assert err.value.fix.endswith(RUN_BENCH_AGAIN) and "--resume" not in err.value.fix
    assert "kept" in err.value.fix


def test_a_board_without_that_python_is_told_to_install_or_set_it(tmp_path):
    with LoopbackSSHD(tmp_path / "sshd") as server:
        profile = _profile(server, tmp_path, python="/nonexistent/python3")
        with pytest.raises(RuntimeMissing) as err:  # was "the runner crashed … run the runner by hand"
            edgekd.bench(_models(tmp_path)[:1], device=str(profile), settings=FAST)
    assert "/nonexistent/python3" in err.value.what and "No such file" in err.value.why
    assert "`python:`" in err.value.fix


@pytest.mark.parametrize("device", ["host", "board"])
def test_a_runner_killed_by_a_signal_says_which(tmp_path, device):
    # ssh reports a remote process killed by a signal as its own exit 255 ("why: exit code 255"): the remote
    # shell now waits for the runner, so the status is the shell's 128+N; the host's subprocess says -N.
    from edgekd.errors import BenchError

    segfaults = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    with LoopbackSSHD(tmp_path / "sshd") as server:
        profile = _profile(server, tmp_path, python=segfaults)
        if device == "host":
            raw = yaml.safe_load(profile.read_text())
            profile.write_text(yaml.safe_dump({"name": "here", "kind": "local", "python": segfaults,
                                               "workdir": raw["workdir"]}))
        with pytest.raises(BenchError, match="the runner crashed") as err:
            edgekd.bench(_models(tmp_path)[:1], device=str(profile), settings=FAST)
    assert err.value.why.startswith("killed by SIGSEGV: the runtime crashed"), err.value.why


def test_a_hung_runner_is_stopped_on_the_board_and_said_so(tmp_path, monkeypatch):
    from edgekd.bench import harness
    from edgekd.errors import BenchError

    monkeypatch.setattr(harness, "RUNNER_GRACE_S", 5.0)  # instead of minutes: the runner never answers anyway
    monkeypatch.setenv(harness.DEVICE_WAIT_ENV, "0")  # nor waits for the device's lock
    started = tmp_path / "pid"
    hangs = ["sh", "-c", 'echo $$ > "$0"; exec sleep 600', str(started)]  # a "Python" that never returns
    with LoopbackSSHD(tmp_path / "sshd") as server:
        profile = _profile(server, tmp_path, python=hangs)
        with pytest.raises(BenchError, match="the runner did not finish within") as err:
            edgekd.bench(_models(tmp_path)[:1], device=str(profile), settings=replace(FAST, rounds=1, max_seconds=0.1))
        pid = int(started.read_text())
        assert f"pid {pid} killed" in err.value.why
        deadline = time.monotonic() + 30
        while alive(pid):  # SIGKILL was sent; the board reaps it
            assert time.monotonic() < deadline, f"the hung runner (pid {pid}) still runs on the board"
            time.sleep(0.02)
    assert "by hand" in err.value.fix and "edgekd_runner-" in err.value.fix


def test_a_board_too_full_for_the_predictions_says_so_and_keeps_what_it_had(tmp_path):
    import numpy as np

    from edgekd.errors import BenchError

    small = tmp_path / "small fs"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        skip_or_fail_on_ci(f"cannot mount a small tmpfs here (needs root/CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    x, y = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x, np.random.default_rng(0).random((4000, 8)).astype(np.float32))  # 128 kB of predictions
    np.save(y, np.zeros(4000, dtype=np.int64))
    model = _models(tmp_path)[:1]
    try:
        with LoopbackSSHD(tmp_path / "sshd") as server:
            profile = _profile(server, tmp_path)
            raw = yaml.safe_load(profile.read_text())
            profile.write_text(yaml.safe_dump({**raw, "workdir": str(small / "work")}))
            edgekd.bench(model, device=str(profile), settings=FAST, eval_data=(x, y))  # everything is on the board
            free = os.statvfs(small)
            (small / "filler").write_bytes(bytes(free.f_bavail * free.f_frsize - 4096))  # then the board fills up
            with pytest.raises(BenchError, match="cannot write the predictions") as err:
                edgekd.bench(model, device=str(profile), settings=FAST, eval_data=(x, y))
        assert "Traceback" not in err.value.why and "MB free there" in err.value.why
        assert "free space on the device" in err.value.fix and "`workdir:`" in err.value.fix
        assert not [p for p in (small / "work" / "outputs").iterdir() if p.name.startswith(".tmp")]
    finally:
        subprocess.run(["umount", str(small)], check=False)


_KILLED_BENCH = """
import os, signal, sys
import edgekd
from edgekd.bench.harness import BenchSettings

class KillItself:
    def task(self, description, total):
        class Task:
            def advance(self, steps=1, **fields):
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind runs
            def close(self):
                pass
        return Task()
    def note(self, message):
        pass

edgekd.bench([sys.argv[1]], device="host", reporter=KillItself(),
             settings=BenchSettings(warmup_runs=1, min_runs=3, min_seconds=0.01, rounds=1))
"""


def test_a_bench_killed_with_sigkill_leaves_its_temp_folder_only_until_the_next_bench(tmp_path, monkeypatch):
    """It left an edgekd-bench-XXXX folder in the temp area for good: one per killed bench."""
    import tempfile

    model = _models(tmp_path)[0]
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", _KILLED_BENCH, str(model)], env=env, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    left = [p for p in temp.rglob("*") if p.is_dir() and "bench" in p.name]
    assert left, "the killed bench made no temp folder here"
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # this process's temp area: the same one
    edgekd.bench([model], device="host", settings=FAST)
    assert [p for p in temp.rglob("*") if p.is_dir() and "bench" in p.name and p.parent == temp] == \
        [temp / f"edgekd-bench@{os.getuid()}"]
    assert list((temp / f"edgekd-bench@{os.getuid()}").iterdir()) == []


def test_ctrl_c_midway_keeps_what_was_measured(tmp_path):
    one_round = BenchSettings(warmup_runs=5, min_runs=30, min_seconds=0.02, rounds=1)
    with pytest.raises(KeyboardInterrupt) as err:
        edgekd.bench(_models(tmp_path), settings=one_round, results_dir=tmp_path / "results",
                     reporter=StepReporter(ctrl_c))
    from edgekd.bench.result import BenchResult

    assert BenchResult.load(tmp_path / "results" / "bench-m0.json").complete  # was lost with the rest
    assert not (tmp_path / "results" / "bench-m1.json").exists()
    assert "the 1 result(s) measured in full so far are kept" in err.value.kept and "more" not in err.value.kept


def test_ctrl_c_midway_says_which_results_resume_will_measure_again(tmp_path):
    """After round 1 of 2 of the first artifact, "the 1 result(s) measured so far are kept": --resume measured
    it again, since a result with rounds missing is not reused."""
    two_rounds = BenchSettings(warmup_runs=5, min_runs=30, min_seconds=0.02, rounds=2)
    with pytest.raises(KeyboardInterrupt) as err:
        edgekd.bench(_models(tmp_path), settings=two_rounds, results_dir=tmp_path / "results",
                     reporter=StepReporter(ctrl_c))
    assert err.value.kept == (f"nothing was measured in full: 1 result(s) with fewer than 2 rounds, saved in "
                              f"{tmp_path / 'results'} to look at, will be measured again")


def test_ctrl_c_on_the_command_line_says_where_the_results_are_and_to_resume(tmp_path):
    from sshd import descendants

    models = [str(m) for m in _models(tmp_path)]
    cli = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "bench", *models, "--rounds", "1", "--min-seconds",
                            "5", "--results-dir", str(tmp_path / "results"), "--history", str(tmp_path / "h.sqlite")],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()

    def second_runner_started() -> bool:  # then the first artifact is measured
        seen.update(pid for pid in descendants(cli.pid) if b"edgekd_runner" in _cmdline(pid))
        return len(seen) >= 2

    stderr = _ctrl_c_once(cli, second_runner_started, "the second runner never started")
    assert "interrupted: the 1 result(s) measured in full so far are kept in" in " ".join(stderr.split())
    assert "rerun with --resume" in " ".join(stderr.split()) and "Traceback" not in stderr
    assert sorted(p.name for p in (tmp_path / "results").glob("bench-*.json")) == ["bench-m0.json"]
    assert (tmp_path / "results" / ".edgekd-bench-session@host.json").is_file()  # for --resume to add to


def _ctrl_c_once(cli: subprocess.Popen, ready, never: str) -> str:
    """Send the bench command `cli` a Ctrl-C as soon as `ready()` holds (polled), and return its stderr once it
    has exited with 130."""
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert time.monotonic() < deadline and cli.poll() is None, never
            time.sleep(0.05)
        cli.send_signal(signal.SIGINT)
        _, stderr = cli.communicate(timeout=60)
    finally:
        cli.kill()
    assert cli.returncode == 130, stderr
    return stderr


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("content, message", [
    ("kind: [unclosed", "cannot read device profile"),
    ("kind: telnet\n", "`kind:` must be one of local, ssh, adb"),
])
def test_unreadable_profiles_are_clear_errors(tmp_path, content, message):
    (tmp_path / "bad.yaml").write_text(content)
    write_identity_model(tmp_path / "m.onnx", (8,), 18)
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "bench", "m.onnx", "--device", "bad.yaml"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_unknown_device_lists_the_profiles_found(tmp_path):
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "pi.yaml").write_text("kind: ssh\nhost: 127.0.0.1\n")
    write_identity_model(tmp_path / "m.onnx", (8,), 18)
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "bench", "m.onnx", "--device", "jetson"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown device 'jetson'" in proc.stderr and "host, pi" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "bench", "m.onnx", "--device", "pii"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown device 'pii' (did you mean 'pi'?)" in proc.stderr


def test_the_device_list_names_what_is_wrong_in_a_profile(tmp_path):
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "pi.yaml").write_text("kind: ssh\nhost: 127.0.0.1\nthreds: 4\n")
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "devices"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and "unknown field `threds:`" in proc.stdout and "`threads:`" in proc.stdout, proc.stdout


def test_an_artifact_is_named_by_its_folder_its_record_or_its_model_file(tmp_path):
    """`edgekd bench --help` offers artifact.json files too: the record names the same artifact as its folder."""
    from edgekd.bench.harness import resolve_artifact

    folder = tmp_path / "m-onnx-fp32"
    folder.mkdir()
    record = resolve_artifact(write_identity_model(folder / "model.onnx", (8,), 18))
    record.name, record.directory = folder.name, folder
    record.save()
    for given in (folder, folder / "artifact.json", folder / "model.onnx"):
        assert resolve_artifact(given).name == "m-onnx-fp32", given


def test_the_device_base_error_is_a_user_error():
    assert issubclass(DeviceUnreachable, EdgeKDError) and DeviceUnreachable.exit_code == 2


def test_cpu_pinning_is_applied_and_checked(tmp_path):
    import os

    cpu = sorted(os.sched_getaffinity(0))[0]
    profile = tmp_path / "pinned.yaml"
    profile.write_text(yaml.safe_dump({"name": "pinned", "kind": "local", "cpus": [cpu],
                                       "workdir": str(tmp_path / "work")}))
    (result,) = edgekd.bench(_models(tmp_path)[:1], device=str(profile), settings=FAST)
    assert result.device["affinity"] == [cpu] and result.device["pinning_applied"] is True


@pytest.mark.parametrize("beyond", [[0, 1], [1, 2]], ids=["some-missing", "all-missing"])
def test_cpus_the_board_does_not_have_are_refused_naming_its_cpus(tmp_path, beyond):
    # `cpus: [0, 5]` on a 2-CPU board benched on CPU 0 alone, exit 0 ("pinning_applied": false only in the JSON);
    # `cpus: [5, 6]` was "the runner crashed … taskset: failed to set pid's affinity: Invalid argument".
    from edgekd.devices.base import DeviceError

    have = sorted(os.sched_getaffinity(0))  # the loopback board is this machine
    cpus = [have[0] if b == 0 else have[-1] + b for b in beyond]
    with LoopbackSSHD(tmp_path / "sshd") as server:
        profile = _profile(server, tmp_path)
        profile.write_text(yaml.safe_dump({**yaml.safe_load(profile.read_text()), "cpus": cpus}))
        with pytest.raises(DeviceError) as err:
            edgekd.bench(_models(tmp_path)[:1], device=str(profile), settings=FAST)
    missing = [c for c in cpus if c not in have]
    listed = ", ".join(map(str, have))
    assert err.value.what.startswith(f"`cpus: {cpus}` in the profile of device 'board' names CPU")
    assert f"{', '.join(map(str, missing))}, which it does not have (its CPUs: {listed})" in err.value.what
    assert err.value.fix == f"set `cpus:` in the device profile to CPUs among {listed}, or remove it"
    assert not (tmp_path / "remote" / "artifacts").exists()  # refused before anything was copied
    if beyond == [0, 1]:  # `edgekd devices --info` says it too (it described the board as if pinned)
        from test_cli_errors import assert_user_error, run_cli

        with LoopbackSSHD(tmp_path / "sshd2") as server:
            profile = _profile(server, tmp_path)
            profile.write_text(yaml.safe_dump({**yaml.safe_load(profile.read_text()), "cpus": cpus}))
            said = assert_user_error(run_cli(tmp_path, "devices", "--info", str(profile)))
        assert f"which it does not have (its CPUs: {listed})" in said, said


def test_several_devices_in_one_call(tmp_path):
    from edgekd.bench.harness import bench_devices

    models = _models(tmp_path)[:1]
    with LoopbackSSHD(tmp_path / "sshd") as server:
        results = bench_devices(models, ["host", str(_profile(server, tmp_path))], settings=FAST,
                                results_dir=tmp_path / "results")
    assert sorted(r.device["name"] for r in results) == ["board", "host"]
    assert sorted(p.name for p in (tmp_path / "results").glob("*.json")) == ["bench-m0.json", "bench-m0@board.json"]
    with pytest.raises(EdgeKDError, match="named twice"):
        bench_devices(models, ["host", "host"], settings=FAST)


def test_one_device_failing_says_what_became_of_the_others(tmp_path):
    from edgekd.bench.harness import bench_devices

    models = _models(tmp_path)[:1]
    broken = tmp_path / "broken.yaml"  # a board whose Python is not there
    broken.write_text(yaml.safe_dump({"name": "broken", "kind": "local", "python": str(tmp_path / "no-python"),
                                      "workdir": str(tmp_path / "work")}))
    with LoopbackSSHD(tmp_path / "sshd") as server:
        lost = _profile(server, tmp_path)
    # the board's sshd is gone: two devices fail, one finishes
    with pytest.raises(EdgeKDError) as err:
        bench_devices(models, [str(broken), "host", str(lost)], settings=FAST, results_dir=tmp_path / "results")
    assert "broken" in err.value.what
    assert f"also failed: {lost}: cannot reach board" in err.value.fix
    assert f"the results on host are complete and saved in {tmp_path / 'results'}" in err.value.fix
    assert (tmp_path / "results" / "bench-m0.json").is_file()


def test_check_threads_times_one_and_n_threads(tmp_path):
    from edgekd.bench.harness import check_threads

    check = check_threads(_models(tmp_path)[0], "host", 2, FAST)
    assert check["threads"] == [1, 2] and all(p > 0 for p in check["p50_us"])
    assert check["speedup_ci95"][0] <= check["speedup"] <= check["speedup_ci95"][1]
    # the p50s printed beside the speed-up divide to it (they were the medians of the pairs: on a noisy machine
    # "1 thread 4.58 µs, 2 threads 4.68 µs (1.25×)")
    assert check["p50_us"][0] / check["p50_us"][1] == pytest.approx(check["speedup"], rel=1e-9)
    low, high = check["speedup_ci95"]
    assert check["took_effect"] is (low > 1.0 or high < 1.0)  # the p50s differ beyond the noise: 1 is outside


_LOCAL_BENCH = """\
import json, sys
from pathlib import Path
import numpy as np
from edgekd.bench.harness import _Session
from edgekd.devices.base import DeviceProfile
from edgekd.devices.local import LocalDevice
from edgekd.export.onnx import write_identity_model

tmp = Path(sys.argv[1])
device = LocalDevice(DeviceProfile(name="host", kind="local", python=sys.executable, workdir=str(tmp / "work")))
session = _Session(device, tmp)
np.save(tmp / "x.npy", np.zeros((1, 8), np.float32))
model = write_identity_model(tmp / "identity.onnx", (8,), 18)
# It would run for 10 minutes: its warmup alone lasts max_seconds.
spec = {"artifact": session.relative(session.push(model, "identity.onnx")), "runtime": "onnxruntime",
        "inputs": {"x": session.relative(session.push(tmp / "x.npy", "x.npy"))}, "warmup_runs": 10**9,
        "warmup_min_seconds": 600.0, "min_runs": 1, "max_runs": 1, "min_seconds": 0.0, "max_seconds": 600.0}
session.run_spec(spec, "endless", 900)
"""


def test_a_local_runner_ends_when_edgekd_is_killed(tmp_path):
    # edgekd killed outright (SIGKILL, an OOM kill) cannot stop its runner: it ran on for its whole time limit,
    # under the next benchmark. Tethered, it sees its stdin pipe from edgekd close, and ends.
    host = subprocess.Popen([sys.executable, "-c", _LOCAL_BENCH, str(tmp_path)], stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    work = str(tmp_path / "work")

    def runner() -> int | None:
        assert host.poll() is None, host.stderr.read()
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            try:
                argv = _cmdline(pid).split(b"\0")
                script = argv[1].decode() if len(argv) > 2 else ""
                if (script.startswith(work) and "edgekd_runner" in script and script.endswith(".py")
                        and "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()):
                    return pid
            except (OSError, ValueError):
                continue
        return None

    pid = None
    try:
        deadline = time.monotonic() + 120  # bounded, so that a runner that never starts fails the test
        while (pid := runner()) is None:
            assert time.monotonic() < deadline, "the runner never started"
            time.sleep(0.05)
        host.kill()
        host.wait()
        deadline = time.monotonic() + 30
        while alive(pid):
            assert time.monotonic() < deadline, "the runner still runs after edgekd was killed"
            time.sleep(0.05)
    finally:
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)
        host.kill()
        host.wait()


def test_two_edgekd_versions_sharing_a_work_directory_keep_their_own_runners(tmp_path, monkeypatch):
    """The runner was pushed as WORKDIR/edgekd_runner.py whatever its content: a second edgekd (another
    environment, CI beside a user) on the same device overwrote it between the first one's push and run, and
    the first then ran a runner that did not know its arguments ('bad arguments: --tether ...'). It is named
    after its content now, as artifacts, inputs and specs are."""
    from edgekd.bench import harness
    from edgekd.devices import base
    from edgekd.devices.local import LocalDevice
    from edgekd.devices.profiles import DeviceProfile

    device = LocalDevice(DeviceProfile(name="board", kind="local", python=sys.executable,
                                       workdir=str(tmp_path / "work")))
    older = tmp_path / "older_runner.py"
    older.write_text(base.RUNNER_SOURCE.read_text() + "\n# an older edgekd's runner\n")
    with monkeypatch.context() as m:
        m.setattr(base, "RUNNER_SOURCE", older)
        m.setattr(harness, "RUNNER_SOURCE", older)
        older_remote = harness._Session(device, tmp_path).runner
    newer_remote = harness._Session(device, tmp_path).runner
    assert older_remote != newer_remote
    assert Path(older_remote).read_text() == older.read_text()  # still the older one's, for its run
    assert Path(newer_remote).read_bytes() == base.RUNNER_SOURCE.read_bytes()


# ------------------------------------------------------------------ the device's own bench lock (runner.DeviceLock)


def test_edgekd_bench_on_a_device_another_bench_holds_exits_2_saying_who(tmp_path):
    lock = tmp_path / "device.lock"
    model = write_identity_model(tmp_path / "m.onnx", (8,), 18)
    env = {**os.environ, "EDGEKD_DEVICE_LOCK": str(lock), "EDGEKD_DEVICE_WAIT": "0.2", "COLUMNS": "400"}
    fd = hold_device_lock(lock)
    try:
        proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "bench", str(model), "--min-seconds", "0",
                               "--rounds", "1", "--results-dir", str(tmp_path / "results")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
    finally:
        os.close(fd)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    message = " ".join(proc.stderr.split())
    assert (f"device 'host' is busy with another bench (pid {os.getpid()}, user alice, from 192.0.2.7)"
            in message), message
    assert "each other's load" in message and "EDGEKD_DEVICE_WAIT" in message


def test_a_runner_on_a_board_over_ssh_holds_the_device_lock(tmp_path, monkeypatch):
    """Two laptops benching one board meet only there: the runner on the board takes the board's lock."""
    import json

    from edgekd.errors import BenchError

    lock = tmp_path / "board.lock"  # the board's lock file (not the machine's /tmp one: other tests use it)
    model = _models(tmp_path)[:1]
    one_round = replace(FAST, rounds=1)
    with LoopbackSSHD(tmp_path / "sshd") as server:
        profile = _profile(server, tmp_path, python=["env", f"EDGEKD_DEVICE_LOCK={lock}", sys.executable])
        fd = hold_device_lock(lock)
        try:
            monkeypatch.setenv("EDGEKD_DEVICE_WAIT", "0")
            with pytest.raises(BenchError, match="device 'board' is busy with another bench") as err:
                edgekd.bench(model, device=str(profile), settings=one_round)
            assert f"pid {os.getpid()}" in err.value.what
        finally:
            os.close(fd)
        monkeypatch.delenv("EDGEKD_DEVICE_WAIT")
        result = edgekd.bench(model, device=str(profile), settings=one_round)[0]
    assert [r["state"] for r in result.device_lock] == ["held"] and result.device_lock[0]["path"] == str(lock)
    holder = json.loads(lock.read_text())  # written by the runner on the board once it had the lock
    assert holder["pid"] != os.getpid() and holder["from"] == "127.0.0.1"  # the host machine that started it


def test_a_native_tool_on_a_board_over_ssh_takes_the_device_lock(tmp_path, fake_binary, tflite_model,  # noqa: F811
                                                                     monkeypatch):
    """A board without Python benches through its native tool: it takes the runner's lock on the board too, so it
    waits for (and then fails on) another bench's runner there, and a bench from elsewhere sees it."""
    import json

    from edgekd.errors import BenchError

    lock = tmp_path / "board.lock"  # the board's lock file (not this session's: other tests hold that one)
    monkeypatch.setenv("EDGEKD_DEVICE_LOCK", str(lock))  # what tests/sshd.py gives the board's shell
    one_round = replace(FAST, rounds=1)
    with LoopbackSSHD(tmp_path / "sshd") as server:
        profile = _profile(server, tmp_path, python=None)
        profile.write_text(yaml.safe_dump({**yaml.safe_load(profile.read_text()),
                                           "native": {"tflite": str(fake_binary)}}))
        fd = hold_device_lock(lock)
        try:
            monkeypatch.setenv("EDGEKD_DEVICE_WAIT", "0.2")
            with pytest.raises(BenchError, match="device 'board' is busy with another bench") as err:
                edgekd.bench([tflite_model], device=str(profile), settings=one_round)
            assert f"pid {os.getpid()}, user alice, from 192.0.2.7" in err.value.what
        finally:
            os.close(fd)
        monkeypatch.delenv("EDGEKD_DEVICE_WAIT")
        (result,) = edgekd.bench([tflite_model], device=str(profile), settings=one_round)
    assert result.harness == "native"
    assert result.device_lock == [{"path": str(lock), "state": "held", "waited_s": 0.0, "waited_for": None}]
    holder = json.loads(lock.read_text())  # written by the board's shell once it had the lock
    assert holder["pid"] != os.getpid() and holder["from"] == "127.0.0.1"  # the host machine that started it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/locks")
def test_a_bench_that_had_to_wait_for_the_device_says_so_and_its_result_records_it(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    lock = tmp_path / "device.lock"
    monkeypatch.setenv("EDGEKD_DEVICE_LOCK", str(lock))
    model = write_identity_model(tmp_path / "m.onnx", (8,), 18)
    reporter = NoteKeeper()
    fd = hold_device_lock(lock)
    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(edgekd.bench, [model], "host", settings=replace(FAST, rounds=1), reporter=reporter)
            deadline = time.monotonic() + 120
            while not waiting_on(lock):  # the runner waits for the device: now the other bench ends
                assert not running.done(), running.exception()
                assert time.monotonic() < deadline, "the runner never waited for the device's lock"
                time.sleep(0.05)
            os.close(fd)
            fd = None
            result = running.result(timeout=120)[0]
    finally:
        if fd is not None:
            os.close(fd)
    [record] = result.device_lock
    assert record["state"] == "held" and record["waited_s"] > 0
    assert record["waited_for"] == f"pid {os.getpid()}, user alice, from 192.0.2.7"
    assert [n for n in reporter.notes if "waited" in n] == [
        f"host: waited {record['waited_s']:.1f} s for another bench on the device ({record['waited_for']}) to end"]


def _bench_while_the_device_is_held(lock: Path, bench) -> tuple[list[str], list]:
    """Hold the device's lock as another bench would, run bench(reporter) meanwhile, and release the lock only
    once a note says that the bench's runner waits for it (bounded): the notes the user saw while the lock was
    held, and the bench's results. The runner's stderr used to be read only when it ended: the note never came
    before the lock was released, and the bench looked hung for up to lock_wait_seconds."""
    from concurrent.futures import ThreadPoolExecutor

    reporter = NoteKeeper()
    with ThreadPoolExecutor(1) as pool:
        fd = hold_device_lock(lock)
        try:
            running = pool.submit(bench, reporter)
            deadline = time.monotonic() + 120
            while not any("waiting up to" in n for n in reporter.notes):
                assert not running.done(), running.exception() or f"the bench ended without waiting: {reporter.notes}"
                assert time.monotonic() < deadline, f"no note said that the runner waits: {reporter.notes}"
                time.sleep(0.05)
            told = list(reporter.notes)
        finally:
            os.close(fd)  # the other bench ends (also when the test failed: the bench then ends too)
        return told, running.result(timeout=300)


def test_edgekd_bench_says_at_once_that_it_waits_for_the_device(tmp_path):
    """What the user sees, in a log (`edgekd bench … > log`): the wait is said while the other bench runs."""
    lock = tmp_path / "device.lock"
    model = write_identity_model(tmp_path / "m.onnx", (8,), 18)
    env = {**os.environ, "EDGEKD_DEVICE_LOCK": str(lock), "COLUMNS": "400"}
    env.pop("PYTHONUNBUFFERED", None)  # as a user's shell has it: the note must reach the log unprompted
    log = tmp_path / "bench.log"
    fd = hold_device_lock(lock)
    try:
        with open(log, "wb") as out:
            cli = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "bench", str(model), "--min-seconds", "0",
                                    "--rounds", "1", "--results-dir", str(tmp_path / "results")], cwd=tmp_path,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while "waiting up to" not in log.read_text():
            assert cli.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the bench did not say that it waits: {log.read_text()}"
            time.sleep(0.05)
        told = log.read_text()
    finally:
        os.close(fd)
    assert cli.wait(timeout=300) == 0, log.read_text()
    assert (f"host: the device is busy with another bench (pid {os.getpid()}, user alice, from 192.0.2.7); waiting "
            "up to " in told), told
    shown = log.read_text()
    assert shown.count("busy with another bench") == 1  # once, as it came, not again at the end
    assert shown.index("waiting up to") < shown.index("host: waited")  # then how long it waited


def test_a_bench_over_ssh_says_at_once_that_it_waits_for_the_board(tmp_path):
    lock = tmp_path / "board.lock"  # the board's lock file
    with LoopbackSSHD(tmp_path / "sshd") as server:
        profile = _profile(server, tmp_path, python=["env", f"EDGEKD_DEVICE_LOCK={lock}", sys.executable])
        told, [result] = _bench_while_the_device_is_held(lock, lambda reporter: edgekd.bench(
            _models(tmp_path)[:1], device=str(profile), settings=replace(FAST, rounds=1), reporter=reporter))
    [waiting] = [n for n in told if "busy" in n]
    assert waiting.startswith(f"board: the device is busy with another bench (pid {os.getpid()}, user alice, "
                              "from 192.0.2.7); waiting up to "), told
    assert [r["state"] for r in result.device_lock] == ["held"] and result.device_lock[0]["waited_s"] > 0


def test_a_device_without_a_lock_of_its_own_is_warned_about_once(tmp_path, monkeypatch):
    lock = tmp_path / "device.lock"
    lock.symlink_to(tmp_path / "elsewhere")  # no lock can be had there
    monkeypatch.setenv("EDGEKD_DEVICE_LOCK", str(lock))
    reporter = NoteKeeper()
    [result] = edgekd.bench([write_identity_model(tmp_path / "m.onnx", (8,), 18)], "host", settings=FAST,
                            reporter=reporter)
    assert [r["state"] for r in result.device_lock] == ["unavailable", "unavailable"]  # both rounds
    warnings = [n for n in reporter.notes if "no device-side bench lock" in n]
    assert len(warnings) == 1 and "symbolic link" in warnings[0] and "another machine" in warnings[0], reporter.notes


_KILLED_MIDWAY = """
import os, signal, sys
from pathlib import Path
import edgekd
from edgekd.bench.harness import BenchSettings

class KillAfter:  # SIGKILL this process once `n` runner calls are done: a bench killed outright (OOM killer, kill -9)
    def __init__(self, n):
        self.n = n
    def task(self, description, total):
        reporter = self
        class Task:
            def advance(self, steps=1, **fields):
                reporter.n -= steps
                if reporter.n == 0:
                    os.kill(os.getpid(), signal.SIGKILL)
            def close(self):
                pass
        return Task()
    def note(self, message):
        pass

folder = Path(sys.argv[1])
edgekd.bench(sorted(folder.glob("m*.onnx")), settings=BenchSettings(warmup_runs=2, min_runs=5, min_seconds=0.0,
             rounds=1), results_dir=folder / "results", history=folder / "h.sqlite", reporter=KillAfter(2))
"""


def test_a_bench_killed_outright_keeps_the_artifacts_it_finished(tmp_path):
    """Results were saved only when every artifact was done (or on Ctrl-C): SIGKILLed after two of three
    artifacts were measured, a bench kept nothing, and --resume measured all three again."""
    from edgekd.bench.result import BenchResult

    models = [write_identity_model(tmp_path / f"m{i}.onnx", (8 * (i + 1),), 18) for i in range(3)]
    proc = subprocess.run([sys.executable, "-c", _KILLED_MIDWAY, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    kept = {p.name: BenchResult.load(p) for p in (tmp_path / "results").glob("bench-*.json")}
    assert sorted(kept) == ["bench-m0.json", "bench-m1.json"] and all(r.complete for r in kept.values())
    resumed = edgekd.bench(models, settings=BenchSettings(warmup_runs=2, min_runs=5, min_seconds=0.0, rounds=1),
                           results_dir=tmp_path / "results", history=tmp_path / "h.sqlite", resume=True)
    assert [r.created_at for r in resumed[:2]] == [kept["bench-m0.json"].created_at,
                                                   kept["bench-m1.json"].created_at]  # reused, not measured again
    assert [s["results"] for s in history.sessions(tmp_path / "h.sqlite")] == [3]  # each once in the history


def test_ctrl_c_before_any_result_does_not_speak_of_stages(tmp_path):
    """A bench interrupted before its first runner call ended said "finished stages are kept; run the same
    command again to resume": a bench has no stages, and nothing had been kept."""
    from sshd import descendants

    model = write_identity_model(tmp_path / "m.onnx", (8,), 18)
    cli = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "bench", str(model), "--rounds", "1",
                            "--min-seconds", "30", "--results-dir", str(tmp_path / "results"), "--history",
                            str(tmp_path / "h.sqlite")],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = _ctrl_c_once(cli, lambda: any(b"edgekd_runner" in _cmdline(pid) and b"spec" in _cmdline(pid)
                                           for pid in descendants(cli.pid)),  # the timing runner (30 s) is under way
                          "the runner never started")
    assert "interrupted: no result was finished; run the same command again" in " ".join(stderr.split()), stderr
    assert "stages" not in stderr and not list((tmp_path / "results").glob("*.json"))
