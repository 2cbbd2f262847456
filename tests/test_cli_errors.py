"""User errors reach the user as one short block (error / why / fix) with exit code 2, never a traceback.

Every test drives the real `edgekd` CLI in a subprocess (cwd = a fresh tmp_path) with real files: no mocks.
Recipes are tiny (1 epoch, no scratch baseline, no bench) so that a regression which lets a bad run
start training still finishes quickly; the tests then find what training leaves behind (a run directory,
checkpoints, progress lines).

Content checks run the CLI with COLUMNS=400 so that rich's line folding (see
`test_error_block_is_not_folded_when_piped`) does not split the strings they look for.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "edgekd.cli"]
WIDE = {"COLUMNS": "400"}

# A recipe that would run in seconds if it got past validation: everything minimal.
TINY = textwrap.dedent(
    """\
    name: tiny
    seed: 0
    output_dir: out
    data: {name: digits}
    teacher:
      model: {family: cnn, params: {width: 32, depth: 3, hidden: 128}}
      train: {epochs: 1}
    student:
      model: {family: mlp, params: {width: 16, depth: 1}}
    distill:
      loss: {name: kd, temperature: 4.0, alpha: 0.9}
      train: {epochs: 1}
    scratch: {enabled: false}
    export:
      targets: {teacher: [fp32], student: [fp32]}
    bench: {enabled: false}
    """
)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def run_cli(cwd: Path, *args: str, env_extra: dict[str, str] | None = None, drop_columns: bool = False,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    env.update(env_extra if env_extra is not None else WIDE)
    if drop_columns:
        env.pop("COLUMNS", None)
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def assert_user_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The CLI's contract for a user error; returns stderr with whitespace collapsed (for content checks)."""
    both = proc.stdout + proc.stderr
    assert "Traceback" not in both, both
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    err = proc.stderr.strip("\n")
    assert err.startswith("error:"), proc.stderr
    assert "internal error" not in err, proc.stderr
    # One block: a single "error:" heading, no blank lines inside it, and a fix.
    assert err.count("error:") == 1, proc.stderr
    assert "\n\n" not in err, proc.stderr
    assert re.search(r"^\s*fix: \S", err, re.MULTILINE), proc.stderr
    return " ".join(err.split())


def write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def tiny_with(**replacements: str) -> str:
    """TINY with some lines replaced: key = the line's stripped prefix up to ':' (first match)."""
    lines = TINY.splitlines()
    for key, new in replacements.items():
        for i, line in enumerate(lines):
            if line.strip().startswith(key + ":"):
                indent = line[: len(line) - len(line.lstrip())]
                lines[i] = indent + new
                break
        else:  # pragma: no cover - a broken test, not a product failure
            raise KeyError(key)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# 1. recipe file missing
# --------------------------------------------------------------------------------------

def test_missing_recipe_file(tmp_path: Path) -> None:
    msg = assert_user_error(run_cli(tmp_path, "run", "nope.yaml"))
    assert "recipe not found: nope.yaml" in msg
    assert "demo" in msg  # the fix names the built-in recipes
    assert not (tmp_path / "export").exists()


# --------------------------------------------------------------------------------------
# 2-7, 14. recipe content errors: all caught while loading, before anything runs
# --------------------------------------------------------------------------------------

RECIPE_CASES = [
    pytest.param(
        "name: bad\ndistill: {loss: {name: kd\n  x: [1, 2\n",
        [r"YAML syntax error at line 3, column 4"],
        id="yaml-syntax",
    ),
    pytest.param(
        tiny_with(data="data: {name: nope}"),
        [r"data\.name: unknown data set 'nope'", r"\bdigits\b"],
        id="unknown-dataset",
    ),
    pytest.param(
        tiny_with(student="student: {model: {family: nope}}").replace(
            "  model: {family: mlp, params: {width: 16, depth: 1}}\n", ""),
        [r"student\.model\.family: unknown model family 'nope'", r"cnn, mlp, tiny_cnn"],
        id="unknown-model-family",
    ),
    pytest.param(
        tiny_with(loss="loss: {name: nope, temperature: 4.0, alpha: 0.9}"),
        [r"distill\.loss\.name: unknown loss 'nope'", r"\bkd\b", r"\bce\b"],
        id="unknown-loss",
    ),
    pytest.param(
        tiny_with(loss="loss: {name: kd, temperature: -1, alpha: 0.9}"),
        [r"distill\.loss\.temperature: must be > 0", r"got -1\b"],
        id="out-of-range-temperature",
    ),
    pytest.param(
        tiny_with(loss="loss: {name: kd, temprature: 4.0, alpha: 0.9}"),
        [r"distill\.loss\.temprature: unknown field", r"fields allowed there: name, temperature, alpha"],
        id="unknown-field",
    ),
    pytest.param(
        "- name: tiny\n- seed: 0\n",
        [r"a recipe must be a YAML mapping, got list"],
        id="not-a-mapping",
    ),
]


@pytest.mark.parametrize(("text", "expected"), RECIPE_CASES)
def test_invalid_recipe(tmp_path: Path, text: str, expected: list[str]) -> None:
    write_recipe(tmp_path, text)
    msg = assert_user_error(run_cli(tmp_path, "run", "recipe.yaml"))
    for pattern in expected:
        assert re.search(pattern, msg), f"{pattern!r} not in: {msg}"
    assert "recipe.yaml" in msg  # names the file to edit
    assert not (tmp_path / "out").exists(), "a run directory was created for an invalid recipe"


def test_out_of_range_message_is_exact(tmp_path: Path) -> None:
    """DESIGN.md's own example: `distill.loss.temperature: must be > 0, got -1`."""
    write_recipe(tmp_path, tiny_with(loss="loss: {name: kd, temperature: -1, alpha: 0.9}"))
    msg = assert_user_error(run_cli(tmp_path, "run", "recipe.yaml"))
    assert "distill.loss.temperature: must be > 0, got -1" in msg, msg


# --------------------------------------------------------------------------------------
# 8. output directory that cannot be created, even by root
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["recipe-under-a-file", "flag-under-proc"])
def test_unwritable_output_dir(tmp_path: Path, where: str) -> None:
    (tmp_path / "afile").write_text("a regular file, not a folder\n")
    if where == "recipe-under-a-file":
        target = tmp_path / "afile" / "sub"
        write_recipe(tmp_path, tiny_with(output_dir=f"output_dir: {target}"))
        args = ["run", "recipe.yaml"]
    else:
        target = Path("/proc/edgekd-test-nope")
        write_recipe(tmp_path, TINY)
        args = ["run", "recipe.yaml", "--output-dir", str(target)]
    proc = run_cli(tmp_path, *args)
    msg = assert_user_error(proc)
    assert "cannot write the run directory" in msg
    assert str(target) in msg
    assert "--output-dir" in msg
    # refused before any stage: no training progress, and nothing written anywhere else instead
    assert "train teacher" not in proc.stdout, proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "recipe.yaml"]


# --------------------------------------------------------------------------------------
# 9, 12. bench: corrupt ONNX files, unknown device
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["random", "empty"])
def test_bench_corrupt_onnx(tmp_path: Path, content: str) -> None:
    data = os.urandom(4096) if content == "random" else b""
    (tmp_path / "x.onnx").write_bytes(data)
    msg = assert_user_error(run_cli(tmp_path, "bench", "x.onnx", "--min-seconds", "0"))
    assert "x.onnx is not a valid ONNX model" in msg
    assert "re-export" in msg


@pytest.mark.parametrize("content", ["random", "empty"])
def test_bench_corrupt_tflite(tmp_path: Path, content: str) -> None:
    (tmp_path / "x.tflite").write_bytes(os.urandom(4096) if content == "random" else b"")
    msg = assert_user_error(run_cli(tmp_path, "bench", "x.tflite", "--min-seconds", "0"))
    assert "x.tflite" in msg and ("LiteRT cannot load" in msg or "not a valid TFLite" in msg)
    assert "re-export" in msg


def test_bench_unknown_model_format(tmp_path: Path) -> None:
    (tmp_path / "x.pt").write_bytes(b"not a model")
    msg = assert_user_error(run_cli(tmp_path, "bench", "x.pt", "--min-seconds", "0"))
    assert "unknown model format '.pt'" in msg and ".onnx" in msg and ".tflite" in msg


def test_bench_unknown_device(tmp_path: Path) -> None:
    from edgekd.export.onnx import write_identity_model

    write_identity_model(tmp_path / "ok.onnx", (4,), 18)  # a valid model: only the device is wrong
    msg = assert_user_error(run_cli(tmp_path, "bench", "ok.onnx", "--device", "raspberry", "--min-seconds", "0"))
    assert "unknown device 'raspberry'" in msg
    assert "known devices: host" in msg
    assert not (tmp_path / "export").exists()  # the results folder it made to fail early is gone again


def test_a_failed_bench_or_export_leaves_no_new_empty_folder(tmp_path: Path) -> None:
    """The output folder is made first, to fail early on one that cannot be written; when the command then fails
    (here: a device without its Python, found after the bench locked its results folder; a missing checkpoint),
    the folders it made go again, lock files and all. A folder that was there before stays."""
    from edgekd.export.onnx import write_identity_model

    write_identity_model(tmp_path / "ok.onnx", (4,), 18)
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "nopython.yaml").write_text("kind: local\npython: /nonexistent/python3\n")
    bench = ("bench", "ok.onnx", "--device", "nopython", "--min-seconds", "0", "--results-dir")
    msg = assert_user_error(run_cli(tmp_path, *bench, "new/results"))
    assert "'/nonexistent/python3' is not installed on nopython" in msg
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    assert_user_error(run_cli(tmp_path, *bench, "kept/results"))
    assert [p.name for p in (tmp_path / "kept").iterdir()] == []
    msg = assert_user_error(run_cli(tmp_path, "export", "missing.pt", "--output-dir", "new/artifacts"))
    assert "checkpoint not found: missing.pt" in msg
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------------------
# 10, 11. teacher checkpoints: wrong shape, pickled code
# --------------------------------------------------------------------------------------

class NotATensor:
    """A custom class: torch.load(weights_only=True) refuses to unpickle it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def _recipe_with_teacher_checkpoint(tmp_path: Path, checkpoint: Path) -> None:
    write_recipe(tmp_path, TINY.replace("  train: {epochs: 1}\n",
                                        f"  checkpoint: {checkpoint}\n  train: {{epochs: 1}}\n", 1))


def test_teacher_checkpoint_of_wrong_shape(tmp_path: Path) -> None:
    import torch

    from edgekd.models import create_model

    small = create_model("cnn", in_shape=(64,), num_classes=10, width=8)  # the recipe says width 32
    checkpoint = tmp_path / "teacher-width8.pt"
    torch.save(small.state_dict(), checkpoint)
    _recipe_with_teacher_checkpoint(tmp_path, checkpoint)

    msg = assert_user_error(run_cli(tmp_path, "run", "recipe.yaml"))
    assert f"checkpoint {checkpoint} does not fit the teacher model" in msg
    assert "features.0.weight: checkpoint (8, 1, 3, 3) vs model (32, 1, 3, 3)" in msg
    assert "set teacher.model" in msg
    assert not (tmp_path / "out" / "tiny" / "checkpoints" / "teacher.pt").exists()


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    import torch

    checkpoint = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(3), "extra": NotATensor()}, checkpoint)
    _recipe_with_teacher_checkpoint(tmp_path, checkpoint)

    msg = assert_user_error(run_cli(tmp_path, "run", "recipe.yaml"))
    assert f"cannot load checkpoint {checkpoint}" in msg
    assert "edgekd loads weights only, for safety" in msg
    assert not (tmp_path / "out" / "tiny" / "checkpoints" / "teacher.pt").exists()


def test_refused_checkpoint_names_the_global_without_escape_codes(tmp_path: Path) -> None:
    import torch

    checkpoint = tmp_path / "evil.pt"
    torch.save({"extra": NotATensor()}, checkpoint)
    _recipe_with_teacher_checkpoint(tmp_path, checkpoint)
    proc = run_cli(tmp_path, "run", "recipe.yaml")
    msg = assert_user_error(proc)
    assert "\x1b" not in proc.stderr, repr(proc.stderr)
    assert "NotATensor" in msg, msg


# --------------------------------------------------------------------------------------
# 13. report without a run
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder", ["empty-dir", "missing-dir"])
def test_report_without_a_run(tmp_path: Path, folder: str) -> None:
    target = tmp_path / folder
    if folder == "empty-dir":
        target.mkdir()
    msg = assert_user_error(run_cli(tmp_path, "report", str(target)))
    assert f"no report in {target}" in msg
    assert "edgekd run" in msg


# --------------------------------------------------------------------------------------
# the block as a piped user sees it (no COLUMNS): one line per part
# --------------------------------------------------------------------------------------

def test_error_block_is_not_folded_when_piped(tmp_path: Path) -> None:
    (tmp_path / "x.onnx").write_bytes(os.urandom(4096))
    proc = run_cli(tmp_path, "bench", "x.onnx", env_extra={}, drop_columns=True)
    assert_user_error(proc)
    lines = proc.stderr.strip("\n").splitlines()
    assert all(re.match(r"^(error:|  why:|  fix:)", line) for line in lines), proc.stderr


# --------------------------------------------------------------------------------------
# 15. an unexportable model fails before training, naming the module (Python API)
# --------------------------------------------------------------------------------------

UNEXPORTABLE = "test_numpy_sort_mlp"


@pytest.fixture(scope="module")
def unexportable_run(tmp_path_factory: pytest.TempPathFactory):
    """Register a family whose `sorter` submodule goes through numpy, run a recipe using it as the student
    (once for the tests below), and unregister it. Yields (error raised or None, run directory)."""
    import numpy as np
    import torch
    from torch import nn

    from edgekd.errors import EdgeKDError
    from edgekd.models import MODELS
    from edgekd.pipeline import run
    from edgekd.recipe import load_recipe

    class NumpySort(nn.Module):
        """Sorts features through numpy: fine in eager mode, impossible to export."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.sort(x.detach().numpy(), axis=1))

    class SortedMLP(nn.Module):
        def __init__(self, in_features: int, num_classes: int) -> None:
            super().__init__()
            self.flatten = nn.Flatten()
            self.sorter = NumpySort()
            self.head = nn.Linear(in_features, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.sorter(self.flatten(x)))

    def build(*, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return SortedMLP(int(np.prod(in_shape)), num_classes)

    out = tmp_path_factory.mktemp("unexportable")
    assert UNEXPORTABLE not in MODELS
    MODELS.register(UNEXPORTABLE)(build)
    try:
        recipe = load_recipe({
            "name": "unexportable",
            "output_dir": str(out),
            "teacher": {"model": {"family": "cnn", "params": {"width": 8, "depth": 2, "hidden": 16}},
                        "train": {"epochs": 1}},
            "student": {"model": {"family": UNEXPORTABLE}},
            "distill": {"train": {"epochs": 1}},
            "scratch": {"enabled": False},
            "export": {"targets": {"teacher": ["fp32"], "student": ["fp32"]}},
            "bench": {"enabled": False},
        })
        error: EdgeKDError | None = None
        try:
            run(recipe)
        except EdgeKDError as exc:
            error = exc
        yield error, out / "unexportable"
    finally:
        MODELS._entries.pop(UNEXPORTABLE, None)
    assert UNEXPORTABLE not in MODELS


def test_unexportable_model_fails_before_training(unexportable_run) -> None:
    from edgekd.errors import ExportError

    error, rundir = unexportable_run
    assert isinstance(error, ExportError), f"expected ExportError, got {error!r}"
    assert "model 'SortedMLP' cannot be exported to ONNX" in error.what, str(error)
    assert error.fix and ".numpy()" in error.fix
    checkpoints = rundir / "checkpoints"
    assert not (checkpoints / "teacher.pt").exists(), "the teacher was trained before the exportability check"
    assert not any(checkpoints.glob("*.pt"))


def test_unexportable_model_error_names_the_module(unexportable_run) -> None:
    error, _ = unexportable_run
    assert error is not None
    assert "module 'sorter' (NumpySort) is not exportable" in error.what, str(error)
    assert "eager" not in error.what


def test_unexportable_model_error_has_no_escape_codes(unexportable_run) -> None:
    error, _ = unexportable_run
    assert error is not None
    assert "\x1b" not in str(error), repr(str(error))


# --------------------------------------------------------------------------------------
# 16. --help is light
# --------------------------------------------------------------------------------------

def test_cli_import_does_not_load_torch(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "import sys, edgekd.cli; print('torch' in sys.modules)"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_python_m_edgekd_is_the_command_and_its_help_is_light(tmp_path: Path) -> None:
    """`python -m edgekd` (no console script on PATH) runs the command through its entry, without torch."""
    code = ("import runpy, sys; sys.argv = ['edgekd', '--help']\n"
            "try:\n    runpy.run_module('edgekd', run_name='__main__')\n"
            "except SystemExit as exc:\n    print('exit', exc.code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Commands" in proc.stdout and proc.stdout.strip().endswith("exit 0 False"), proc.stdout[-500:]


def test_help_exits_zero(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    # the names in the Commands panel (one "│ name  description │" row each), not words of the descriptions
    commands = re.findall(r"^[│|] (\S+) ", proc.stdout.split("Commands", 1)[-1], re.MULTILINE)
    assert {"run", "demo", "export", "bench", "report"} <= set(commands), proc.stdout
