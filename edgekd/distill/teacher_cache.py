"""Teacher-output cache: teacher logits computed once per (teacher weights, data, transform) and reused.

An entry is plain NumPy files plus a JSON sidecar under the cache root (default `export/cache/teacher`):

    <key>.npy          dense logits, N×C float32            (or, with top-k: log-probabilities, N×k float32)
    <key>.indices.npy  only with top-k: class indices, N×k int32, each row in descending order of value
    <key>.json         key parts, shape, dtype, top-k, creation time, size and sha256 of each .npy

Files are written with `np.save(..., allow_pickle=False)` through a temporary file renamed into place,
npy first and sidecar last, and read back memory-mapped (`np.load(..., mmap_mode="r", allow_pickle=False)`):
nothing is ever pickled. An entry whose files do not match its sidecar (size or sha256: a crash between
the two renames, a truncated copy) or cannot be read is a miss: it is recomputed and overwritten, with a
warning. The `.npy` of an entry is also a valid black-box teacher source
(`edgekd.distill.blackbox.load_teacher_outputs`), dense or top-k.

Top-k storage (for large output spaces) keeps, per row, the k largest teacher log-probabilities
(`log_softmax` of the full logits) and their class indices. `TeacherOutputs.dense()` rebuilds an N×C row by
giving every missing class the same log-probability `log((1 - P) / (C - k))`, P being the probability
mass of the kept classes: the row is then a normalised log-distribution whose kept probabilities are
exactly the teacher's and whose remaining mass is shared equally (the maximum-entropy completion given
what was kept). Each missing class had a probability no larger than the k-th kept one, so their mean,
the fill, is no larger either; it is capped one float32 step below the k-th value so that argmax and the
order of the top k are preserved even with ties. Log-probabilities are logits up to a per-row constant,
which softmax-based KD is invariant to.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekd.errors import TeacherOutputError, first_line
from edgekd.names import PATH_COMPONENT
from edgekd.rundir import atomic_save_array, atomic_write_json, hash_obj, sha256_file

logger = logging.getLogger(__name__)

SCHEMA = "edgekd.teacher_cache/1"
DEFAULT_ROOT = Path("export/cache/teacher")
FILL_RULE = "missing classes share the remaining probability mass equally: log((1 - P_topk) / (C - k))"
_CHUNK_ROWS = 8192
_KEY = re.compile(r"[0-9A-Za-z_-]{1,128}")
_MIN_MASS = 1e-30  # floor of the remaining mass when the kept classes hold all of it (in float64)


class CacheKey(str):
    """A cache key (hex digest) that remembers the parts it was made from (`.parts`), for the sidecar."""

    parts: dict[str, Any]

    def __new__(cls, digest: str, parts: dict[str, Any]) -> "CacheKey":
        obj = super().__new__(cls, digest)
        obj.parts = dict(parts)
        return obj


def cache_key(*, teacher: str, data: str, transform: str = "identity", topk: int | None = None) -> str:
    """The key of a cache entry: sha256 over the parts.

    teacher: sha256 of the teacher weights; data: a fingerprint of the inputs (content hash, split, order);
    transform: name of the input transform; topk: None for dense logits, else the k kept per row.
    """
    for name, value in (("teacher", teacher), ("data", data), ("transform", transform)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"cache_key: {name} must be a non-empty string, got {value!r}")
    _check_topk(topk)
    parts = {"teacher": teacher, "data": data, "transform": transform, "topk": topk}
    return CacheKey(hash_obj({"schema": SCHEMA, **parts}), parts)


def _check_topk(topk: int | None) -> None:
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1):
        raise ValueError(f"topk must be None or a positive integer, got {topk!r}")


# --------------------------------------------------------------------------- entries


@dataclass(eq=False)
class TeacherOutputs:
    """One cache entry, memory-mapped (as `put` returns it: the arrays it stored, in memory).

    values: N×C float32 logits (dense) or N×k float32 log-probabilities (top-k);
    indices: None (dense) or N×k int32 class indices, rows in descending order of value.
    """

    key: str
    values: np.ndarray
    indices: np.ndarray | None
    topk: int | None
    num_classes: int
    path: Path
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return int(self.values.shape[0])

    def __len__(self) -> int:
        return self.num_samples

    def dense(self) -> np.ndarray:
        """N×C float32 logits: the memmap itself for a dense entry, rebuilt (see the module doc) for top-k."""
        if self.indices is None:
            return self.values
        return densify(self.values, self.indices, self.num_classes)


def topk_fill(values: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-row log-probability of every class missing from a top-k row (float32, length N)."""
    values = np.asarray(values, dtype=np.float32)
    k = values.shape[1]
    if k >= num_classes:
        return np.full(len(values), -np.inf, dtype=np.float32)
    v = values.astype(np.float64)
    peak = v.max(axis=1, keepdims=True)
    kept = (peak[:, 0] + np.log(np.exp(v - peak).sum(axis=1)))  # log of the kept probability mass
    rest = -np.expm1(np.minimum(kept, 0.0))  # 1 - P, computed without cancellation
    fill = (np.log(np.maximum(rest, _MIN_MASS)) - np.log(num_classes - k)).astype(np.float32)
    ceiling = np.nextafter(values[:, -1], np.float32(-np.inf))  # strictly below the k-th kept value
    return np.minimum(fill, ceiling)


def densify(values: np.ndarray, indices: np.ndarray, num_classes: int) -> np.ndarray:
    """Rebuild N×C float32 log-probabilities from top-k values and indices (fill rule: module doc)."""
    out = np.empty((len(values), num_classes), dtype=np.float32)
    out[:] = topk_fill(values, num_classes)[:, None]
    np.put_along_axis(out, np.asarray(indices, dtype=np.intp), np.asarray(values, dtype=np.float32), axis=1)
    return out


def topk_logprobs(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values N×k float32, indices N×k int32): the k largest log_softmax entries of each row, descending
    (ties broken by the smaller class index)."""
    n, c = logits.shape
    if not 1 <= k <= c:
        raise ValueError(f"topk must be between 1 and the number of classes ({c}), got {k}")
    values = np.empty((n, k), dtype=np.float32)
    indices = np.empty((n, k), dtype=np.int32)
    for start in range(0, n, _CHUNK_ROWS):
        x = np.asarray(logits[start:start + _CHUNK_ROWS], dtype=np.float64)
        peak = x.max(axis=1, keepdims=True)
        logp = x - (peak + np.log(np.exp(x - peak).sum(axis=1, keepdims=True)))
        idx = np.argpartition(-logp, k - 1, axis=1)[:, :k] if k < c else np.broadcast_to(np.arange(c), x.shape)
        idx = np.sort(idx, axis=1)
        order = np.argsort(-np.take_along_axis(logp, idx, axis=1), axis=1, kind="stable")
        idx = np.take_along_axis(idx, order, axis=1)
        values[start:start + len(x)] = np.take_along_axis(logp, idx, axis=1)
        indices[start:start + len(x)] = idx
    return values, indices


def _paths(root: Path, key: str) -> tuple[Path, Path, Path]:
    """(values .npy, indices .npy, sidecar .json) of an entry."""
    return root / f"{key}.npy", root / f"{key}.indices.npy", root / f"{key}.json"


def sidecar_path(npy_path: Path) -> Path:
    """The sidecar of a cache entry's values .npy (`<key>.npy` → `<key>.json`)."""
    return Path(npy_path).with_suffix(".json")


def is_cache_entry(npy_path: Path) -> bool:
    """True when `npy_path` has a teacher-cache sidecar beside it."""
    side = sidecar_path(npy_path)
    if not side.is_file():
        return False
    try:
        with open(side, encoding="utf-8") as fh:
            return json.load(fh).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def _load_npy(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def load_entry(npy_path: Path, *, verify: bool = True) -> TeacherOutputs:
    """Open a cache entry from its values `.npy` (or its sidecar); TeacherOutputError when it is incomplete,
    does not match its sidecar (size, sha256 when `verify`, shape, dtype) or cannot be read."""
    npy_path = Path(npy_path)
    if npy_path.suffix == ".json":
        npy_path = npy_path.with_suffix(".npy")
    side = sidecar_path(npy_path)
    fix = "delete the entry's files; the next run recomputes it"

    def bad(why: str) -> TeacherOutputError:
        return TeacherOutputError(f"teacher cache entry {npy_path} is unusable", why=why, fix=fix)

    try:
        with open(side, encoding="utf-8") as fh:
            record = json.load(fh)
    except FileNotFoundError:
        raise bad(f"its sidecar {side.name} is missing") from None
    except (OSError, ValueError) as exc:
        raise bad(f"its sidecar {side.name} cannot be read: {first_line(exc)}") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise bad(f"{side.name} is not a teacher-cache sidecar (schema {SCHEMA})")
    try:
        files = record["files"]
        num_classes = int(record["num_classes"])
        topk = record.get("topk")
        names = {"values": files["values"]}
        if topk is not None:
            names["indices"] = files["indices"]
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"{side.name} lacks the field {first_line(exc)}") from None
    arrays: dict[str, np.ndarray] = {}
    for role, entry in names.items():
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not re.match(PATH_COMPONENT, name):
            raise bad(f"{side.name} names {name!r} as its {role} file: not a file name in the cache")
        path = npy_path.parent / name
        if not path.is_file():
            raise bad(f"{path.name} is missing")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise bad(f"{path.name} has {size} bytes, its sidecar records {entry.get('bytes')} (truncated or replaced)")
        if verify:
            digest = sha256_file(path)
            if digest != entry.get("sha256"):
                raise bad(f"the sha256 of {path.name} ({digest[:12]}…) differs from its sidecar's "
                          f"({str(entry.get('sha256'))[:12]}…)")
        try:
            array = _load_npy(path)
        except Exception as exc:  # np.load raises ValueError, OSError, EOFError for damaged headers
            raise bad(f"{path.name} cannot be read: {first_line(exc)}") from None
        if list(array.shape) != list(entry.get("shape", [])) or array.dtype.name != entry.get("dtype"):
            raise bad(f"{path.name} holds {array.dtype.name} {tuple(array.shape)}, its sidecar records "
                      f"{entry.get('dtype')} {tuple(entry.get('shape', []))}")
        arrays[role] = array
    return TeacherOutputs(key=str(record.get("key", npy_path.stem)), values=arrays["values"],
                          indices=arrays.get("indices"), topk=None if topk is None else int(topk),
                          num_classes=num_classes, path=npy_path, record=record)


def _as_logits(logits: Any) -> np.ndarray:
    """Teacher outputs as a 2-D float32 array with finite values (torch tensors accepted)."""
    if hasattr(logits, "detach") and hasattr(logits, "cpu"):  # a torch tensor, without importing torch
        logits = logits.detach().cpu()
    array = np.asarray(logits)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise TeacherOutputError(f"teacher outputs must be an N×C array of logits, got shape {tuple(array.shape)}",
                                 fix="return one row of class logits per sample")
    if array.dtype.kind not in "fiu":
        raise TeacherOutputError(f"teacher outputs must be numbers, got dtype {array.dtype}",
                                 fix="return float logits")
    array = np.asarray(array, dtype=np.float32)
    for start in range(0, len(array), _CHUNK_ROWS):
        finite = np.isfinite(array[start:start + _CHUNK_ROWS]).all(axis=1)
        if not finite.all():
            bad_rows = sum(int((~np.isfinite(array[s:s + _CHUNK_ROWS]).all(axis=1)).sum())
                           for s in range(start, len(array), _CHUNK_ROWS))
            raise TeacherOutputError(
                f"teacher outputs contain NaN or infinity in {bad_rows} row(s) of {len(array)}",
                why=f"the first is row {start + int(np.argmin(finite))}",
                fix="check the teacher and its inputs; nothing was cached")
    return array


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view, as the memory-mapped entries are (the caller's own array stays writable)."""
    view = array.view()
    view.flags.writeable = False
    return view


def _write_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    atomic_save_array(path, array)
    return {"name": path.name, "shape": list(array.shape), "dtype": array.dtype.name,
            "bytes": path.stat().st_size, "sha256": sha256_file(path)}


# --------------------------------------------------------------------------- the cache


class TeacherCache:
    """Teacher outputs by key under `root` (see the module doc for the layout).

    verify: check each entry's sha256 on `get` (reads the files once); sizes are always checked.
    """

    def __init__(self, root: Path = DEFAULT_ROOT, *, verify: bool = True) -> None:
        self.root = Path(root)
        self.verify = verify

    def paths(self, key: str) -> tuple[Path, Path, Path]:
        """(values .npy, indices .npy, sidecar .json) of `key`."""
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"invalid teacher-cache key {key!r}: use cache_key(...)")
        return _paths(self.root, key)

    def path(self, key: str) -> Path:
        """The entry's values .npy: what black-box KD reads (`load_teacher_outputs(path, ...)`)."""
        return self.paths(key)[0]

    def get(self, key: str) -> TeacherOutputs | None:
        """The entry for `key`, memory-mapped, or None (absent, or damaged: logged as a warning)."""
        values_path, _, side = self.paths(key)
        if not side.is_file():
            if values_path.exists():
                logger.debug("teacher cache: %s has no sidecar (interrupted write); treating it as a miss", values_path)
            return None
        try:
            return load_entry(values_path, verify=self.verify)
        except TeacherOutputError as exc:
            logger.warning("teacher cache: entry %s is corrupt (%s); recomputing it", key, exc.why)
            return None

    def _topk(self, key: str, topk: int | None) -> int | None:
        _check_topk(topk)
        from_key = getattr(key, "parts", {}).get("topk")
        if topk is not None and from_key is not None and int(topk) != int(from_key):
            raise ValueError(f"topk={topk} differs from the key's topk={from_key}")
        chosen = topk if topk is not None else from_key
        return None if chosen is None else int(chosen)

    def put(self, key: str, logits: Any, *, topk: int | None = None,
            meta: dict[str, Any] | None = None) -> TeacherOutputs:
        """Store N×C teacher logits under `key` (dense, or their top-k log-probabilities); returns the entry."""
        values_path, indices_path, side = self.paths(key)
        k = self._topk(key, topk)
        array = _as_logits(logits)
        n, c = array.shape
        if k is not None and k > c:
            raise ValueError(f"topk={k} exceeds the number of classes ({c})")
        files: dict[str, Any] = {}
        values, indices = (array, None) if k is None else topk_logprobs(array, k)
        files["values"] = _write_npy(values_path, values)
        if indices is not None:
            files["indices"] = _write_npy(indices_path, indices)
        record = {
            "schema": SCHEMA,
            "key": str(key),
            "parts": getattr(key, "parts", None),
            "storage": "dense" if k is None else "topk",
            "num_samples": n,
            "num_classes": c,
            "shape": files["values"]["shape"],
            "dtype": "float32",
            "topk": k,
            "values": "logits" if k is None else "log-probabilities (log_softmax of the logits)",
            "fill": None if k is None else FILL_RULE,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "created_unix": round(time.time(), 3),
            "files": files,
            "meta": dict(meta or {}),
        }
        atomic_write_json(side, record)  # last: the entry counts only once its files are in place
        if k is None and indices_path.exists():  # a stale top-k file from an earlier entry under this key
            os.unlink(indices_path)
        # The arrays written, not the files read back: another process storing the same key meanwhile (bit-
        # different logits from another CPU) may have replaced a file, and its values beside these indices would
        # be wrong with nothing to warn. A later `get` checks the files against the sidecar.
        return TeacherOutputs(key=str(key), values=_read_only(values), indices=None if indices is None else
                              _read_only(indices), topk=k, num_classes=c, path=values_path, record=record)

    def get_or_compute(self, key: str, compute: Callable[[], Any], *, topk: int | None = None,
                       meta: dict[str, Any] | None = None) -> tuple[TeacherOutputs, bool]:
        """(entry, hit): the cached entry, or `compute()` stored under `key` when absent or damaged."""
        k = self._topk(key, topk)
        entry = self.get(key)
        if entry is not None:
            if entry.topk == k:
                return entry, True
            logger.warning("teacher cache: entry %s holds topk=%s, topk=%s was asked; recomputing it",
                           key, entry.topk, k)
        return self.put(key, compute(), topk=k, meta=meta), False
