"""Device profiles are checked when loaded: a wrong type, a CPU this host lacks or a typo'd key is one clear
error naming the file and the field (not a crash inside the benchmark, nor an option silently ignored)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from edgekd.devices.base import DeviceError
from edgekd.devices.profiles import example_profiles, load_profile, open_device
from edgekd.export.onnx import write_identity_model

REPO = Path(__file__).resolve().parent.parent


def _write(folder: Path, **fields) -> Path:
    path = folder / "board.yaml"
    path.write_text(yaml.safe_dump({"name": "board", "kind": "local", "workdir": str(folder / "work"), **fields}))
    return path


def _rejected(path: Path, field: str) -> DeviceError:
    with pytest.raises(DeviceError) as err:
        load_profile(path)
    assert str(path) in err.value.what and f"`{field}" in err.value.what, err.value
    assert err.value.why and err.value.fix and field in err.value.fix, err.value
    return err.value


@pytest.mark.parametrize("value", ["maybe", "yes please", 1, [True]])
def test_emulated_must_be_a_bool(tmp_path, value):
    err = _rejected(_write(tmp_path, emulated=value), "emulated")
    assert "true or false" in err.why and repr(value) in err.why


@pytest.mark.parametrize("value", ["four", -2, 0, 2.5, True])
def test_threads_must_be_a_positive_int(tmp_path, value):
    err = _rejected(_write(tmp_path, threads=value), "threads")
    assert "≥ 1" in err.why and repr(value) in err.why


@pytest.mark.parametrize("value, rule", [
    ("0-3", "list of CPU numbers"),
    ([], "non-empty list"),
    ([-1], "≥ 0"),
    ([0, "1"], "list of CPU numbers"),
    ([0, 0], "twice"),
    ([4096], "4096 is not among them"),
])
def test_cpus_of_this_host_must_be_distinct_cpus_it_has(tmp_path, value, rule):
    err = _rejected(_write(tmp_path, cpus=value), "cpus")
    assert rule in err.why, err


@pytest.mark.parametrize("kind, value, rule", [
    ("ssh", "-cimport os; os.system('id')#", "must not start with '-'"),  # argv[1] of the board's Python
    ("local", "-work", "must not start with '-'"),
    ("ssh", "~/edgekd-work", "relative to the login's home without '~/'"),  # mkdir made a folder named '~'
    ("adb", "~/edgekd", "must not start with '~'"),
    ("ssh", "/tmp/work\\x", "scp reads them"),  # scp's remote glob dropped the backslash: pulls failed
    ("ssh", "/tmp/w*", "scp reads them"),
])
def test_a_workdir_the_device_would_read_otherwise_is_refused(tmp_path, kind, value, rule):
    remote = {"ssh": {"host": "board.invalid"}, "adb": {"serial": "R58M12345AB"}, "local": {}}[kind]
    err = _rejected(_write(tmp_path, kind=kind, workdir=value, **remote), "workdir")
    assert rule in err.why, err


def test_a_workdir_with_spaces_and_quotes_stays_allowed(tmp_path):
    assert load_profile(_write(tmp_path, kind="ssh", host="b.invalid", workdir="/tmp/my 'work' \"dir\"")).workdir \
        == "/tmp/my 'work' \"dir\""
    assert load_profile(_write(tmp_path, kind="ssh", host="b.invalid", workdir="edgekd-work")).workdir == "edgekd-work"


def test_cpus_of_a_remote_board_are_not_checked_against_this_host(tmp_path):
    profile = load_profile(_write(tmp_path, kind="ssh", host="board.invalid", cpus=[4096]))
    assert profile.cpus == [4096]


def test_cpus_this_host_has_load(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    assert load_profile(_write(tmp_path, cpus=cpus)).cpus == cpus


def test_an_unknown_key_is_rejected_with_a_suggestion(tmp_path):
    err = _rejected(_write(tmp_path, threds=2), "threds")
    assert "did you mean `threads:`" in err.what and "rename `threds:` to `threads:`" in err.fix
    assert "threads" in err.why and "workdir" in err.why  # lists the fields of kind local


def test_a_field_of_another_kind_says_which_kind(tmp_path):
    err = _rejected(_write(tmp_path, serial="R58M12345AB"), "serial")
    assert "belongs to kind adb" in err.why


def test_a_typo_inside_thermal_is_rejected(tmp_path):
    err = _rejected(_write(tmp_path, thermal={"max_celcius": 60}), "thermal.max_celcius")
    assert "did you mean `thermal.max_celsius:`" in err.what and "max_celsius" in err.why


@pytest.mark.parametrize("fields, field", [
    ({"kind": "ssh", "host": "board.invalid", "port": 70000}, "port"),
    ({"kind": "ssh", "host": "-oProxyCommand=x"}, "host"),
    ({"kind": "ssh", "host": "board.invalid", "connect_timeout": "soon"}, "connect_timeout"),
    ({"kind": "adb", "serial": "two words"}, "serial"),
    ({"python": 3}, "python"),
    ({"native": {"tflite": 3}}, "native"),
])
def test_kind_specific_fields_are_type_checked(tmp_path, fields, field):
    _rejected(_write(tmp_path, **fields), field)


@pytest.mark.parametrize("workdir", ["{file}/work", "/proc/edgekd"])
def test_an_unusable_workdir_is_a_device_error(tmp_path, workdir):
    if workdir.startswith("/proc") and not Path("/proc/self").is_dir():
        pytest.skip("no procfs")
    (tmp_path / "file").write_text("not a folder")
    workdir = workdir.format(file=tmp_path / "file")
    with pytest.raises(DeviceError) as err:
        open_device(str(_write(tmp_path, workdir=workdir)))
    assert workdir in err.value.what and err.value.why and "`workdir:`" in err.value.fix


def test_the_cli_reports_an_unknown_key_in_one_block(tmp_path):
    import subprocess

    write_identity_model(tmp_path / "m.onnx", (8,), 18)
    (tmp_path / "p.yaml").write_text("name: x\nkind: local\nthreds: 2\n")
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "bench", "m.onnx", "--device", "p.yaml"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "`threds:`" in proc.stderr and "`threads:`" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_profile_found_by_name_must_carry_that_name(tmp_path, monkeypatch):
    """A copied profile that kept its original's `name:` was benched, and its history filed, under the
    original's name while `edgekd devices` listed it by its file's."""
    import subprocess

    from edgekd.devices.profiles import find_profile

    monkeypatch.chdir(tmp_path)
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "pixel.yaml").write_text("name: phone\nkind: local\n")
    with pytest.raises(DeviceError, match="device 'pixel' is read from .*pixel.yaml, whose `name:` is 'phone'") as err:
        find_profile("pixel")
    assert "set `name: pixel`" in err.value.fix and "phone.yaml" in err.value.fix
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "devices", "--info", "pixel"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "whose `name:` is 'phone'" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "devices" / "pixel.yaml").write_text("kind: local\n")  # without `name:`, named after its file
    assert find_profile("pixel").name == "pixel"
    assert find_profile(str(tmp_path / "devices" / "pixel.yaml")).name == "pixel"


@pytest.mark.parametrize("cpu, field, rule", [
    ("arm64", "cpu", "must be a mapping `arch:`"),
    ({"flags": ["asimd"]}, "cpu", "must be a mapping `arch:`"),                      # no arch
    ({"arch": "aarch64"}, "cpu.arch", "one of x86_64, arm64, arm32"),                # uname's name, not ours
    ({"arch": "x86_64"}, "cpu", "must list the flags of an x86_64 CPU"),             # x86 decides on its flags
    ({"arch": "x86_64", "flags": []}, "cpu", "must list the flags of an x86_64 CPU"),
    ({"arch": "x86_64", "flags": ["avx2", "avx512vnni"]}, "cpu.flags", "did you mean 'avx512_vnni'?"),
    ({"arch": "x86_64", "flags": ["avx2", "asimddp"]}, "cpu.flags", "'asimddp' is not one"),  # an Arm flag
    ({"arch": "arm64", "flags": ["asimd", "asimd"]}, "cpu.flags", "twice"),
    ({"arch": "arm64", "flags": "asimd asimddp"}, "cpu.flags", "must be a list"),
    ({"arch": "arm64", "flag": ["asimd"]}, "cpu.flag", "has the fields: arch, flags"),
])
def test_a_board_cpu_must_be_an_arch_and_flags_edgekd_reads(tmp_path, cpu, field, rule):
    """A wrong `cpu:` would silently pick the wrong INT8 weight grid at export (an x86 flag misspelt reads as
    'no VNNI', an Arm flag on x86 as 'no AVX2'), so it is refused when the profile is read."""
    err = _rejected(_write(tmp_path, kind="ssh", host="board.invalid", cpu=cpu), field)
    assert rule in err.why + err.what, err


@pytest.mark.parametrize("kind, fields", [("ssh", {"host": "board.invalid"}), ("adb", {"serial": "R58M12345AB"})])
def test_a_board_or_phone_may_say_its_cpu(tmp_path, kind, fields):
    for cpu in ({"arch": "arm64"}, {"arch": "arm32", "flags": ["neon"]},
                {"arch": "x86_64", "flags": ["avx2", "avx512f", "avx512_vnni"]}):
        assert load_profile(_write(tmp_path, kind=kind, **fields, cpu=cpu)).options["cpu"] == cpu


def test_a_local_profile_has_no_cpu_field(tmp_path):
    """It runs on this machine, whose CPU edgekd reads itself: a declared one could only disagree."""
    err = _rejected(_write(tmp_path, cpu={"arch": "arm64"}), "cpu")
    assert "belongs to kind ssh and adb" in err.why


@pytest.mark.parametrize("path", [*sorted((REPO / "devices").glob("*.yaml")), *example_profiles().values()],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_profile_loads(path):
    profile = load_profile(path)
    assert profile.name and profile.kind in ("local", "ssh", "adb")


def test_bench_takes_the_profile_threads_unless_told_otherwise(tmp_path):
    """`threads:` in a profile is the device's default thread count; --threads (or bench.threads) overrides."""
    from edgekd.bench.harness import BenchSettings, bench

    write_identity_model(tmp_path / "m.onnx", (8,), 18)
    profile = str(_write(tmp_path, threads=2))
    quick = {"warmup_runs": 1, "min_runs": 5, "min_seconds": 0.0, "rounds": 1}
    (default,) = bench([tmp_path / "m.onnx"], profile, settings=BenchSettings(**quick))
    (told,) = bench([tmp_path / "m.onnx"], profile, settings=BenchSettings(threads=1, **quick))
    assert default.settings["threads"] == 2 and told.settings["threads"] == 1


def test_a_local_workdir_under_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    device = open_device(str(_write(tmp_path, workdir="~/edgekd-work")))
    assert device.workdir == str(tmp_path / "edgekd-work") and (tmp_path / "edgekd-work").is_dir()


@pytest.mark.parametrize("key, shown", [("~", "null"), ("1.5", "1.5"), ("2024-01-01", "2024-01-01"),
                                        ("thermal:\n  yes", "thermal.true")])
def test_a_key_yaml_reads_as_a_value_is_named_not_an_internal_error(tmp_path, key, shown):
    """`~: 1` in any profile made `edgekd devices` itself fail with an internal error (ValueError: 'None' is not in
    list), and `yes:` was called an unknown field `1:`."""
    from edgekd.devices.profiles import load_profile

    path = tmp_path / "b.yaml"
    path.write_text(f"kind: ssh\nhost: 127.0.0.1\n{key}: 1\n")
    with pytest.raises(DeviceError) as err:
        load_profile(path)
    assert err.value.what == f"the key `{shown}:` in device profile {path} is not a field name"


def test_a_profile_cannot_take_the_name_host_for_another_device(tmp_path, monkeypatch):
    """devices/host.yaml of kind ssh replaced this machine: `--device host` benched the board and filed its results
    as this machine's (bench-NAME.json, history rows under host). A local host profile (threads, cpus) stays."""
    from edgekd.devices.profiles import find_profile

    monkeypatch.chdir(tmp_path)
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "host.yaml").write_text("kind: ssh\nhost: 127.0.0.1\n")
    with pytest.raises(DeviceError) as err:
        find_profile("host")
    assert err.value.what.endswith("gives the name 'host' to a device of kind ssh"), err.value.what
    assert "this machine" in err.value.why
    (tmp_path / "devices" / "host.yaml").write_text("kind: local\nthreads: 2\n")
    assert find_profile("host").options == {} and find_profile("host").threads == 2


def test_the_device_list_marks_a_profile_that_device_refuses(tmp_path):
    """A copied profile that kept its original's `name:` was listed as a usable ssh device, and `--device e`
    refused it."""
    from test_cli_errors import run_cli

    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "e.yaml").write_text("name: other\nkind: ssh\nhost: 127.0.0.1\n")
    (tmp_path / "devices" / "host.yaml").write_text("kind: adb\nserial: x\n")
    proc = run_cli(tmp_path, "devices")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("│ ")
            and line.split("│")[1].strip()}
    assert "invalid: device 'e' is read from" in rows["e"], proc.stdout
    assert "invalid: device profile" in rows["host"], proc.stdout


def test_one_device_given_by_name_and_by_path_is_refused(tmp_path, monkeypatch):
    """`--device board --device devices/board.yaml` benched one device twice at once: the second bench was told
    that "another edgekd process" (its own pid) held the results folder."""
    from edgekd.bench.harness import bench_devices
    from edgekd.errors import BenchError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "board.yaml").write_text("kind: local\n")
    with pytest.raises(BenchError) as err:
        bench_devices([tmp_path / "m.onnx"], ["board", "devices/board.yaml"])
    assert err.value.what == "device 'board' is given twice: as board and as devices/board.yaml"
