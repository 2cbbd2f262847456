"""What another user of the machine, a device, or an edited file could make edgekd do: checked for real.

Work directories (the runner starts from them), names joined to folders (from artifact.json, a checkpoint's
metadata, a model's input names, a cache sidecar, the run manifest), relaxed SSH host-key checking, and
escape sequences in text quoted from a device.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgekd.devices.base import DeviceError, DeviceProfile
from edgekd.devices.local import LocalDevice
from edgekd.devices.profiles import load_profile
from edgekd.errors import ArtifactError, BenchError, CheckpointError, printable

OTHER_UID = 54321


def _folder_of_another_user(tmp_path: Path) -> Path:
    """A folder this process does not own: made and given away as root, else one of root's."""
    if os.getuid() != 0:
        return Path("/usr")
    folder = tmp_path / "theirs"
    folder.mkdir()
    os.chown(folder, OTHER_UID, OTHER_UID)
    return folder


def test_a_local_work_directory_of_another_user_is_refused(tmp_path):
    with pytest.raises(DeviceError, match="belongs to another user") as err:
        LocalDevice(DeviceProfile(name="board", kind="local", python=sys.executable,
                                  workdir=str(_folder_of_another_user(tmp_path))))
    assert "run code as you" in err.value.why and "`workdir:`" in err.value.fix


@pytest.mark.parametrize("mode", [0o1777, 0o775])
def test_a_local_work_directory_others_may_write_is_refused_and_left_as_it_is(tmp_path, mode):
    """`workdir: /tmp` (1777) run as root used to make /tmp 1755 for everyone: a shared folder is refused, never
    changed."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(DeviceError, match=f"can be written by other users \\(mode {mode:o}\\)") as err:
        LocalDevice(DeviceProfile(name="board", kind="local", python=sys.executable, workdir=str(shared)))
    assert "run code as you" in err.value.why and "`workdir:`" in err.value.fix
    assert shared.stat().st_mode & 0o7777 == mode
    fresh = tmp_path / "fresh"
    LocalDevice(DeviceProfile(name="board", kind="local", python=sys.executable, workdir=str(fresh)))
    assert fresh.stat().st_mode & 0o077 == 0  # made private


def test_a_local_profile_without_workdir_gets_one_of_this_user(tmp_path):
    path = tmp_path / "box.yaml"
    path.write_text(yaml.safe_dump({"kind": "local"}))
    workdir = load_profile(path).workdir
    assert workdir.endswith(f"edgekd-box-{os.getuid()}")


def test_a_module_left_in_the_work_directory_is_not_imported_by_the_runner(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir(mode=0o700)
    marker = tmp_path / "planted-module-ran"
    (workdir / "numpy.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nraise ImportError\n")
    info = LocalDevice(DeviceProfile(name="board", kind="local", python=sys.executable,
                                     workdir=str(workdir))).info()
    assert not marker.exists()
    assert info["numpy"], info  # the real numpy was found


@pytest.mark.parametrize("name", ["x/../../escaped", "..", "a\\b"])
def test_an_artifact_record_naming_a_path_is_corrupt(tmp_path, name):
    from edgekd.export.artifact import Artifact

    (tmp_path / "artifact.json").write_text(json.dumps({
        "name": name, "role": "student", "format": "onnx", "precision": "fp32", "file": "model.onnx",
        "size_bytes": 1, "sha256": "0" * 64}))
    with pytest.raises(ArtifactError, match="corrupt artifact record") as err:
        Artifact.load(tmp_path)
    assert "must be one file name, not a path" in err.value.why


def test_a_checkpoint_whose_role_is_a_path_is_refused_by_export(tmp_path):
    from edgekd.checkpoints import save_checkpoint
    from edgekd.exporter import export_checkpoint
    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(64,), num_classes=10, width=16, depth=1)
    checkpoint = save_checkpoint(model, tmp_path / "student.pt", role="../../escaped", data={"name": "digits"})
    with pytest.raises(CheckpointError, match="records the role '../../escaped'"):
        export_checkpoint(checkpoint, tmp_path / "out" / "a")
    assert not (tmp_path / "escaped-onnx-fp32").exists()


def test_model_input_names_never_name_files_and_text_inputs_are_refused(tmp_path):
    from edgekd.bench.harness import _synthetic_inputs
    from edgekd.export.artifact import Artifact

    def artifact(dtype: str) -> Artifact:
        return Artifact(name="m", role="model", format="onnx", precision="fp32", file="m.onnx", size_bytes=1,
                        sha256="0" * 64, inputs=[{"name": "../../escaped", "shape": [None, 4], "dtype": dtype}])

    (tmp_path / "inputs").mkdir()  # the harness makes it per artifact
    feeds = _synthetic_inputs(artifact("float32"), 1, tmp_path / "inputs")
    assert [Path(p).parent for p in feeds.values()] == [tmp_path / "inputs"]
    assert np.load(feeds["../../escaped"], allow_pickle=False).shape == (1, 4)
    with pytest.raises(BenchError, match="can only make up numbers"):
        _synthetic_inputs(artifact("object"), 1, tmp_path / "inputs")


def test_a_cache_sidecar_naming_a_file_outside_the_cache_is_a_miss(tmp_path, caplog):
    from edgekd.distill.teacher_cache import TeacherCache, cache_key

    cache = TeacherCache(tmp_path / "cache")
    key = cache_key(teacher="a" * 64, data="digits:train:0")
    entry = cache.put(key, np.zeros((4, 3), np.float32))
    outside = tmp_path / "outside.npy"
    shutil.copyfile(entry.path, outside)
    del entry
    side = tmp_path / "cache" / f"{key}.json"
    record = json.loads(side.read_text())
    record["files"]["values"]["name"] = "../outside.npy"
    side.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        assert cache.get(key) is None
    assert "not a file name in the cache" in caplog.text


def test_manifest_outputs_outside_the_run_are_never_trusted(tmp_path):
    from edgekd.rundir import RunDir, atomic_write_json

    run = RunDir(tmp_path / "run")
    (tmp_path / "outside.json").write_text("{}")
    inside = run.root / "results" / "bench-a.json"
    atomic_write_json(inside, {})
    run.mark_done("bench", "h", [inside], 0.0)
    manifest = json.loads(run.manifest_path.read_text())
    manifest["stages"]["bench"]["outputs"]["../outside.json"] = manifest["stages"]["bench"]["outputs"].pop(
        "results/bench-a.json")
    run.manifest_path.write_text(json.dumps(manifest))
    assert run.recorded_outputs("bench", "*.json") == []
    assert not run.is_done("bench", "h")


def test_a_device_profile_name_is_one_word(tmp_path):
    path = tmp_path / "board.yaml"
    path.write_text(yaml.safe_dump({"kind": "local", "name": "p/../../x"}))
    with pytest.raises(DeviceError, match="name"):
        load_profile(path)
    spaced = tmp_path / "my board.yaml"
    spaced.write_text(yaml.safe_dump({"kind": "local"}))
    with pytest.raises(DeviceError, match="is no device name"):
        load_profile(spaced)


def test_escape_sequences_quoted_from_a_device_never_reach_the_terminal():
    quoted = "bad\x1b]0;retitled\x07 input\x1b[2J\x1b[31m!\x1b[0m\x00\ttab\nnext line"
    assert printable(quoted) == "bad input!\ttab\nnext line"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    from sshd import INSTALL_HINT, LoopbackSSHD, find_sshd

    if find_sshd() is None:  # not a skip: CI installs openssh-server
        pytest.fail(INSTALL_HINT, pytrace=False)
    server = LoopbackSSHD(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


def _ssh_device(server, workdir: Path, **options):
    from edgekd.devices.ssh import SSHDevice

    return SSHDevice(DeviceProfile(name="loopback", kind="ssh", python=sys.executable, workdir=str(workdir),
                                   options={**server.profile_options(), **options}))


def test_a_remote_work_directory_of_another_user_is_refused_before_any_copy(sshd, tmp_path):
    theirs = _folder_of_another_user(tmp_path)
    source = tmp_path / "model.bin"
    source.write_bytes(b"x")
    with _ssh_device(sshd, theirs) as device:
        with pytest.raises(DeviceError, match="belongs to another user"):
            device.push(source, f"{theirs}/sub/model.bin")
    assert not (theirs / "sub").exists()


def test_a_remote_work_directory_others_may_write_is_refused_and_left_as_it_is(sshd, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    source = tmp_path / "model.bin"
    source.write_bytes(b"x")
    with _ssh_device(sshd, shared) as device:
        with pytest.raises(DeviceError, match="can be written by other users"):
            device.push(source, f"{shared}/artifacts/model.bin")
    assert shared.stat().st_mode & 0o7777 == 0o1777 and not (shared / "artifacts").exists()


def test_a_remote_work_directory_is_made_private(sshd, tmp_path):
    workdir = tmp_path / "remote work"
    source = tmp_path / "model.bin"
    source.write_bytes(b"x")
    with _ssh_device(sshd, workdir) as device:
        device.push(source, f"{workdir}/artifacts/model.bin")
    assert workdir.stat().st_mode & 0o077 == 0 and (workdir / "artifacts" / "model.bin").read_bytes() == b"x"


def test_relaxed_host_key_checking_is_logged_and_recorded(sshd, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="edgekd.devices.ssh"):
        device = _ssh_device(sshd, tmp_path / "w", ssh_options={"StrictHostKeyChecking": "accept-new"})
    with device:
        assert device.info()["ssh_host_key_checking"] == "StrictHostKeyChecking=accept-new"
    assert "host-key checking relaxed" in caplog.text
    with _ssh_device(sshd, tmp_path / "w") as strict:
        assert strict.host_key_checking == "strict"
