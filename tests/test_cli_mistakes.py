"""User mistakes an audit of the CLI found reaching an internal error, a silent exit 0 or a misleading message."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from edgekd.bench import history
from edgekd.errors import BenchError, RecipeError
from edgekd.recipe import load_recipe

from test_history import _result

CLI = [sys.executable, "-m", "edgekd.cli"]
UNWRITABLE = "/proc/edgekd-cannot-write-here"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


def _user_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    said = " ".join(proc.stderr.split())  # rich wraps long lines at the terminal's width
    for word in words:
        assert " ".join(word.split()) in said, (word, proc.stderr)


def test_an_empty_recipe_file_is_refused(tmp_path, monkeypatch):
    """The fix names the demo recipe's file as installed: `edgekd/recipes/demo.yaml` exists only next to the
    repository, not for a user of the wheel in a folder of their own."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("")
    with pytest.raises(RecipeError, match="the recipe is empty") as err:
        load_recipe(tmp_path / "r.yaml")
    start = Path(err.value.fix.rsplit(", ", 1)[-1])
    assert start.is_absolute() and start.is_file() and start.name == "demo.yaml", err.value.fix


def test_a_recipe_without_export_formats_is_refused():
    with pytest.raises(RecipeError, match="export.formats"):
        load_recipe({"name": "x", "export": {"formats": []}})


@pytest.mark.parametrize("section, model", [
    ("teacher", {"family": "cnn", "params": {"width": True}}),  # YAML true: an int to Python
    ("student", {"family": "mlp", "params": {"depth": 0}}),
])
def test_model_sizes_are_checked_when_the_recipe_loads(section, model):
    key = next(iter(model["params"]))
    with pytest.raises(RecipeError, match=rf"{section}\.model\.params\.{key}: must be a positive integer"):
        load_recipe({"name": "x", section: {"model": model}})
    from edgekd.distill.api import load_splits, new_model

    unchecked = load_recipe({"name": "x", section: {"model": model}}, check_names=False)  # the builder says it too
    with pytest.raises(RecipeError, match=rf"{section}\.model\.params: .*{key} must be a positive integer"):
        new_model(unchecked, load_splits(unchecked), section)


def test_text_student_sizes_are_checked_when_the_recipe_loads():
    with pytest.raises(RecipeError, match=r"student\.model\.params\.layers: must be a positive integer"):
        load_recipe({"name": "x", "task": "text", "student": {"model": {"family": "text_transformer",
                                                                          "params": {"layers": 0}}}})
    with pytest.raises(RecipeError, match=r"student\.model\.params: 'text_transformer' cannot be built"):
        load_recipe({"name": "x", "task": "text", "student": {"model": {"family": "text_transformer",
                                                                          "params": {"hidden": 32, "heads": 3}}}})


def test_a_missing_teacher_checkpoint_fails_when_the_recipe_loads(tmp_path):
    with pytest.raises(RecipeError, match=r"teacher\.checkpoint: .*nothere\.pt does not exist"):
        load_recipe({"name": "x", "teacher": {"checkpoint": str(tmp_path / "nothere.pt")}})
    with pytest.raises(RecipeError, match="is a folder"):
        load_recipe({"name": "x", "teacher": {"checkpoint": str(tmp_path)}})


@pytest.mark.parametrize("params", [{"hidden": 32, "heads": 3}, {"embed_dim": -16}])
def test_text_student_sizes_torch_cannot_build_name_the_field(params):
    from edgekd.text.stages import build_student

    data = SimpleNamespace(student_token_rows=None, vocab_size=50, num_classes=3, pad_id=0, device_length=16)
    with pytest.raises(RecipeError, match=r"student\.model\.params: text_transformer cannot be built"):
        build_student(data, "text_transformer", params)


def test_compare_refuses_a_session_with_itself_and_names_the_devices_it_has(tmp_path):
    db = tmp_path / "h.sqlite"
    session = history.record([_result("m", 10.0, 0, [10.0, 10.1])], db)
    with pytest.raises(BenchError, match="both sessions are"):
        history.compare(session, session, path=db)
    with pytest.raises(BenchError, match="no bench session on device 'nokia'") as err:
        history.compare(path=db, device="nokia")
    assert "host" in err.value.why


def test_conflicting_bench_options_are_refused_before_any_work(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read: the options are checked first")
    _user_error(_cli("bench", str(model), "--rounds", "2", "--sessions", "1", cwd=tmp_path),
                "--rounds and --sessions cannot be used together")
    _user_error(_cli("bench", str(model), "--check-threads", "2", "--sustained", "1", cwd=tmp_path),
                "--check-threads and --sustained cannot be used together")


def test_unwritable_output_folders_fail_first_with_the_option_to_change(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    _user_error(_cli("bench", str(model), "--results-dir", UNWRITABLE, cwd=tmp_path), "cannot write to",
                "--results-dir")
    _user_error(_cli("export", str(model), "--output-dir", UNWRITABLE, cwd=tmp_path), "cannot write to",
                "--output-dir")


def test_export_parity_threshold_must_be_a_share():
    proc = subprocess.run([*CLI, "export", "x.pt", "--min-agreement", "-1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "min-agreement" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("content, why", [
    ("{not json", "it is not valid JSON (line 1, column 2: Expecting property name"),
    ("", "it is not valid JSON (line 1, column 1: Expecting value)"),
    ("[]", "it holds a JSON list, not an object"),
    ("{}", "its `rows` is not a list of objects"),
    ('{"rows": 5}', "its `rows` is not a list of objects"),
    ('{"rows": [{"name": "x"}]}', "a row has no `size_bytes` field"),
    ('{"rows": [{"name": "x", "size_bytes": "big"}]}', "a field has the wrong type"),
    ('{"rows": [], "machine": 5}', "a field has the wrong type"),
    ('{"rows": [{"name": "x", "size_bytes": 1, "p50_us": 5.0, "ci95_p50": [4.0]}]}', "a field has the wrong type"),
    ('{"rows": [], "findings": 5}', "its `findings` is not a list"),
    ('{"schema": "edgekd.other/1", "rows": []}', "its schema is 'edgekd.other/1', not 'edgekd.summary/1'"),
])
def test_an_unreadable_summary_is_a_clear_error(tmp_path, content, why):
    """The why says what is wrong with the file, not a Python exception ("TypeError: 'int' object is not
    iterable" it said before)."""
    (tmp_path / "run" / "results").mkdir(parents=True)
    (tmp_path / "run" / "results" / "summary.json").write_text(content)
    proc = _cli("report", str(tmp_path / "run"), cwd=tmp_path)
    _user_error(proc, "is unreadable", "--force report", why)
    assert not re.search(r"[A-Z]\w*Error\b|object has no attribute|is not iterable", proc.stderr), proc.stderr


def test_a_summary_of_a_newer_edgekd_says_to_read_it_with_that_edgekd(tmp_path):
    """It advised `edgekd run RECIPE --force report`, which rewrites the newer run's report with this older
    edgekd (whose resume the newer manifest refuses anyway); the fix is the newer edgekd."""
    (tmp_path / "run" / "results").mkdir(parents=True)
    (tmp_path / "run" / "results" / "summary.json").write_text('{"schema": "edgekd.summary/2", "rows": []}')
    proc = _cli("report", str(tmp_path / "run"), cwd=tmp_path)
    _user_error(proc, "was written by a newer edgekd", "written by a newer edgekd (schema edgekd.summary/2; "
                "this edgekd reads edgekd.summary/1)", "fix: read it with the edgekd that wrote it, or a newer one "
                "(pip install -U edgekd)")
    assert "--force report" not in proc.stderr, proc.stderr


def test_report_of_a_path_near_a_run_names_the_run(tmp_path):
    """`edgekd report demo` after `edgekd demo`, `edgekd report export` or the HTML file itself: each said only
    "run the recipe first", though the run was finished and right there."""
    for name in ("demo", "kd_hint"):
        (tmp_path / "export" / name / "results").mkdir(parents=True)
        (tmp_path / "export" / name / "results" / "summary.json").write_text('{"rows": []}')
    (tmp_path / "export" / "demo" / "report").mkdir()
    (tmp_path / "export" / "demo" / "report" / "index.html").write_text("<html></html>")
    for given, fix in (("demo", "give the run's folder: edgekd report export/demo"),
                       ("export/demo/report/index.html", "give the run's folder: edgekd report export/demo"),
                       ("export", "give one of the runs in it: export/demo, export/kd_hint")):
        _user_error(_cli("report", given, cwd=tmp_path), f"no report in {given}", fix)
    _user_error(_cli("report", "nosuch", cwd=tmp_path), "run the recipe first")
    assert _cli("report", "export/demo", cwd=tmp_path).returncode == 0


def test_bench_of_a_folder_of_artifacts_names_the_artifacts(tmp_path):
    """`edgekd bench export/demo` or `export/demo/artifacts` (the folder, not the folders in it) said only "give a
    folder under <run>/artifacts/", unlike `edgekd export export/demo`, which names the checkpoints in it."""
    for name in ("student-onnx-fp32", "teacher-onnx-fp32"):
        (tmp_path / "export" / "demo" / "artifacts" / name).mkdir(parents=True)
        (tmp_path / "export" / "demo" / "artifacts" / name / "artifact.json").write_text("{}")
    for given in ("export/demo", "export/demo/artifacts"):
        _user_error(_cli("bench", given, "--results-dir", "res", cwd=tmp_path), f"{given} is not an artifact folder",
                    "export/demo/artifacts holds 2 artifact folders: student-onnx-fp32, teacher-onnx-fp32",
                    "give the artifact folders themselves: export/demo/artifacts/* names them all")
    _user_error(_cli("bench", "export", "--results-dir", "res", cwd=tmp_path), "give a folder under <run>/artifacts/")
    assert not (tmp_path / "res").exists()


def test_a_batch_size_a_fixed_batch_model_cannot_take_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "fixed", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "fixed.onnx")
    _user_error(_cli("bench", str(tmp_path / "fixed.onnx"), "--batch-size", "4", "--rounds", "1",
                     "--results-dir", str(tmp_path / "res"), "--history", str(tmp_path / "h.sqlite"), cwd=tmp_path),
                "has a fixed batch of 1", "--batch-size 1")


def test_bench_scores_a_model_file_on_test_data_given_on_the_command_line(tmp_path):
    """--eval-inputs/--eval-labels: a model exported elsewhere gets its accuracy on the device (of the first
    --eval-samples); one without the other, or labels for other samples, are refused."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "m.onnx")
    inputs = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]  # argmax: 0 1 2 3 0 1
    np.save(tmp_path / "x.npy", inputs)
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 3, 3, 3]))
    base = ["bench", str(tmp_path / "m.onnx"), "--rounds", "1", "--min-seconds", "0.05",
            "--results-dir", str(tmp_path / "res"), "--history", str(tmp_path / "h.sqlite")]
    proc = _cli(*base, "--eval-inputs", str(tmp_path / "x.npy"), "--eval-labels", str(tmp_path / "y.npy"),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "66.67% of 6" in proc.stdout, proc.stdout
    proc = _cli(*base, "--eval-inputs", str(tmp_path / "x.npy"), "--eval-labels", str(tmp_path / "y.npy"),
                "--eval-samples", "4", cwd=tmp_path)
    assert proc.returncode == 0 and "100.00% of 4" in proc.stdout, (proc.stdout, proc.stderr)
    _user_error(_cli(*base, "--eval-inputs", str(tmp_path / "x.npy"), cwd=tmp_path),
                "--eval-inputs needs --eval-labels", "give both .npy files")
    np.save(tmp_path / "y.npy", np.zeros(5, dtype=np.int64))
    _user_error(_cli(*base, "--eval-inputs", str(tmp_path / "x.npy"), "--eval-labels", str(tmp_path / "y.npy"),
                     cwd=tmp_path), "eval_data holds 6 test inputs but 5 labels")


def test_compare_says_which_results_it_could_not_pair_and_why(tmp_path):
    db = tmp_path / "h.sqlite"
    a = history.record([_result("m", 10.0, 0, [10.0, 10.1]), _result("n", 5.0, 1, [5.0, 5.1])], db)
    b = history.record([_result("m", 4.0, 2, [4.0, 4.1], threads=4), _result("n", 5.0, 3, [5.0, 5.1])], db)
    proc = _cli("compare", a, b, "--history", str(db), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "faster" not in proc.stdout  # 4 threads against 1 is no speed-up of the model
    assert "n (onnx fp32)" in proc.stdout and "within noise" in proc.stdout
    assert "not compared: m: threads 1 → 4" in proc.stdout
    assert "m (onnx" not in proc.stdout  # the 1-thread and 4-thread results are not in the table

    c = history.record([_result("m", 4.0, 4, [4.0, 4.1], threads=4)], db)
    _user_error(_cli("compare", a, c, "--history", str(db), cwd=tmp_path), "share no comparable result",
                "m: threads 1 → 4")


def test_history_of_a_device_without_sessions_says_so(tmp_path):
    db = tmp_path / "h.sqlite"
    history.record([_result("m", 10.0, 0, [10.0, 10.1])], db)
    proc = _cli("history", "--device", "nokia", "--history", str(db), cwd=tmp_path)
    assert proc.returncode == 0 and "no bench sessions on device nokia" in proc.stdout, proc.stdout
    assert "host" in _cli("history", "--history", str(db), cwd=tmp_path).stdout


def test_a_text_recipe_without_the_hf_extra_fails_at_load(tmp_path):
    """As on an install without [hf]: `transformers` cannot be found. The run stops before reading any text."""
    code = (
        "import sys\n"
        "class NoTransformers:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'transformers':\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, NoTransformers())\n"
        "sys.argv = ['edgekd', 'run', 'minilm', '--output-dir', sys.argv[1]]\n"
        "from edgekd.cli import main\n"
        "main()\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
    _user_error(proc, "needs the optional extra [hf]", "pip install 'edgekd[hf]'")
    assert not (tmp_path / "out").exists()


def test_teacher_hf_naming_a_file_says_it_wants_the_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RecipeError, match="is a file") as err:
        load_recipe({"name": "x", "task": "text", "teacher": {"hf": str(tmp_path / "config.json")}})
    assert "config.json" in err.value.why


@pytest.mark.parametrize("record, problem", [("[]", "the record: Input should be"), ('{"name": "x"}', "Field required")])
def test_a_corrupt_artifact_record_names_its_first_problem(tmp_path, record, problem):
    from edgekd.errors import ArtifactError
    from edgekd.export.artifact import Artifact

    (tmp_path / "artifact.json").write_text(record)
    with pytest.raises(ArtifactError, match="corrupt artifact record") as err:
        Artifact.load(tmp_path)
    assert problem in err.value.why and "validation error for" not in err.value.why, err.value.why


_RECORD = {"name": "m", "role": "student", "format": "onnx", "precision": "fp32", "file": "model.onnx",
           "size_bytes": 1, "sha256": "0" * 64, "inputs": [{"name": "x", "shape": ["batch", 64], "dtype": "float32"}]}


@pytest.mark.parametrize("edit, problem", [
    ({"format": "tflite"}, "file: must be a .tflite file, as the record's format is tflite, got 'model.onnx'"),
    ({"inputs": [{"name": "x", "shape": "wide"}]}, "inputs: each input must have a `name` and a `shape`"),
    ({"inputs": [{"shape": [1, 64]}]}, "inputs: each input must have a `name`"),
    # an edited precision ("FP32") made the teacher unknown to the report: no speed-ups, silently
    ({"precision": "FP32"}, "precision: Input should be 'fp32'"),
])
def test_an_artifact_record_that_contradicts_itself_is_corrupt(tmp_path, edit, problem):
    """A .onnx file recorded as tflite reached the device's LiteRT as "ValueError: The model is not a valid
    Flatbuffer buffer"; a shape "wide" made inputs of shape [1, 1, 1, 1]."""
    from edgekd.errors import ArtifactError
    from edgekd.export.artifact import Artifact

    (tmp_path / "artifact.json").write_text(json.dumps(_RECORD))
    Artifact.load(tmp_path)  # the unedited record is fine
    (tmp_path / "artifact.json").write_text(json.dumps({**_RECORD, **edit}))
    with pytest.raises(ArtifactError, match="corrupt artifact record") as err:
        Artifact.load(tmp_path)
    assert problem in err.value.why and "Value error" not in err.value.why, err.value.why


@pytest.mark.parametrize("schema, problem", [
    ("edgekd.artifact/2", "written by a newer edgekd (schema edgekd.artifact/2; this edgekd reads edgekd.artifact/1)"),
    ("edgekd.bench/1", "its schema is 'edgekd.bench/1', not 'edgekd.artifact/1'"),
])
def test_an_artifact_record_of_another_version_or_kind_is_refused(tmp_path, schema, problem):
    """Records of a newer version were read as this version's: a field that changed meaning would have given
    wrong results without a word."""
    from edgekd.errors import ArtifactError
    from edgekd.export.artifact import Artifact

    (tmp_path / "artifact.json").write_text(json.dumps({**_RECORD, "schema": "edgekd.artifact/1"}))
    Artifact.load(tmp_path)  # this version's own schema is read
    (tmp_path / "artifact.json").write_text(json.dumps({**_RECORD, "schema": schema}))
    with pytest.raises(ArtifactError, match="cannot read the artifact record") as err:
        Artifact.load(tmp_path)
    assert problem in err.value.why, err.value.why


def test_a_bench_result_of_a_newer_version_is_refused(tmp_path):
    from edgekd.bench.result import BenchResult

    path = _result("m", 10.0, 0, [10.0]).save(tmp_path / "bench-m.json")
    assert BenchResult.load(path).artifact["name"] == "m"
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema": "edgekd.bench/7"}))
    with pytest.raises(BenchError, match="cannot read bench result") as err:
        BenchResult.load(path)
    assert "written by a newer edgekd" in err.value.why and "pip install -U edgekd" in err.value.fix


def test_weights_past_protobufs_limit_are_refused_before_export():
    import torch

    from edgekd.errors import ExportError
    from edgekd.export.onnx import check_fits_one_file

    check_fits_one_file(torch.nn.Linear(8, 8))
    huge = torch.nn.Linear(32768, 16384, bias=False, device="meta")  # 2 GiB of float32, never allocated
    with pytest.raises(ExportError, match="2.0 GiB of weights"):
        check_fits_one_file(huge)


def test_a_loss_parameter_the_loss_does_not_take_fails_at_load():
    with pytest.raises(RecipeError, match=r"distill\.loss\.params\.betta: the dkd loss has no parameter") as err:
        load_recipe({"name": "x", "distill": {"loss": {"name": "dkd", "params": {"betta": 2.0}}}})
    assert "did you mean beta" in err.value.fix
    with pytest.raises(RecipeError, match=r"distill\.features\.0\.params\.q: the attention loss"):
        load_recipe({"name": "x", "distill": {"features": [{"loss": "attention", "student": "a", "teacher": "b",
                                                              "params": {"q": 2}}]}})
    load_recipe({"name": "x", "distill": {"loss": {"name": "dkd", "params": {"beta": 2.0}}}})


@pytest.mark.parametrize("loss, key, fix", [
    ({"name": "dkd", "alpha": 0.25, "params": {"beta": 8.0}}, "alpha", "move it to distill.loss.params.alpha"),
    ({"name": "ce", "alpha": 0.5}, "alpha", "remove distill.loss.alpha"),
    ({"name": "ce", "temperature": 2.0}, "temperature", "remove distill.loss.temperature"),
])
def test_a_loss_field_the_loss_does_not_read_fails_at_load(loss, key, fix):
    """dkd's α is `params.alpha`: `loss.alpha` beside `name: dkd` was accepted and DKD trained with α = 1."""
    with pytest.raises(RecipeError, match=rf"distill\.loss\.{key}: the {loss['name']} loss does not read it") as err:
        load_recipe({"name": "x", "distill": {"loss": loss}})
    assert fix in err.value.fix
    load_recipe({"name": "x", "distill": {"loss": {"name": "kd", "alpha": 0.5, "temperature": 2.0}}})


def test_text_recipes_refuse_precisions_that_calibrate_on_float_inputs():
    with pytest.raises(RecipeError, match=r"export\.targets\.student: int8_static is not available for text"):
        load_recipe({"name": "x", "task": "text", "export": {"targets": {"student": ["fp32", "int8_static"]}}})


def test_two_artifacts_of_one_name_in_one_bench_are_refused(tmp_path):
    """model.onnx from two folders: one result file would hold the later's result over the earlier's, and the
    history two rows `edgekd compare` could not tell apart. Refused before anything is measured."""
    import onnx
    from onnx import TensorProto, helper

    for folder, op in (("a", "Identity"), ("b", "Relu")):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
        graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], folder, [x], [y])
        (tmp_path / folder).mkdir()
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        onnx.save(model, tmp_path / folder / "model.onnx")
    options = ["--rounds", "1", "--min-seconds", "0", "--results-dir", str(tmp_path / "res"),
               "--history", str(tmp_path / "h.sqlite")]
    _user_error(_cli("bench", str(tmp_path / "a" / "model.onnx"), str(tmp_path / "b" / "model.onnx"), *options,
                     cwd=tmp_path), "two artifacts are named 'model'", str(tmp_path / "b" / "model.onnx"),
                "separate calls")
    _user_error(_cli("bench", str(tmp_path / "a" / "model.onnx"), str(tmp_path / "a" / "model.onnx"), *options,
                     cwd=tmp_path), "the same model twice")
    assert not (tmp_path / "h.sqlite").exists() and list((tmp_path / "res").glob("*.json")) == []


def test_one_model_in_two_runtimes_gets_a_result_each(tmp_path):
    """model.onnx and model.tflite (one model, two runtimes: the usual comparison) were both named 'model', so
    the TFLite result overwrote the ONNX one's file and the history could not tell them apart; they are named
    after their format, and the results stay apart."""
    import edgekd
    from edgekd.bench.harness import BenchSettings
    from edgekd.bench.result import BenchResult
    from edgekd.export.formats import FORMATS, ExportOptions

    paths = []
    for fmt in ("onnx", "tflite"):
        backend = FORMATS[fmt]()
        paths.append(tmp_path / f"model{backend.suffix}")
        backend.write_floor(paths[-1], (8,), ExportOptions())
    fast = BenchSettings(warmup_runs=2, min_runs=5, min_seconds=0.0, rounds=1)
    results = edgekd.bench(paths, settings=fast, results_dir=tmp_path / "res", history=tmp_path / "h.sqlite")
    assert [r.artifact["name"] for r in results] == ["model-onnx", "model-tflite"]
    saved = {BenchResult.load(p).artifact["format"] for p in (tmp_path / "res").glob("bench-*.json")}
    assert saved == {"onnx", "tflite"}


def test_compare_shows_the_round_spread_as_the_bench_table_does(tmp_path):
    """Round p50s 10 and 13 µs: the bench table shows them as ±15% (half their range), compare showed "30%"
    (largest / smallest − 1): two numbers for one spread, the second read as twice the noise."""
    from rich.console import Console

    from edgekd.console import bench_table

    db = tmp_path / "h.sqlite"
    before = _result("m", 10.0, 0, [10.0, 13.0])
    a = history.record([before], db)
    b = history.record([_result("m", 11.0, 1, [11.0, 11.2])], db)
    proc = _cli("compare", a, b, "--history", str(db), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (row,) = [line for line in proc.stdout.splitlines() if "m (onnx fp32)" in line]
    shown = Console(width=200, record=True)
    shown.print(bench_table([before]))
    (bench_row,) = [line for line in shown.export_text().splitlines() if "10.00–13.00" in line]
    assert "(±15%)" in bench_row and " ±15% " in row and "30%" not in row, (bench_row, row)
    assert "round p50 spread" in proc.stdout  # the bench table's name for it


def test_compare_and_history_name_the_run_each_result_came_from(tmp_path):
    """`compare` flagged "(file changed)" without a word of which run made either file; `history` named no run."""
    from test_history import bench_two_runs

    db, (first, second, no_run) = bench_two_runs(tmp_path)
    for a, b, runs in ((first, second, "run r1 → run r2"), (second, no_run, "run r2 → no run recorded")):
        proc = _cli("compare", a, b, "--history", str(db), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert f"file changed: floor-onnx-fp32 (onnx fp32): {runs} ({a} → {b})" in proc.stdout.splitlines(), \
            proc.stdout
    proc = _cli("history", "--history", str(db), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cells = [[cell.strip() for cell in line.strip(" │").split("│")] for line in proc.stdout.splitlines()]
    runs = {row[0]: row[-1] for row in cells if row[0] in (first, second, no_run)}
    assert runs == {first: "r1", second: "r2", no_run: "–"}, proc.stdout


def test_compare_gives_no_verdict_on_rounds_a_coarse_clock_cannot_tell_apart(tmp_path):
    """A native tool's whole-µs p50s: 3, 3, 3 µs then 4, 4, 4 µs. No spread is not no noise."""
    db = tmp_path / "h.sqlite"
    a = history.record([_result("m", 3.0, 0, [3.0, 3.0, 3.0])], db)
    b = history.record([_result("m", 4.0, 1, [4.0, 4.0, 4.0])], db)
    proc = _cli("compare", a, b, "--history", str(db), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (row,) = [line for line in proc.stdout.splitlines() if "m (onnx fp32)" in line]
    assert "+33.3%" in row and "slower" not in row and "no verdict: rounds without spread" in proc.stdout, row


@pytest.mark.parametrize("content, what, why", [
    ("name: b\nkind: [local\n", "YAML syntax error at line 3, column 1: expected ',' or ']'",
     "not valid YAML"),
    ("- name: b\n", "a profile must be a YAML mapping, got list", "`field: value` lines"),
    ("", "the file is empty", "`field: value` lines"),
    ("local\n", "a profile must be a YAML mapping, got str", "`field: value` lines"),
])
def test_a_malformed_device_profile_says_where_and_what(tmp_path, content, what, why):
    """Before: 'why: while parsing a flow sequence' (no line), and "`kind:` must be one of ..., got [{'name':
    'b'}]" for a profile that was a list."""
    from edgekd.devices.base import DeviceError
    from edgekd.devices.profiles import load_profile

    path = tmp_path / "b.yaml"
    path.write_text(content)
    with pytest.raises(DeviceError) as err:
        load_profile(path)
    assert what in err.value.what and why in err.value.why, err.value.to_dict()
    if content.startswith("name"):
        assert "(while parsing a flow sequence that starts at line 2, column 7)" in err.value.what


def test_a_device_profile_path_that_is_a_folder_says_so(tmp_path):
    """Before: "why: [Errno 21] Is a directory", "fix: fix the YAML"."""
    from edgekd.devices.base import DeviceError
    from edgekd.devices.profiles import find_profile

    (tmp_path / "board.yaml").mkdir()
    with pytest.raises(DeviceError, match="board.yaml is a folder") as err:
        find_profile(str(tmp_path / "board.yaml"))
    assert "give the profile's .yaml file" in err.value.fix and "Errno" not in str(err.value)


def test_an_unknown_recipe_field_names_the_field_it_resembles():
    with pytest.raises(RecipeError, match=r"distill\.los: unknown field \(did you mean 'loss'\?\)"):
        load_recipe({"name": "x", "distill": {"los": {"name": "kd"}}})
    with pytest.raises(RecipeError, match=r"scrach: unknown field \(did you mean 'scratch'\?\)"):
        load_recipe({"name": "x", "scrach": {"enabled": False}})
    with pytest.raises(RecipeError) as err:  # nothing alike: no guess
        load_recipe({"name": "x", "zzzzzz": 1})
    assert "did you mean" not in str(err.value)


def test_a_broken_profile_named_by_a_recipe_keeps_the_profiles_fix(tmp_path):
    """The recipe check said "set bench.device to one of those" (none listed) for a profile that exists but
    is broken; the fix is the profile's own."""
    profile = tmp_path / "board.yaml"
    profile.write_text("name: board\nkind: local\nthreds: 2\n")
    with pytest.raises(RecipeError, match="unknown field `threds:`") as err:
        load_recipe({"name": "x", "bench": {"device": str(profile)}})
    assert err.value.fix.startswith(f"rename `threds:` to `threads:` in {profile}"), err.value.fix
    assert "one of those" not in err.value.fix
    with pytest.raises(RecipeError) as err:  # an unknown name still gets the list of known devices
        load_recipe({"name": "x", "bench": {"device": "nosuchboard"}})
    assert "one of those" in err.value.fix and "host" in err.value.why


@pytest.mark.parametrize("column, value, part", [
    ("identity", "{not json", "identity"),
    ("round_p50_us", "nope", "round p50s"),
])
def test_compare_with_a_damaged_history_row_names_the_result(tmp_path, column, value, part):
    """A damaged row was an internal error (JSONDecodeError) with exit 1. (compare reads no per-call latencies,
    so a damaged latency blob does not stop it.)"""
    db = tmp_path / "h.sqlite"
    a = history.record([_result("m", 10.0, 0, [10.0, 10.1])], db)
    b = history.record([_result("m", 10.0, 1, [10.0, 10.1])], db)
    with sqlite3.connect(db) as con:
        con.execute(f"UPDATE results SET {column} = ? WHERE session = ?", (value, b))
    proc = _cli("compare", a, b, "--history", str(db), cwd=tmp_path)
    _user_error(proc, f"the result of m in bench session '{b}' is damaged", f"its stored {part} cannot be decoded",
                "`edgekd history`")


def test_history_at_a_folder_says_it_is_a_folder(tmp_path):
    (tmp_path / "h").mkdir()
    _user_error(_cli("history", "--history", "h", cwd=tmp_path), "no bench history at h", "why: it is a folder")


@pytest.mark.parametrize("section", [{"output_dir": [1, 2]}, {"teacher": {"checkpoint": 5}}])
def test_a_path_field_of_the_wrong_type_says_it_wants_a_path(section):
    """pydantic's own text named a Python class: "input is not a valid path for <class 'pathlib.Path'>"."""
    with pytest.raises(RecipeError, match=r"(output_dir|teacher\.checkpoint): must be a path \(text\), got") as err:
        load_recipe({"name": "x", **section})
    assert "<class" not in str(err.value)


def test_a_history_under_a_file_gives_the_reason_not_the_errno(tmp_path):
    """The why was Python's "[Errno 17] File exists: 'afile'"."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BenchError, match="cannot open the bench history") as err:
        history.record([_result("m", 10.0, 0, [10.0, 10.1])], tmp_path / "afile" / "h.sqlite")
    assert err.value.why == f"File exists ({tmp_path / 'afile'})", err.value.why


def test_an_unreadable_recipe_or_profile_gives_the_os_reason_not_the_errno(tmp_path):
    """A file whose read fails even for root: /proc/self/mem at offset 0 (chmod 000 stops no read by root, which
    the tests may run as). The why was Python's "[Errno 5] Input/output error"."""
    (tmp_path / "recipe.yaml").symlink_to("/proc/self/mem")
    proc = _cli("run", "recipe.yaml", cwd=tmp_path)
    _user_error(proc, "cannot read recipe recipe.yaml", "why: Input/output error\n",
                "fix: check the file's permissions")
    assert "Errno" not in proc.stderr, proc.stderr
    from edgekd.devices.base import DeviceError
    from edgekd.devices.profiles import load_profile

    with pytest.raises(DeviceError, match="cannot read device profile") as err:
        load_profile(tmp_path / "recipe.yaml")
    assert err.value.why == "Input/output error", err.value.why


@pytest.mark.parametrize("section, field", [({"seed": -5}, "seed: must be >= 0"),
                                            ({"data": {"seed": -1}}, "data.seed: must be >= 0"),
                                            ({"seed": 2**40}, "seed: must be <= ")])
def test_a_seed_numpy_cannot_take_is_refused_at_load(section, field):
    """seed: -5 passed the recipe check, then failed after the exportability check as an internal error
    ("ValueError: expected non-negative integer"); data.seed: -1 as a split error whose fix was about fractions."""
    with pytest.raises(RecipeError, match=re.escape(field)):
        load_recipe({"name": "x", **section})


def test_a_recipe_path_that_is_a_folder_says_so(tmp_path):
    """It said "recipe not found: recipes" of a folder that is there."""
    (tmp_path / "recipes").mkdir()
    _user_error(_cli("run", "recipes", cwd=tmp_path), "recipe recipes is a folder", "give the recipe's .yaml file")


def test_a_folder_named_like_a_builtin_recipe_does_not_hide_it(tmp_path, monkeypatch):
    """`edgekd run demo --output-dir .` makes ./demo; the next `edgekd run demo` there said "recipe not found"."""
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_recipe("demo").name == "demo"


def test_resume_says_why_it_measures_an_unreadable_result_again(tmp_path):
    """--resume re-measured an artifact whose earlier result file was damaged without a word."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "m", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "m.onnx")
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "bench-m.json").write_text("{damaged")
    proc = _cli("bench", "m.onnx", "--resume", "--rounds", "1", "--min-seconds", "0.01", "--results-dir", "res",
                "--history", "h.sqlite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--resume: the earlier result res/bench-m.json cannot be read" in proc.stderr, proc.stderr
    assert "measuring m again" in proc.stderr

    (tmp_path / "res" / "bench-m.json").write_text('{"a": 1}')  # JSON, but no result: its first missing field
    proc = _cli("bench", "m.onnx", "--resume", "--rounds", "1", "--min-seconds", "0.01", "--results-dir", "res",
                "--history", "h.sqlite", cwd=tmp_path)
    assert proc.returncode == 0 and "cannot be read (artifact: Field required)" in proc.stderr, proc.stderr
    assert "validation error" not in proc.stderr
    assert json.loads((tmp_path / "res" / "bench-m.json").read_text())["artifact"]["name"] == "m"

    # now complete: kept, and said so (a bench with nothing left to measure printed only its table and "0/0")
    proc = _cli("bench", "m.onnx", "--resume", "--rounds", "1", "--min-seconds", "0.01", "--results-dir", "res",
                "--history", "h.sqlite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--resume: kept the results measured earlier with these settings on host of m" in proc.stdout, proc.stdout


def test_a_validators_own_words_reach_the_why_without_pydantics_prefix():
    """first_line gave "x: Value error, must be positive" where the other error paths said "x: must be positive"."""
    from pydantic import BaseModel, ValidationError, field_validator

    from edgekd.errors import first_line

    class Record(BaseModel):
        x: int

        @field_validator("x")
        @classmethod
        def _positive(cls, v: int) -> int:
            if v <= 0:
                raise ValueError("must be positive")
            return v

    with pytest.raises(ValidationError) as err:
        Record(x=-1)
    assert first_line(err.value) == "x: must be positive"


def test_a_failed_parity_check_is_said_once(tmp_path, caplog):
    """`edgekd export` printed each failed artifact's warning twice, the second time on stderr through Python's
    last-resort logging handler, then its FAILED line: three lines for one failure. From Python, with no reporter
    to show it, the warning still goes through logging."""
    import logging

    import torch

    import edgekd
    from edgekd.checkpoints import save_checkpoint
    from edgekd.models import create_model

    torch.manual_seed(0)  # untrained: its INT4 file agrees on ~94% of the top-1 classes, below INT4's 97%
    model = create_model("mlp", in_shape=(64,), num_classes=10, width=64, depth=2)
    save_checkpoint(model, tmp_path / "student.pt", role="student", data={"name": "digits"})
    proc = _cli("export", "student.pt", "--output-dir", "arts", "--precision", "int4", cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)  # a failed parity check, kept and marked FAILED
    said = (proc.stdout + proc.stderr).lower()
    assert said.count("failed parity") == 1 and "→ failed: top-1 agreement" in said, (proc.stdout, proc.stderr)
    assert "failed parity" not in proc.stderr.lower()

    with caplog.at_level(logging.WARNING, logger="edgekd"):
        (art,) = edgekd.export(tmp_path / "student.pt", tmp_path / "api", precisions=["int4"])
    assert not art.parity.passed
    assert [r.getMessage() for r in caplog.records if "failed parity" in r.getMessage()] == [
        f"student-onnx-int4 failed parity: {art.parity.reason}"]


def test_ctrl_c_during_export_says_what_is_kept_and_that_a_rerun_exports_again(tmp_path):
    """Ctrl-C in `edgekd export` said "finished stages are kept; run the same command again to resume", but an
    export has no stages and does not resume: a rerun exports every artifact again."""
    import os
    import signal
    import sys

    from edgekd.checkpoints import save_checkpoint
    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(64,), num_classes=10, width=16, depth=1)
    save_checkpoint(model, tmp_path / "student.pt", role="student", data={"name": "digits"})
    proc = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "export", "student.pt", "--output-dir", "arts",
                             "--precision", "fp32", "--precision", "int8_static", "--precision", "int8_dynamic",
                             "--min-agreement", "0"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        for line in proc.stdout:  # a progress line, not a delay: the export is under way
            if line.startswith("export student: started"):
                break
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    message = " ".join(stderr.split())
    assert proc.returncode == 130, stderr
    finished = sorted(p.parent.name for p in (tmp_path / "arts").glob("*/artifact.json"))
    kept = f"the artifacts finished so far are kept in arts ({', '.join(finished)})" if finished else \
        "no artifact was finished"
    assert f"interrupted: {kept}; run the same command again" in message, message
    assert "stages" not in message and "resume" not in message and "Traceback" not in stderr
    # the artifact under way was removed with its model file: none is left without its record
    left = sorted(p.name for p in (tmp_path / "arts").iterdir() if p.is_dir()) if (tmp_path / "arts").exists() else []
    assert left == finished


def test_ctrl_c_in_a_command_without_stages_does_not_speak_of_stages(tmp_path, monkeypatch):
    """Every command but a run said "finished stages are kept; run the same command again to resume" on Ctrl-C,
    though only a run has stages and resumes. The interrupt is raised where `edgekd history` reads the history."""
    from typer.testing import CliRunner

    from edgekd.bench import history
    from edgekd.cli import app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(history, "sessions", interrupted)
    result = CliRunner().invoke(app, ["history", "--history", str(tmp_path / "h.sqlite")])
    assert result.exit_code == 130
    assert "interrupted: stopped before it finished; run the same command again" in result.output
    assert "stages" not in result.output


def test_a_training_that_diverges_stops_there_and_says_so(tmp_path):
    """A distillation at lr 1e30 was "done" at 10% accuracy, then the export crashed in onnxruntime's quantizer
    ("internal error: AssertionError: scale issue")."""
    recipe = yaml.safe_load((Path(__file__).parent / "recipes" / "tiny.yaml").read_text())
    recipe["distill"]["train"]["lr"] = 1.0e30
    recipe["bench"] = {"enabled": False}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    proc = _cli("run", "r.yaml", "--output-dir", "out", cwd=tmp_path)
    _user_error(proc, "distill student diverged: its loss is nan at step", "lower this training's lr")
    assert not (tmp_path / "out" / "tiny" / "artifacts" / "student-onnx-fp32").exists()


def test_a_checkpoint_with_nan_weights_is_refused_before_any_file_is_written(tiny_run, tmp_path):
    import torch

    state = torch.load(tiny_run.rundir.checkpoints / "student.pt", weights_only=True)
    state["state_dict"] = {k: torch.full_like(v, float("nan")) if torch.is_floating_point(v) else v
                           for k, v in state["state_dict"].items()}
    torch.save(state, tmp_path / "nan.pt")
    proc = _cli("export", "nan.pt", "--output-dir", "eout", "--precision", "int8_static", cwd=tmp_path)
    _user_error(proc, "the student's weights hold NaN or infinite values", "its training diverged")
    assert not (tmp_path / "eout").exists() or not any((tmp_path / "eout").iterdir())


def test_a_full_disk_or_exhausted_memory_is_a_clear_error_not_an_internal_one():
    """`No space left on device` while saving a checkpoint, artifact or result, and a failed allocation, were
    "internal error: ... please report it" (exit 1): nothing edgekd can fix, but something the user can."""
    import numpy as np
    import torch

    from edgekd.errors import machine_limit

    with pytest.raises(OSError) as full:
        with open("/dev/full", "wb") as f:  # a real ENOSPC from the kernel
            f.write(b"x")
            f.flush()
    full.value.filename = "/runs/tiny/checkpoints/teacher.pt"
    limit = machine_limit(full.value)
    assert limit.exit_code == 2 and limit.what == "no space left on the disk writing /runs/tiny/checkpoints/teacher.pt"
    assert "--output-dir" in limit.fix
    for allocate in (lambda: np.empty(2**60, dtype=np.uint8), lambda: torch.empty(2**60, dtype=torch.uint8)):
        with pytest.raises((MemoryError, RuntimeError)) as err:
            allocate()
        assert machine_limit(err.value).what == "out of memory"
    assert machine_limit(ValueError("a bug")) is None and machine_limit(OSError(2, "No such file")) is None


def test_a_model_too_large_for_memory_says_so_from_the_command_line(tmp_path):
    (tmp_path / "r.yaml").write_text("name: huge\nstudent:\n  model: {family: mlp, params: {width: 100000000000}}\n"
                                     "bench: {enabled: false}\n")
    _user_error(_cli("run", "r.yaml", "--output-dir", "out", cwd=tmp_path), "error: out of memory", "smaller model")


@pytest.mark.parametrize("fields, said", [
    ({"export": {"targets": {"compressed": ["fp32"]}}},
     "export.targets names only compressed, which this run does not make (compress.enabled is false)"),
    ({"scratch": {"enabled": False}, "export": {"targets": {"scratch": ["fp32"]}}},
     "export.targets names only scratch, which this run does not make (scratch.enabled is false)"),
    ({"compress": {"prune": {"method": "nm", "nm": [5, 4]}}}, "compress.prune.nm: N:M must keep 1 ≤ N < M"),
    ({"export": {"int4": {"block_size": 33}}}, "export.int4.block_size: must be a power of two"),
    ({"task": "text", "data": {"text": {"packages": ["asyncio", "asyncio"]}}},
     "data.text.packages: names asyncio more than once"),
])
def test_settings_that_failed_only_after_training_fail_when_the_recipe_loads(fields, said):
    """Each ran the teacher and the student first (or, for the targets, exported nothing and said nothing; for the
    packages, made a one-class task that reached "100% accuracy")."""
    with pytest.raises(RecipeError, match=re.escape(said)):
        load_recipe({"name": "r", **fields})


def test_a_key_given_twice_in_a_recipe_or_profile_is_refused(tmp_path):
    """YAML keeps the last of two equal keys: `seed: 1` then `seed: 2` ran with seed 2, and said nothing."""
    (tmp_path / "r.yaml").write_text("name: t\nseed: 1\nstudent:\n  model: {family: mlp}\nseed: 2\n")
    _user_error(_cli("run", "r.yaml", cwd=tmp_path), "at line 5, column 1: 'seed' is given twice (first at line 2)")
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "b.yaml").write_text("kind: local\nthreads: 1\nthreads: 2\n")
    _user_error(_cli("devices", "--info", "b", cwd=tmp_path), "'threads' is given twice (first at line 2)")
    assert load_recipe({"name": "t", "seed": 1}).seed == 1  # nested mappings with equal keys elsewhere are fine


def test_a_damaged_history_is_refused_before_anything_is_measured(tiny_run, tmp_path):
    """`--history afile` measured every artifact, then could not record them; a run's bench stage did the same
    with a damaged <output_dir>/history.sqlite, threw the measurements away, and measured again next time."""
    (tmp_path / "afile").write_text("not a database\n")
    artifact = str(tiny_run.rundir.artifacts / "student-onnx-fp32")
    proc = _cli("bench", artifact, "--history", "afile", "--results-dir", "res", "--rounds", "1", cwd=tmp_path)
    _user_error(proc, "cannot open the bench history afile", "move afile aside")
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").glob("bench-*.json"))

    recipe = yaml.safe_load((Path(__file__).parent / "recipes" / "tiny.yaml").read_text())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "history.sqlite").write_text("not a database\n")
    recipe["export"]["targets"] = {"teacher": [], "student": ["fp32"], "scratch": []}
    recipe["export"]["formats"] = ["onnx"]
    recipe["teacher"]["train"]["epochs"] = recipe["distill"]["train"]["epochs"] = 1
    recipe["scratch"] = {"enabled": False}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    proc = _cli("run", "r.yaml", "--output-dir", "out", cwd=tmp_path)
    _user_error(proc, "cannot open the bench history out/history.sqlite")
    assert not list((tmp_path / "out" / "tiny" / "results").glob("bench-*.json"))


def test_an_empty_device_a_file_that_is_no_profile_and_endless_minutes_are_named_as_such(tmp_path):
    """--device "" listed the recipes in the current folder as "the profiles" it holds, a file that is no profile
    was an "unknown device", and --sustained inf was "BenchSettings.min_seconds must be a number ≥ 0"."""
    (tmp_path / "r.yaml").write_text("name: r\n")
    (tmp_path / "notes.txt").write_text("not a profile\n")
    _user_error(_cli("devices", "--info", "", cwd=tmp_path), "the device name is empty")
    _user_error(_cli("devices", "--info", "notes.txt", cwd=tmp_path),
                "device 'notes.txt' is a file but no device profile")
    _user_error(_cli("bench", "whatever.onnx", "--sustained", "inf", cwd=tmp_path),
                "a sustained bench needs a finite number of minutes > 0, got inf")


def test_debug_shows_the_traceback_and_keeps_the_exit_code_of_a_mistake(tmp_path):
    """With --debug a user mistake exited 1, as an internal error does; the README's table says 2."""
    proc = _cli("--debug", "run", "nosuch.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("Traceback"), proc.stderr
    assert "error: recipe not found: nosuch.yaml" in proc.stderr and "why: no such file" in proc.stderr


@pytest.mark.parametrize("args, said", [
    (("export", "nosuch.pt", "--output-dir", "out"), "why: no such file"),
    (("bench", "nosuch.onnx", "--results-dir", "res"), "why: no such file or folder"),
])
def test_a_missing_file_says_why_as_every_error_does(tmp_path, args, said):
    _user_error(_cli(*args, cwd=tmp_path), said)


@pytest.mark.parametrize("no_interval, said", [
    ("no spread", "no interval: rounds without spread, under the clock's resolution"),
    ("one round", "no interval: one round"),  # it said "do not vary" whatever the reason
])
def test_check_threads_says_why_it_has_no_interval(tmp_path, monkeypatch, no_interval, said):
    """The wording is the report's and `edgekd compare`'s (stats.why_no_interval). The measurement is stood in
    for: rounds without spread need a native tool's whole-µs timings (test_bench_adb has the real ones)."""
    from typer.testing import CliRunner

    from edgekd.bench import harness
    from edgekd.cli import app
    from edgekd.export.onnx import write_identity_model

    monkeypatch.setattr(harness, "check_threads", lambda artifact, device, threads, settings: {
        "artifact": "m", "device": device, "threads": [1, threads], "p50_us": [3.0, 3.0], "speedup": 1.0,
        "speedup_ci95": None, "no_interval": no_interval, "took_effect": False})
    write_identity_model(tmp_path / "m.onnx", (8,), 18)
    result = CliRunner().invoke(app, ["bench", str(tmp_path / "m.onnx"), "--check-threads", "2"])
    assert result.exit_code == 0, result.output
    assert said in " ".join(result.output.split()), result.output


def _student_checkpoint(path: Path) -> Path:
    """A tiny real checkpoint as a run's image stages write it (architecture and data set recorded)."""
    from edgekd.checkpoints import save_checkpoint
    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(1, 8, 8), num_classes=10, width=16, depth=1)
    return save_checkpoint(model, path, role="student", run="tiny", data={"name": "digits"})


LONG = "a" * 300  # past the 255 bytes a name that Linux file systems allow


@pytest.mark.parametrize("args, named", [
    (["export", "student.pt", "--output-dir", f"o_{LONG}"], f"o_{LONG[:28]}…"),
    (["report", LONG], LONG[:30] + "…"),
    (["history", "--history", f"{LONG}.sqlite"], f"…{LONG[:23]}.sqlite"),
    (["layers", f"{LONG}.pt", "mlp"], f"…{LONG[:27]}.pt"),
    (["run", "demo", "--output-dir", f"x/{LONG}/y"], f"x/{LONG[:28]}…"),
], ids=["export", "report", "history", "layers", "run"])
def test_a_path_too_long_is_a_user_error_naming_it_in_every_command(tmp_path, args, named):
    """ENAMETOOLONG was "internal error: OSError: [Errno 36] File name too long … please report it" (exit 1) from
    whichever command met it first; the CLI's one error handler now says which path and why, for all of them."""
    _student_checkpoint(tmp_path / "student.pt")
    proc = _cli(*args, cwd=tmp_path)
    _user_error(proc, "is too long", named, "bytes long; most file systems take at most 255 bytes for one name",
                "fix: give a shorter path")
    assert proc.stderr.count("error:") == 1 and LONG not in proc.stderr  # one block; the long name elided


def test_a_symbolic_link_loop_or_a_file_in_a_path_is_a_user_error():
    """ELOOP and ENOTDIR, which most commands catch before they open the path, are said by the same handler when
    one reaches it."""
    import errno

    from edgekd.errors import path_problem

    loop = path_problem(OSError(errno.ELOOP, "Too many levels of symbolic links", "runs/loop/x"))
    assert loop.exit_code == 2 and loop.what == "cannot follow the path runs/loop/x" and "loop" in loop.why
    not_dir = path_problem(OSError(errno.ENOTDIR, "Not a directory", "notes.txt/x"))
    assert not_dir.what == "cannot use the path notes.txt/x" and "is a file" in not_dir.why and not_dir.fix
    assert path_problem(OSError(errno.ENOENT, "No such file", "x")) is None and path_problem(ValueError()) is None


@pytest.mark.parametrize("args", [["export", "x.pt", "--output-dir", ""], ["run", "demo", "--output-dir", " "],
                                  ["bench", "x.onnx", "--results-dir", ""], ["bench", "x.onnx", "--history", ""]])
def test_an_empty_output_path_is_refused_not_read_as_the_current_folder(tmp_path, args):
    """`--output-dir "$OUT"` with OUT unset used to write the artifacts into the current folder."""
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2 and "is empty" in proc.stderr, (proc.returncode, proc.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["export", "x.pt"], ["bench", "x.onnx"]])
def test_the_default_output_paths_still_work(tmp_path, args):
    """The check of a typed path is also handed each option's default (a Path): every bench and export without
    --output-dir/--results-dir/--history ended in an internal error when it assumed a string."""
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
