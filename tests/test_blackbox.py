"""Black-box teacher outputs from real files, a real ONNX artifact (onnxruntime) and Python functions."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgekd.distill.blackbox import load_teacher_outputs
from edgekd.errors import MissingExtraError, TeacherOutputError

from conftest import import_or_skip

N, C, D = 24, 5, 8
HERE = Path(__file__).resolve().parent
_W = np.random.default_rng(7).normal(size=(D, C)).astype(np.float32)


def teacher_fn(x: np.ndarray) -> np.ndarray:
    """A black-box teacher importable as 'test_blackbox:teacher_fn' (linear logits)."""
    return x @ _W


def _x(n: int = N) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, D)).astype(np.float32)


def _logits() -> np.ndarray:
    return np.random.default_rng(2).normal(0, 2, size=(N, C)).astype(np.float32)


def _probs() -> np.ndarray:
    z = _logits().astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def load(source, **kwargs):
    kwargs.setdefault("num_samples", N)
    kwargs.setdefault("num_classes", C)
    return load_teacher_outputs(source, **kwargs)


def _same_up_to_row_constant(a: np.ndarray, b: np.ndarray) -> None:
    """Equal as logits: identical after subtracting each row's mean (softmax ignores a per-row constant)."""
    np.testing.assert_allclose(a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True), atol=1e-5)


# --------------------------------------------------------------------------- files


def test_npy_logits_and_probs(tmp_path):
    np.save(tmp_path / "logits.npy", _logits())
    out = load(tmp_path / "logits.npy")
    assert out.dtype == np.float32 and out.shape == (N, C)
    np.testing.assert_array_equal(out, _logits())

    np.save(tmp_path / "probs.npy", _probs())
    out = load(str(tmp_path / "probs.npy"))  # auto: rows are distributions
    np.testing.assert_allclose(out, np.log(_probs()), atol=1e-6)
    _same_up_to_row_constant(out, _logits())
    np.testing.assert_array_equal(load(tmp_path / "probs.npy", kind="logits"), _probs())

    np.save(tmp_path / "f64.npy", _logits().astype(np.float64))
    assert load(tmp_path / "f64.npy").dtype == np.float32


def test_npz_keys(tmp_path):
    np.savez(tmp_path / "l.npz", logits=_logits(), other=np.zeros(3))
    np.testing.assert_array_equal(load(tmp_path / "l.npz"), _logits())
    np.savez(tmp_path / "p.npz", probs=_probs())
    _same_up_to_row_constant(load(tmp_path / "p.npz"), _logits())
    np.savez(tmp_path / "q.npz", probabilities=_probs())
    _same_up_to_row_constant(load(tmp_path / "q.npz"), _logits())
    np.savez(tmp_path / "only.npz", _logits())
    np.testing.assert_array_equal(load(tmp_path / "only.npz"), _logits())
    np.savez(tmp_path / "two.npz", a=_logits(), b=_logits())
    with pytest.raises(TeacherOutputError, match="a, b"):
        load(tmp_path / "two.npz")
    # a 'probs' key is a claim: rows that are not distributions are rejected
    np.savez(tmp_path / "wrong.npz", probs=_logits())
    with pytest.raises(TeacherOutputError, match="not probabilities"):
        load(tmp_path / "wrong.npz")


def test_jsonl_lists_and_objects(tmp_path):
    lists = tmp_path / "lists.jsonl"
    lists.write_text("".join(json.dumps(row.tolist()) + "\n" for row in _logits()) + "\n")
    np.testing.assert_allclose(load(lists), _logits(), atol=1e-6)

    objects = tmp_path / "objects.jsonl"
    objects.write_text("\n".join(json.dumps({"id": i, "logits": row.tolist()}) for i, row in enumerate(_logits())))
    np.testing.assert_allclose(load(objects), _logits(), atol=1e-6)

    probs = tmp_path / "probs.jsonl"
    probs.write_text("\n".join(json.dumps({"probs": row.tolist()}) for row in _probs()))
    _same_up_to_row_constant(load(probs), _logits())


def test_jsonl_errors_name_the_line(tmp_path):
    rows = [json.dumps(row.tolist()) for row in _logits()]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(rows[:2] + ["[1, 2,"] + rows[3:]))
    with pytest.raises(TeacherOutputError, match="line 3") as err:
        load(bad)
    assert "invalid JSON" in str(err.value)

    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(rows[:4] + ["[1, 2]"] + rows[5:]))
    with pytest.raises(TeacherOutputError, match="line 5") as err:
        load(short)
    assert "2 values, expected 5" in str(err.value)

    nokey = tmp_path / "nokey.jsonl"
    nokey.write_text(json.dumps({"scores": [0] * C}))
    with pytest.raises(TeacherOutputError, match="'logits' or 'probs'"):
        load(nokey, num_samples=1)


# --------------------------------------------------------------------------- functions


def test_callable_in_batches_of_at_most_512():
    sizes = []

    def fn(batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32
        sizes.append(len(batch))
        return teacher_fn(batch)

    x = _x(1100)
    out = load(fn, x=x, num_samples=1100)
    assert sizes == [512, 512, 76]
    np.testing.assert_allclose(out, x @ _W, rtol=1e-6)


def test_callable_returning_a_torch_tensor():
    import torch
    model = torch.nn.Linear(D, C)
    out = load(lambda b: model(torch.from_numpy(b)), x=_x())  # requires grad: detached, not an error
    with torch.no_grad():
        expected = model(torch.from_numpy(_x())).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_module_function_string(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    out = load("test_blackbox:teacher_fn", x=_x())
    np.testing.assert_allclose(out, _x() @ _W, rtol=1e-6)


def test_function_errors(monkeypatch):
    def broken(batch):
        raise RuntimeError("CUDA out of memory\nlong traceback text")

    with pytest.raises(TeacherOutputError, match="rows 0–23") as err:
        load(broken, x=_x())
    assert err.value.why == "CUDA out of memory"

    with pytest.raises(TeacherOutputError, match="3 columns, expected 5") as err:
        load(lambda b: b[:, :3], x=_x())
    assert "(24, 3)" in str(err.value) and "(24, 5)" in str(err.value)
    with pytest.raises(TeacherOutputError, match="returned shape") as err:
        load(lambda b: teacher_fn(b)[:-1], x=_x())
    assert "(23, 5)" in str(err.value) and "expected (24, 5)" in str(err.value)

    with pytest.raises(TeacherOutputError, match="cannot import") as err:
        load("edgekd_no_such_module_xyz:fn", x=_x())
    assert "edgekd_no_such_module_xyz" in err.value.why
    with pytest.raises(TeacherOutputError, match="no attribute 'nope'"):
        load("json:nope", x=_x())
    with pytest.raises(TeacherOutputError, match="x is None"):
        load(teacher_fn)
    with pytest.raises(TeacherOutputError, match=r"\(10, 8\)"):
        load(teacher_fn, x=_x(10))


# --------------------------------------------------------------------------- artifacts


@pytest.fixture(scope="module")
def onnx_teacher(tmp_path_factory):
    """A torch nn.Linear(64, 10) exported to model.onnx in an artifact folder, with its torch reference."""
    import onnxruntime  # noqa: F401  (a core dependency, like torch: missing, it fails here)
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10).eval()
    folder = tmp_path_factory.mktemp("export") / "run" / "artifacts" / "teacher-onnx-fp32"
    folder.mkdir(parents=True)
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(2, 64),), str(folder / "model.onnx"), dynamo=False,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    x = np.random.default_rng(3).normal(size=(300, 64)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    return folder, x, reference


def test_onnx_artifact_file_and_folder(onnx_teacher):
    folder, x, reference = onnx_teacher
    for source in (folder / "model.onnx", folder):
        out = load_teacher_outputs(source, x=x, num_samples=300, num_classes=10)
        assert out.shape == (300, 10) and out.dtype == np.float32
        np.testing.assert_allclose(out, reference, atol=1e-4)
    with pytest.raises(TeacherOutputError, match="x is None"):
        load_teacher_outputs(folder, x=None, num_samples=300, num_classes=10)
    with pytest.raises(TeacherOutputError, match=r"10 columns, expected 7") as err:
        load_teacher_outputs(folder, x=x, num_samples=300, num_classes=7)
    assert "(300, 7)" in str(err.value) and "(300, 10)" in str(err.value)
    with pytest.raises(TeacherOutputError, match="failed on x of shape"):
        load_teacher_outputs(folder, x=x[:, :32], num_samples=300, num_classes=10)


def test_artifact_folder_needs_exactly_one_model(tmp_path):
    with pytest.raises(TeacherOutputError, match="neither"):
        load(tmp_path, x=_x())
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "model.tflite").write_bytes(b"")
    with pytest.raises(TeacherOutputError, match="both"):
        load(tmp_path, x=_x())


def test_corrupt_onnx_is_a_teacher_output_error(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(TeacherOutputError, match="cannot be run"):
        load(tmp_path / "model.onnx", x=_x())


def test_tflite_without_litert_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "model.tflite").write_bytes(b"TFL3")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(MissingExtraError) as err:
        load(tmp_path, x=_x())
    assert "[tflite]" in str(err.value) and "ai_edge_litert" in str(err.value)
    assert "TFLite black-box teacher" in str(err.value)


# --------------------------------------------------------------------------- validation


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(TeacherOutputError, match="not found") as err:
        load(tmp_path / "absent.npy")
    assert f"({N}, {C})" in str(err.value)

    np.save(tmp_path / "t.npy", _logits())
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(TeacherOutputError, match="cannot read"):
        load(tmp_path / "t.npy")
    (tmp_path / "garbage.npy").write_bytes(b"hello world")
    with pytest.raises(TeacherOutputError, match="cannot read"):
        load(tmp_path / "garbage.npy")
    (tmp_path / "garbage.npz").write_bytes(b"hello world")
    with pytest.raises(TeacherOutputError, match="cannot read"):
        load(tmp_path / "garbage.npz")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(TeacherOutputError, match="pickle"):
        load(tmp_path / "objects.npy")
    (tmp_path / "t.csv").write_text("1,2,3\n")
    with pytest.raises(TeacherOutputError, match="suffix '.csv'"):
        load(tmp_path / "t.csv")


def test_shape_errors_say_expected_and_found(tmp_path):
    np.save(tmp_path / "rows.npy", _logits()[:20])
    with pytest.raises(TeacherOutputError, match="20 rows, expected 24") as err:
        load(tmp_path / "rows.npy")
    assert "(24, 5)" in str(err.value) and "(20, 5)" in str(err.value) and "rows.npy" in str(err.value)

    np.save(tmp_path / "cols.npy", np.zeros((N, 7), dtype=np.float32))
    with pytest.raises(TeacherOutputError, match="7 columns, expected 5") as err:
        load(tmp_path / "cols.npy")
    assert "(24, 7)" in str(err.value)

    np.save(tmp_path / "flat.npy", np.zeros(N * C, dtype=np.float32))
    with pytest.raises(TeacherOutputError, match=r"shape \(120,\), expected \(24, 5\)"):
        load(tmp_path / "flat.npy")


def test_non_finite_values_are_counted(tmp_path):
    logits = _logits()
    logits[3, 1] = np.nan
    logits[9, 0] = np.inf
    logits[9, 4] = -np.inf
    np.save(tmp_path / "nan.npy", logits)
    with pytest.raises(TeacherOutputError, match="3 NaN or infinite") as err:
        load(tmp_path / "nan.npy")
    assert "row 3" in str(err.value)


def test_probs_that_do_not_sum_to_one(tmp_path):
    probs = _probs()
    probs[6] *= 0.5
    np.save(tmp_path / "p.npy", probs)
    with pytest.raises(TeacherOutputError, match="not probabilities in 1 row") as err:
        load(tmp_path / "p.npy", kind="probs")
    assert "row 6 sums to 0.5" in str(err.value)
    # auto: not every row is a distribution, so these are taken as logits as they are
    np.testing.assert_array_equal(load(tmp_path / "p.npy"), probs)
    with pytest.raises(TeacherOutputError, match="unknown teacher output kind"):
        load(tmp_path / "p.npy", kind="softmax")


def test_tflite_artifact(tmp_path):
    """A real .tflite (litert-torch export, batch fixed at 1) run through tflite_predict."""
    for module in ("litert_torch", "ai_edge_litert"):
        import_or_skip(module, "the [tflite] extra is not installed")  # skips locally, fails on CI
    import torch

    from edgekd.export.tflite import export_tflite

    torch.manual_seed(0)
    model = torch.nn.Linear(D, C).eval()
    path = export_tflite(model, (D,), tmp_path / "teacher-tflite-fp32" / "model.tflite")
    out = load(path.parent, x=_x())
    with torch.no_grad():
        np.testing.assert_allclose(out, model(torch.from_numpy(_x())).numpy(), atol=1e-4)
