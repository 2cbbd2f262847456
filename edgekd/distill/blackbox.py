"""Black-box teacher outputs: the teacher is only its outputs (no weights), N×C per training sample.

`load_teacher_outputs(source, x=..., num_samples=N, num_classes=C)` returns float32 logits (N×C) from:

- a file: `.npy` (N×C; a teacher-cache entry's `.npy`, dense or top-k, is read through its sidecar),
  `.npz` (key `logits`, or `probs`/`probabilities`, or its only array), `.jsonl` (one line per sample:
  a list of numbers, or an object with `logits` or `probs`/`probabilities`);
- an exported artifact run on `x`: `.onnx` (onnxruntime, CPU), `.tflite` (LiteRT, the [tflite] extra),
  or an artifact folder holding exactly one `model.onnx` / `model.tflite` (`export/<run>/artifacts/<name>/`);
- a Python callable, or a `"package.module:function"` string naming one, called on float32 batches of
  `x` (at most 512 rows) and returning an array or a torch tensor.

`kind` says what the numbers are: "logits", "probs" or "auto" (probabilities when every value is in
[0, 1] and every row sums to 1 within 1e-3; a file key such as `probs`, or an ONNX artifact whose output
comes from a Softmax or LogSoftmax, decides it). Probabilities become log-probabilities (clipped at
1e-12): logits up to a per-row constant, which KD is invariant to.
Everything that does not fit (missing or unreadable file, wrong shape, NaN/inf, probabilities that do not
sum to 1, a failing teacher function) is a TeacherOutputError saying what was expected and found.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np

from edgekd.distill import teacher_cache
from edgekd.errors import ArtifactError, MissingExtraError, TeacherOutputError, first_line

TeacherSource = Union[str, "os.PathLike[str]", Callable[[np.ndarray], Any]]

KINDS = ("auto", "logits", "probs")
CALL_BATCH = 512  # rows per call of a callable teacher
AUTO_PROBS_ATOL = 1e-3  # "auto": a row is a distribution when its sum is within this of 1
PROBS_ATOL = 1e-2  # kind="probs": rows further than this from 1 are rejected (rounded files pass)
LOG_CLIP = 1e-12
ARTIFACT_NAMES = ("model.onnx", "model.tflite")
_CHUNK_ROWS = 65536
_FUNCTION = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_NPZ_KEYS = (("logits", "logits"), ("probs", "probs"), ("probabilities", "probs"))
# ONNX ops that pass their input's meaning through (what a Softmax made is still probabilities after them)
_SAME_VALUES = frozenset({"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "QuantizeLinear",
                          "DequantizeLinear"})


def names_a_function(source: str) -> bool:
    """Whether a source string is read as 'package.module:function' (a file of that name wins)."""
    return bool(_FUNCTION.fullmatch(source)) and not Path(source).exists()


def load_teacher_outputs(source: TeacherSource, *, x: np.ndarray | None = None, num_samples: int,
                         num_classes: int, kind: str = "auto") -> np.ndarray:
    """Teacher logits, float32 N×C (N = num_samples, C = num_classes), from `source` (see the module doc).

    A float32 `.npy` of logits comes back memory-mapped (read-only), not copied.
    """
    if kind not in KINDS:
        raise TeacherOutputError(f"unknown teacher output kind '{kind}'", why=f"known: {', '.join(KINDS)}",
                                 fix="use kind='logits', 'probs' or 'auto'")
    expected = f"({num_samples}, {num_classes})"
    if callable(source) and not isinstance(source, (str, os.PathLike)):
        name = getattr(source, "__qualname__", None) or type(source).__name__
        array, declared, label = _call(source, name, x, num_samples, num_classes), None, f"teacher function {name}"
    elif isinstance(source, str) and names_a_function(source):
        array, declared, label = _call(_import_function(source), source, x, num_samples, num_classes), None, \
            f"teacher function {source}"
    elif isinstance(source, (str, os.PathLike)):
        array, declared, label = _from_path(Path(source), x, num_samples, num_classes, expected)
    else:
        raise TeacherOutputError(f"unsupported teacher output source {source!r} ({type(source).__name__})",
                                 fix="give a .npy/.npz/.jsonl file, an .onnx/.tflite artifact, a callable "
                                     "or a 'package.module:function' string")
    return _finish(array, declared=declared, kind=kind, label=label, num_samples=num_samples,
                   num_classes=num_classes)


# --------------------------------------------------------------------------- files


def _from_path(path: Path, x: np.ndarray | None, n: int, c: int, expected: str) -> tuple[np.ndarray, str | None, str]:
    """(array, kind the file declares or None, label) of a file or artifact folder."""
    if not path.exists():
        raise TeacherOutputError(f"teacher output file not found: {path}",
                                 why=f"expected teacher outputs of shape {expected} there",
                                 fix="check the path (relative paths start at the current directory)")
    if path.is_dir():
        path = artifact_in(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if teacher_cache.is_cache_entry(path):
            return _from_cache(path), "logits", str(path)
        return _load_npy(path), None, str(path)
    if suffix == ".npz":
        return (*_load_npz(path), str(path))
    if suffix == ".jsonl":
        return (*_load_jsonl(path, c), str(path))
    if suffix in (".onnx", ".tflite"):
        return _run_artifact(path, x, n), _artifact_kind(path), f"artifact {path}"
    raise TeacherOutputError(f"unsupported teacher output file {path}",
                             why=f"the suffix '{path.suffix}' is none of .npy, .npz, .jsonl, .onnx, .tflite",
                             fix=f"save the teacher outputs (shape {expected}) with np.save as .npy")


def artifact_in(folder: Path) -> Path:
    """The one model file of an artifact folder (export/<run>/artifacts/<name>/)."""
    found = [folder / name for name in ARTIFACT_NAMES if (folder / name).is_file()]
    if len(found) != 1:
        why = (f"it has neither {' nor '.join(ARTIFACT_NAMES)}" if not found
               else f"it has both {' and '.join(p.name for p in found)}")
        raise TeacherOutputError(f"{folder} is not an artifact folder with one model", why=why,
                                 fix="give the model file itself, or a folder such as export/<run>/artifacts/<name>/")
    return found[0]


def _unreadable(path: Path, exc: BaseException) -> TeacherOutputError:
    return TeacherOutputError(f"cannot read teacher outputs from {path}", why=first_line(exc),
                              fix="check the file is complete (re-copy or re-create it)")


def _load_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    if magic != b"\x93NUMPY":  # np.load would take it for a pickle
        raise TeacherOutputError(f"cannot read teacher outputs from {path}",
                                 why="it is not a NumPy .npy file (no NPY header)",
                                 fix="save the teacher outputs with np.save (N×C float32)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "python objects" in str(exc).lower():
            raise TeacherOutputError(f"{path} holds Python objects (a pickled array)",
                                     why="teacher outputs are loaded without pickle, which can run code",
                                     fix="save a numeric N×C array: np.save(path, np.asarray(logits, np.float32))") \
                from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # OSError, EOFError, ...: a damaged file
        raise _unreadable(path, exc) from None


def _from_cache(path: Path) -> np.ndarray:
    try:
        return teacher_cache.load_entry(path).dense()
    except TeacherOutputError as exc:
        raise TeacherOutputError(f"cannot use the teacher cache entry {path}", why=exc.why,
                                 fix="recompute it (delete the entry's files) or give another source") from None


def _load_npz(path: Path) -> tuple[np.ndarray, str | None]:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # np.load would take it for a pickle
        raise TeacherOutputError(f"cannot read teacher outputs from {path}",
                                 why="it is not a NumPy .npz file (not a zip archive)",
                                 fix="save the teacher outputs with np.savez(path, logits=...)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            for key, declared in _NPZ_KEYS:
                if key in keys:
                    return archive[key], declared
            if len(keys) == 1:
                return archive[keys[0]], None
    except TeacherOutputError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise TeacherOutputError(f"{path} holds Python objects (a pickled array)",
                                     why="teacher outputs are loaded without pickle, which can run code",
                                     fix="save numeric arrays: np.savez(path, logits=...)") from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # BadZipFile, OSError, EOFError
        raise _unreadable(path, exc) from None
    raise TeacherOutputError(f"{path} has no teacher outputs array",
                             why=f"it holds {', '.join(keys) or 'no arrays'}; expected 'logits', 'probs' or "
                                 "'probabilities', or a single array",
                             fix="np.savez(path, logits=...) or np.savez(path, probs=...)")


def _load_jsonl(path: Path, num_classes: int) -> tuple[np.ndarray, str | None]:
    rows: list[np.ndarray] = []
    declared: str | None = None
    declared_line = 0
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise _unreadable(path, exc) from None
    with fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue

            def bad(why: str) -> TeacherOutputError:
                return TeacherOutputError(f"{path} line {number} is not a row of teacher outputs", why=why,
                                          fix=f"write one JSON list of {num_classes} numbers per line, or an "
                                              "object with 'logits' or 'probs'")

            try:
                item = json.loads(line)
            except ValueError as exc:
                raise bad(f"invalid JSON: {first_line(exc)}") from None
            line_kind = None
            if isinstance(item, dict):
                for key, kind in _NPZ_KEYS:
                    if key in item:
                        item, line_kind = item[key], kind
                        break
                else:
                    raise bad(f"the object has no 'logits' or 'probs' (keys: {', '.join(map(str, item)) or 'none'})")
            if not isinstance(item, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in item):
                raise bad(f"expected a list of numbers, found {type(item).__name__}"
                          + (" with non-numbers" if isinstance(item, list) else ""))
            if len(item) != num_classes:
                raise bad(f"it has {len(item)} values, expected {num_classes} (num_classes)")
            if rows and line_kind != declared:
                raise bad(f"it holds {line_kind or 'a plain list'} but line {declared_line} holds "
                          f"{declared or 'a plain list'}; all lines must say the same")
            if not rows:
                declared, declared_line = line_kind, number
            rows.append(np.asarray(item, dtype=np.float64))
    if not rows:
        return np.zeros((0, num_classes), dtype=np.float32), None
    return np.stack(rows), declared


# --------------------------------------------------------------------------- artifacts and functions


def _need_x(x: np.ndarray | None, n: int, label: str) -> np.ndarray:
    if x is None:
        raise TeacherOutputError(f"{label} needs the training inputs to produce teacher outputs",
                                 why="x is None", fix=f"pass x (the {n} inputs, in training order)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim < 1 or len(x) != n:
        raise TeacherOutputError(f"x has shape {tuple(x.shape)}, expected {n} rows (num_samples) for {label}",
                                 fix="pass the inputs of the samples the teacher outputs are for")
    return x


def _run_artifact(path: Path, x: np.ndarray | None, n: int) -> np.ndarray:
    x = _need_x(x, n, f"the artifact {path}")
    try:
        if path.suffix.lower() == ".onnx":
            from edgekd.export.verify import onnx_predict

            return onnx_predict(path, x)
        try:
            importlib.import_module("ai_edge_litert.interpreter")
        except ImportError:
            raise MissingExtraError("tflite", "ai_edge_litert", "a TFLite black-box teacher") from None
        from edgekd.export.tflite import tflite_predict

        try:
            return tflite_predict(path, x)
        except MissingExtraError:
            raise MissingExtraError("tflite", "ai_edge_litert", "a TFLite black-box teacher") from None
    except ArtifactError as exc:
        raise TeacherOutputError(f"the teacher artifact {path} cannot be run", why=exc.why or exc.what,
                                 fix=exc.fix or "re-export the artifact") from None
    except (MissingExtraError, TeacherOutputError):
        raise
    except Exception as exc:  # the runtime rejects the inputs (shape, dtype) at run time
        raise TeacherOutputError(f"the teacher artifact {path} failed on x of shape {tuple(x.shape)}",
                                 why=first_line(exc),
                                 fix="pass inputs of the shape the artifact was exported for") from None


def _artifact_kind(path: Path) -> str | None:
    """What an ONNX artifact's first output is, read from the op that makes it: "probs" after a Softmax,
    "logits" after a LogSoftmax (log-probabilities are logits up to a per-row constant), else None.

    A deployed classifier often ends in Softmax; its outputs are probabilities even when quantization keeps
    their rows from summing to 1 within "auto"'s tolerance. None lets "auto" decide from the values (always
    so for TFLite, whose graph is not read here).
    """
    if path.suffix.lower() != ".onnx":
        return None
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # unreadable here: running it already succeeded, so let the values decide
        return None
    producer = {name: node for node in graph.node for name in node.output}
    name = graph.output[0].name if graph.output else ""
    for _ in range(len(graph.node)):
        node = producer.get(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Softmax":
            return "probs"
        if node.op_type == "LogSoftmax":
            return "logits"
        if node.op_type not in _SAME_VALUES or not node.input:
            return None
        name = node.input[0]
    return None


def _import_function(spec: str) -> Callable[[np.ndarray], Any]:
    module_name, _, attr = spec.partition(":")
    fix = "check the module is installed or on sys.path (PYTHONPATH) and the function name is right"
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error the module raises while importing
        raise TeacherOutputError(f"cannot import the teacher function '{spec}'",
                                 why=f"importing {module_name}: {first_line(exc)}", fix=fix) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TeacherOutputError(f"cannot import the teacher function '{spec}'",
                                     why=f"{module_name} has no attribute '{attr}'", fix=fix) from None
    if not callable(obj):
        raise TeacherOutputError(f"'{spec}' is not callable", why=f"it is a {type(obj).__name__}",
                                 fix="name a function that maps an input batch to its logits")
    return obj


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
    return np.asarray(value)


def _call(fn: Callable[[np.ndarray], Any], name: str, x: np.ndarray | None, n: int, c: int) -> np.ndarray:
    x = _need_x(x, n, f"the teacher function {name}")
    chunks = []
    for start in range(0, n, CALL_BATCH):
        rows = x[start:start + CALL_BATCH]
        where = f"rows {start}–{start + len(rows) - 1}"
        try:
            out = _to_numpy(fn(rows))
        except Exception as exc:
            raise TeacherOutputError(f"the teacher function {name} failed on {where}", why=first_line(exc),
                                     fix="make it map a float32 batch of inputs to an N×C array of logits") from None
        if out.ndim != 2 or len(out) != len(rows) or (chunks and out.shape[1:] != chunks[0].shape[1:]):
            expected = f"({len(rows)}, {c if not chunks else chunks[0].shape[1]})"
            raise TeacherOutputError(f"the teacher function {name} returned shape {tuple(out.shape)} for {where}",
                                     why=f"expected {expected}: one row of {c} class outputs per input row",
                                     fix="return an N×C array (or tensor) for a batch of N inputs")
        chunks.append(out)
    return np.concatenate(chunks) if chunks else np.zeros((0, c), dtype=np.float32)


# --------------------------------------------------------------------------- checks and conversion


def _row_chunks(array: np.ndarray):
    for start in range(0, len(array), _CHUNK_ROWS):
        yield start, array[start:start + _CHUNK_ROWS]


def _is_distribution(array: np.ndarray, atol: float) -> np.ndarray:
    """Per row: every value in [0, 1] and the sum within atol of 1."""
    out = np.empty(len(array), dtype=bool)
    for start, rows in _row_chunks(array):
        rows = np.asarray(rows, dtype=np.float64)
        out[start:start + len(rows)] = (((rows >= 0) & (rows <= 1)).all(axis=1)
                                        & (np.abs(rows.sum(axis=1) - 1) <= atol))
    return out


def _finish(array: np.ndarray, *, declared: str | None, kind: str, label: str, num_samples: int,
            num_classes: int) -> np.ndarray:
    array = np.asarray(array)
    expected = f"({num_samples}, {num_classes})"
    found = tuple(array.shape)
    if array.ndim != 2:
        raise TeacherOutputError(f"teacher outputs from {label} have shape {found}, expected {expected}",
                                 why="teacher outputs are one row of class outputs per sample (2-D)",
                                 fix="give an N×C array (N = samples, C = classes)")
    if array.shape[0] != num_samples:
        raise TeacherOutputError(f"teacher outputs from {label} have {array.shape[0]} rows, expected {num_samples}",
                                 why=f"expected shape {expected} (one row per training sample), found {found}",
                                 fix="produce the teacher outputs on the same samples, in the same order")
    if array.shape[1] != num_classes:
        raise TeacherOutputError(
            f"teacher outputs from {label} have {array.shape[1]} columns, expected {num_classes}",
            why=f"expected shape {expected} (one column per class), found {found}",
            fix="use a teacher with the same classes (and class order) as the data set")
    if array.dtype.kind not in "fiu":
        raise TeacherOutputError(f"teacher outputs from {label} are {array.dtype}, not numbers",
                                 fix="give float logits or probabilities")
    array = np.asarray(array, dtype=np.float32)
    bad_count, first_bad = 0, -1
    for start, rows in _row_chunks(array):
        bad = ~np.isfinite(rows)
        if bad.any():
            bad_count += int(bad.sum())
            if first_bad < 0:
                first_bad = start + int(np.argmax(bad.any(axis=1)))
    if bad_count:
        raise TeacherOutputError(f"teacher outputs from {label} contain {bad_count} NaN or infinite value(s)",
                                 why=f"the first is in row {first_bad} (shape {found})",
                                 fix="recompute the teacher outputs; check the teacher and its inputs")
    effective = kind if kind != "auto" else declared
    if effective is None:
        effective = "probs" if len(array) and _is_distribution(array, AUTO_PROBS_ATOL).all() else "logits"
    if effective == "logits":
        return array
    ok = _is_distribution(array, PROBS_ATOL)
    if not ok.all():
        row = int(np.argmin(ok))
        raise TeacherOutputError(
            f"teacher outputs from {label} are not probabilities in {int((~ok).sum())} row(s) of {len(array)}",
            why=f"row {row} sums to {float(np.sum(array[row], dtype=np.float64)):.6g} "
                f"(min {float(array[row].min()):.6g}); probability rows lie in [0, 1] and sum to 1 "
                f"(within {PROBS_ATOL})",
            fix="give kind='logits' if these are logits, or normalise each row (softmax)")
    out = np.empty(array.shape, dtype=np.float32)
    for start, rows in _row_chunks(array):
        out[start:start + len(rows)] = np.log(np.clip(rows, LOG_CLIP, None))
    return out
