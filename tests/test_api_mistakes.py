"""Mistakes a caller of the Python API (edgekd.load_recipe, run, distill, export, bench; bench.history; device profiles)
makes: each must raise an EdgeKDError that says what, why and how to fix, never a bare TypeError or
FileNotFoundError from deep inside. Found by an audit with real calls; tiny models, no mocks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import edgekd
from edgekd.errors import (ArtifactError, BenchError, CheckpointError, ExportError, OutputDirError, RecipeError,
                           RegistryError)


@pytest.mark.parametrize("source", [None, 3, True, ["demo"], b"demo", {"demo"}])
def test_a_recipe_of_the_wrong_type_is_refused(source):
    with pytest.raises(RecipeError, match=f"cannot load a recipe from {type(source).__name__}") as err:
        edgekd.load_recipe(source)
    assert "path, a built-in recipe name or a dict" in err.value.why
    with pytest.raises(RecipeError, match="cannot load a recipe from"):
        edgekd.run(source)


def test_an_empty_recipe_name_is_refused_as_such():
    """Path('') is the current folder: it said 'recipe . is a folder'."""
    with pytest.raises(RecipeError, match="the recipe's path or name is empty") as err:
        edgekd.load_recipe("")
    assert "demo" in err.value.fix


def test_yaml_text_given_as_the_recipe_says_so(tmp_path, monkeypatch):
    """It said 'recipe not found: name: x ...', as if the text were a file name."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match="looks like YAML text, not a path") as err:
        edgekd.load_recipe("name: x\nseed: 1\n")
    assert "yaml.safe_load" in err.value.fix
    with pytest.raises(RecipeError, match="recipe not found: mine: v2.yaml"):  # a file name is still one
        edgekd.load_recipe("mine: v2.yaml")


def test_a_recipe_object_is_taken_as_it_is():
    recipe = edgekd.load_recipe({"name": "x"})
    assert edgekd.load_recipe(recipe) is recipe


@pytest.mark.parametrize("device", [None, 3, ["host"]])
def test_a_device_that_is_no_name_is_refused(device, tmp_path):
    """Path(device) raised a bare TypeError, from bench(device=...) and export(devices=[...]) alike."""
    from edgekd.devices.profiles import find_profile

    with pytest.raises(RegistryError, match="a device is a profile name or a profile's path, not") as err:
        find_profile(device)
    assert "host" in err.value.why and "device='host'" in err.value.fix
    with pytest.raises(RegistryError, match="a device is a profile name"):
        edgekd.bench([], device=device)
    with pytest.raises(RegistryError, match="a device is a profile name"):
        edgekd.export(tmp_path / "student.pt", tmp_path / "out", devices=[device])


@pytest.fixture(scope="module")
def bare_onnx(tmp_path_factory):
    """A tiny ONNX model file (no artifact record): enough for the checks before any runner starts."""
    import torch

    path = tmp_path_factory.mktemp("bare") / "tiny.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(path), dynamo=False)
    return path


@pytest.mark.parametrize("kind", [str, Path])
def test_one_artifact_path_not_in_a_list_is_refused(kind, bare_onnx):
    """A string was benched letter by letter: '/ is not an artifact folder'; a Path raised TypeError."""
    with pytest.raises(ArtifactError, match="artifacts must be a list, got one") as err:
        edgekd.bench(kind(bare_onnx))
    assert err.value.fix == f"put it in a list: [{str(bare_onnx)!r}]"


@pytest.mark.parametrize("artifacts, said", [
    (None, "artifacts must be a list, got NoneType"), (3, "artifacts must be a list, got int"),
    ([None], "cannot benchmark NoneType None"), ([{"file": "model.onnx"}], "cannot benchmark dict"),
])
def test_artifacts_of_the_wrong_type_are_refused(artifacts, said):
    with pytest.raises(ArtifactError, match=re.escape(said)) as err:
        edgekd.bench(artifacts)
    assert "artifact folders, artifact.json files" in err.value.why


@pytest.mark.parametrize("field, value, rule", [
    ("rounds", 0, "an integer ≥ 1"), ("rounds", 1.5, "an integer ≥ 1"), ("threads", 0, "an integer ≥ 1"),
    ("batch_size", 0, "an integer ≥ 1"), ("batch_size", "1", "an integer ≥ 1"),
    ("min_seconds", -1.0, "a number ≥ 0"),
    ("max_seconds", 0.0, "a number > 0"), ("cooldown_seconds", -1.0, "a number ≥ 0"),
    ("min_seconds", float("nan"), "a number ≥ 0"), ("warmup_runs", -1, "an integer ≥ 0"),
    *[("dims", dims, "a mapping of dimension names to sizes ≥ 1")
      for dims in ({"length": 0}, {"": 8}, [("length", 8)], {"length": True})],
    *[("eval_samples", count, "an integer ≥ 0 or None") for count in (-1, 2.0, True)],
])
def test_bench_settings_out_of_range_are_refused_before_the_device(field, value, rule, bare_onnx):
    """rounds=1.5 and batch_size='1' raised TypeError, batch_size=0 benched empty inputs, a negative cooldown was
    taken; threads=0 or min_seconds=-1 were refused by the runner as a field of its 'spec'."""
    from dataclasses import replace

    from edgekd.bench.harness import BenchSettings

    with pytest.raises(BenchError, match=re.escape(f"BenchSettings.{field} must be {rule}, got {value!r}")) as err:
        edgekd.bench([bare_onnx], device="no-such-device", settings=replace(BenchSettings(), **{field: value}))
    assert f"set {field}= in BenchSettings" in err.value.fix


def test_a_minimum_time_past_the_maximum_is_refused_before_the_device(bare_onnx):
    """The runner refused it on the device, after the pushes, with a fix naming a field of its own."""
    from edgekd.bench.harness import BenchSettings

    with pytest.raises(BenchError, match=re.escape("BenchSettings.min_seconds (11) exceeds max_seconds (10)")):
        edgekd.bench([bare_onnx], device="no-such-device", settings=BenchSettings(min_seconds=11.0))
    with pytest.raises(RecipeError, match=re.escape("min_seconds (20) exceeds max_seconds (10)")):
        edgekd.load_recipe({"name": "r", "bench": {"min_seconds": 20}})


def test_bench_settings_that_are_no_bench_settings_are_refused():
    with pytest.raises(BenchError, match="settings must be a BenchSettings, got dict"):
        edgekd.bench([], settings={"rounds": 1})


def test_valid_bench_settings_pass_the_check():
    """The check refuses nothing a bench can honour (hypothesis over the fields' valid ranges)."""
    from hypothesis import given, settings as h_settings, strategies as st

    from edgekd.bench.harness import BenchSettings, check_settings

    @h_settings(max_examples=40, deadline=None)
    @given(st.builds(BenchSettings, threads=st.none() | st.integers(1, 64), batch_size=st.integers(1, 64),
                     warmup_runs=st.integers(0, 10**6), warmup_min_seconds=st.floats(0, 1e6),
                     min_runs=st.integers(1, 10**6), min_seconds=st.floats(0, 1e6),
                     max_seconds=st.floats(1e-6, 1e6), memory_runs=st.integers(0, 1000), rounds=st.integers(1, 100),
                     cooldown_seconds=st.floats(0, 1e4) | st.integers(0, 100), max_runs=st.integers(1, 10**7),
                     sustained=st.booleans(),
                     dims=st.dictionaries(st.text(min_size=1, max_size=12), st.integers(1, 4096), max_size=3),
                     eval_samples=st.none() | st.integers(0, 10**6)).filter(lambda s: s.min_seconds <= s.max_seconds))
    def check(s):
        assert check_settings(s) is s

    check()


def _npy(path: Path, array) -> Path:
    import numpy as np

    np.save(path, np.asarray(array))
    return path


def test_bench_inputs_that_are_no_npy_file_are_refused_before_the_device(tmp_path, bare_onnx):
    """A missing file raised FileNotFoundError (from hashing it, the device already open); a text file was
    'pickled (object) data' to the runner. device='no-such-device' shows the check comes first."""
    (tmp_path / "text.npy").write_text("1 2 3 4")
    for given, said in [(tmp_path / "nope.npy", "the inputs file .*nope.npy does not exist"),
                        (tmp_path, "the inputs file .* is a folder"), (3, "the inputs must be a .npy file's path"),
                        (tmp_path / "text.npy", "the inputs file .*text.npy is not a .npy file")]:
        with pytest.raises(BenchError, match=said) as err:
            edgekd.bench([bare_onnx], device="no-such-device", inputs=given)
        assert "numpy.save" in err.value.fix


def test_bench_eval_data_must_be_a_pair_of_matching_npy_files(tmp_path, bare_onnx):
    """One path for the pair was read letter by letter (IsADirectoryError on '/'); a missing file raised
    FileNotFoundError; 3 inputs with 5 labels reached the device and came back as 'check the artifact's
    output shape'."""
    x3, x5, y5 = (_npy(tmp_path / n, [[0.0] * 4] * k) for n, k in (("x3.npy", 3), ("x5.npy", 5), ("y5.npy", 5)))
    for given, said in [(str(x5), "eval_data must be a pair of .npy files"), ((x5,), "eval_data must be a pair"),
                        ((tmp_path / "x.npy", y5), "the eval_data inputs file .*x.npy does not exist"),
                        ((x5, tmp_path / "y.npy"), "the eval_data labels file .*y.npy does not exist"),
                        ((x3, y5), "eval_data holds 3 test inputs but 5 labels")]:
        with pytest.raises(BenchError, match=said):
            edgekd.bench([bare_onnx], device="no-such-device", eval_data=given)
    # labels that are no class indices scored every sample wrong: "device acc 0.00% of 5", exit 0
    for labels, got in ((np.array(["a"] * 5), "<U1 values"), (np.array([0, 1, -1, 2, 3]), "the label -1"),
                        (np.zeros((5, 2), np.int64), "shape (5, 2)"), (np.zeros(5, np.float32), "float32 values")):
        np.save(tmp_path / "bad_y.npy", labels)
        with pytest.raises(BenchError, match=re.escape(f"holds no class indices ({got})")):
            edgekd.bench([bare_onnx], device="no-such-device", eval_data=(x5, tmp_path / "bad_y.npy"))


@pytest.mark.parametrize("kwargs, error, said", [
    ({"checkpoint": None}, CheckpointError, "checkpoint must be a path, got NoneType"),
    ({"checkpoint": ["student.pt"]}, CheckpointError, "checkpoint must be a path, got list"),
    ({"output_dir": None}, OutputDirError, "output_dir must be a path, got NoneType"),
    ({"formats": "onnx"}, ExportError, "formats must be a list, got str 'onnx'"),
    ({"formats": 3}, ExportError, "formats must be a list, got int 3"),
    ({"precisions": "fp32"}, ExportError, "precisions must be a list, got str 'fp32'"),
    ({"devices": "host"}, ExportError, "devices must be a list, got str 'host'"),
    ({"opset": -1}, ExportError, "opset must be an integer from 17 to 23, got -1"),
    ({"opset": "18"}, ExportError, "opset must be an integer from 17 to 23, got '18'"),
    ({"min_agreement": 2.0}, ExportError, "min_agreement must be a fraction from 0 to 1, got 2.0"),
    ({"min_agreement_int4": -0.5}, ExportError, "min_agreement_int4 must be a fraction from 0 to 1"),
    ({"calibration_samples": -5}, ExportError, "calibration_samples must be an integer ≥ 1, got -5"),
    ({"calibration_samples": 0}, ExportError, "calibration_samples must be an integer ≥ 1, got 0"),
    # an unknown precision was refused after the output folder and its lock were made; None was a TypeError;
    # a name given twice was exported twice; an empty list exported the defaults
    ({"precisions": ["fp16"]}, ExportError, "unknown precision 'fp16'"),
    ({"precisions": [None]}, ExportError, "unknown precision None"),
    ({"precisions": ["fp32", "int8_dynamic", "fp32"]}, ExportError, "precisions names fp32 more than once"),
    ({"formats": ["onnx", "onnx"]}, ExportError, "formats names onnx more than once"),
    ({"formats": []}, ExportError, "formats is empty"),
])
def test_export_arguments_are_checked_before_the_checkpoint_is_read(kwargs, error, said, tmp_path):
    """Path(None) raised TypeError; formats='onnx' said "unknown export format 'o'" (devices='host': "unknown
    device 'h'"); opset '18' was blamed on the model's modules; calibration_samples=-5 silently dropped 5 rows and
    min_agreement=2 failed every artifact's parity after the whole export."""
    args = {"checkpoint": tmp_path / "student.pt", "output_dir": tmp_path / "out", **kwargs}
    with pytest.raises(error, match=re.escape(said)) as err:
        edgekd.export(args.pop("checkpoint"), args.pop("output_dir"), **args)
    assert err.value.fix
    if isinstance(kwargs.get("formats", kwargs.get("precisions", kwargs.get("devices"))), str):
        assert err.value.fix == f"give {next(iter(kwargs))}=[{next(iter(kwargs.values()))!r}]"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, error, said", [
    ({"force": "export"}, RecipeError, "force must be a set of stage names, got the string 'export'"),
    ({"force": 3}, RecipeError, "force must be a set of stage names, got int 3"),
    ({"force": [["export"]]}, RecipeError, "force must be a set of stage names, got list"),
    ({"output_dir": 3}, OutputDirError, "output_dir must be a folder's path, got int 3"),
])
def test_run_arguments_of_the_wrong_type_are_refused(kwargs, error, said, tmp_path, monkeypatch):
    """force='export' said 'unknown stage(s) to force: e, o, p, r, t, x'; force=3 and output_dir=3 raised TypeError."""
    monkeypatch.chdir(tmp_path)  # nothing may be written; if it were, it would be here
    with pytest.raises(error, match=re.escape(said)) as err:
        edgekd.run({"name": "x"}, **kwargs)
    assert "e.g." in err.value.fix or "force={'export'}" in err.value.fix
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("call", ["sessions", "compare", "bench"])
def test_a_history_that_is_no_path_is_refused(call, bare_onnx):
    """sessions(None), compare(path=None) and bench(history=3) raised a bare TypeError from Path(), the bench's
    only after it had measured every artifact."""
    from edgekd.bench import history

    with pytest.raises(BenchError, match="the bench history must be a file's path, got") as err:
        if call == "sessions":
            history.sessions(None)
        elif call == "compare":
            history.compare(path=None)
        else:
            edgekd.bench([bare_onnx], device="no-such-device", history=3)  # said before a device is opened
    assert "history.sqlite" in err.value.fix


def test_an_artifact_record_without_inputs_is_refused_as_damaged(tmp_path, bare_onnx):
    """The device said 'input names do not match the model (missing x); fix: use the model's input names as keys
    of 'inputs'', and with inputs= given the bench raised IndexError."""
    import json
    import shutil

    import numpy as np

    from edgekd.bench.harness import resolve_artifact
    from edgekd.export.artifact import Artifact

    folder = tmp_path / "model-onnx-fp32"
    folder.mkdir()
    shutil.copy(bare_onnx, folder / "model.onnx")
    record = resolve_artifact(folder / "model.onnx").model_dump(mode="json", by_alias=True)
    record.update(name="model-onnx-fp32", inputs=[])
    (folder / "artifact.json").write_text(json.dumps(record))
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    for inputs in (None, tmp_path / "x.npy"):
        with pytest.raises(ArtifactError, match="the record of model-onnx-fp32 lists no model inputs") as err:
            edgekd.bench([folder], device="no-such-device", inputs=inputs)
        assert "re-export the artifact" in err.value.fix and str(folder / "model.onnx") in err.value.fix
    with pytest.raises(ArtifactError, match="lists no model inputs"):
        edgekd.bench([Artifact.load(folder)], device="no-such-device")


def test_a_folder_given_as_the_device_says_so(tmp_path):
    """It said "unknown device '/some/folder'", as if a name were misspelt."""
    from edgekd.devices.profiles import find_profile

    with pytest.raises(RegistryError, match="is a folder, not a device profile") as err:
        find_profile(str(tmp_path))
    assert "known devices" in err.value.fix and "host" in err.value.fix
    (tmp_path / "pi.yaml").write_text("name: pi\nkind: local\n")
    with pytest.raises(RegistryError, match="is a folder, not a device profile") as err:
        find_profile(tmp_path)
    assert "pi" in err.value.why and str(tmp_path / "pi.yaml") in err.value.fix


def test_a_reporter_without_task_and_note_is_refused_before_any_work(tmp_path):
    """reporter="rich" failed deep inside a run with an AttributeError."""
    from edgekd.errors import EdgeKDError

    for call in (lambda: edgekd.run({"name": "x"}, reporter="rich", output_dir=tmp_path),
                 lambda: edgekd.bench([], reporter="rich"),
                 lambda: edgekd.export(tmp_path / "student.pt", tmp_path / "out", reporter="rich"),
                 lambda: edgekd.distill({"name": "x"}, reporter="rich")):
        with pytest.raises(EdgeKDError, match="reporter must have task\\(\\) and note\\(\\) methods, got str") as err:
            call()
        assert "leave reporter out" in err.value.fix
    assert not (tmp_path / "x").exists() and not (tmp_path / "out").exists()  # nothing was started


def test_distill_refuses_a_wrong_recipe_or_teacher_before_any_work():
    with pytest.raises(RecipeError, match="cannot load a recipe from int"):
        edgekd.distill(3)
    with pytest.raises(RecipeError, match="teacher must be a torch.nn.Module, got str") as err:
        edgekd.distill({"name": "x"}, teacher="teacher.pt")
    assert "leave teacher out" in err.value.fix


_DIGITS = {"name": "x", "data": {"name": "digits"}, "student": {"model": {"family": "mlp", "params": {"width": 16}}},
           "distill": {"train": {"epochs": 1}}}


def _pair_teacher():
    """A teacher module that returns a tuple (its logits and its input), not one tensor of logits."""
    from torch import nn

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            return self.head(x), x

    return Pair()


@pytest.mark.parametrize("make, said", [
    (lambda nn: nn.Linear(3, 3), ["the teacher cannot take the recipe's data (digits: samples of shape [64])",
                                  "mat1 and mat2 shapes cannot be multiplied"]),
    (lambda nn: nn.Sequential(nn.Flatten(), nn.Linear(64, 3)),
     ["the teacher's output on 2 samples has shape [2, 3], not logits [2, 10]", "digits: 10 classes"]),
    (lambda nn: _pair_teacher(), ["the teacher's output on 2 samples is a tuple, not logits [2, 10]"]),
], ids=["input", "classes", "tuple"])
def test_distill_refuses_a_teacher_that_does_not_fit_the_data_before_training(make, said):
    """A teacher of the wrong shape was a raw torch RuntimeError from inside training (`mat1 and mat2 shapes cannot
    be multiplied (512x64 and 3x3)`), though the arguments are promised to be checked before any work."""
    from torch import nn

    from edgekd.progress import SilentReporter

    class Tasks(SilentReporter):
        started: list[str] = []

        def task(self, description, total):
            self.started.append(description)
            return super().task(description, total)

    teacher, reporter = make(nn), Tasks()
    with pytest.raises(RecipeError) as err:
        edgekd.distill(_DIGITS, teacher=teacher, reporter=reporter)
    for words in said:
        assert words in str(err.value), str(err.value)
    assert "leave teacher out" in err.value.fix and not reporter.started  # nothing was trained
    assert teacher.training  # the check's eval mode is not left behind


def test_distill_gives_the_teacher_back_in_the_mode_it_came_in():
    """README: in-process calls leave things as they found them. A teacher passed in train mode came back in eval
    mode (distillation evaluates it); a part the caller froze in eval mode stays so, and its statistics are kept."""
    import torch
    from torch import nn

    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    teacher[2].eval()  # a frozen BatchNorm: the caller's choice, module by module
    before = {name: module.training for name, module in teacher.named_modules()}
    statistics = teacher[2].running_mean.clone()
    outcome = edgekd.distill(_DIGITS, teacher=teacher)
    assert outcome.steps > 0
    assert {name: module.training for name, module in teacher.named_modules()} == before
    assert before[""] and not before["2"]
    assert torch.equal(teacher[2].running_mean, statistics)


def test_distill_refuses_a_text_recipe_by_its_task():
    """edgekd.distill runs the image stages: a text recipe was "unknown model family 'text_transformer'" (its student
    looked up among the image families), which says nothing of why."""
    recipe = Path(__file__).parent / "recipes" / "text_tiny.yaml"
    with pytest.raises(RecipeError, match=r"edgekd.distill takes image recipes; text-tiny is a text recipe") as err:
        edgekd.distill(recipe)
    assert "edgekd.run(recipe)" in err.value.fix and "model family" not in str(err.value)


@pytest.mark.parametrize("distill, why", [
    ({"strategy": "self"}, "the student's own earlier generations"),
    ({"strategy": "mutual"}, "peers teach each other"),
])
def test_distill_refuses_a_teacher_its_strategy_would_ignore(distill, why):
    """A teacher passed with a strategy that learns from none was ignored in silence: the caller believed the
    student was distilled from it."""
    from torch import nn

    recipe = {**_DIGITS, "distill": {**_DIGITS["distill"], **distill}}
    with pytest.raises(RecipeError) as err:
        edgekd.distill(recipe, teacher=nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    assert err.value.what == f"teacher= is not used by distill.strategy: {distill['strategy']}"
    assert why in err.value.why and "leave teacher out" in err.value.fix
