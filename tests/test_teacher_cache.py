"""Teacher-output cache: real .npy files on disk, memory-mapped, no pickle."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from edgekd.distill.blackbox import load_teacher_outputs
from edgekd.distill.teacher_cache import TeacherCache, TeacherOutputs, cache_key, topk_fill
from edgekd.errors import TeacherOutputError

TEACHER = "a" * 64
DATA = "digits:train:0f1e2d"


def _logits(n: int = 40, c: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, size=(n, c)).astype(np.float32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


class Counter:
    def __init__(self, logits: np.ndarray) -> None:
        self.logits, self.calls = logits, 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.logits


def test_miss_then_hit_is_memmapped(tmp_path):
    key = cache_key(teacher=TEACHER, data=DATA)
    compute = Counter(_logits())
    first, hit = TeacherCache(tmp_path).get_or_compute(key, compute, meta={"teacher": "mlp"})
    assert not hit and compute.calls == 1
    second, hit = TeacherCache(tmp_path).get_or_compute(key, compute)  # a new cache object: a later run
    assert hit and compute.calls == 1
    assert isinstance(second, TeacherOutputs)
    assert second.topk is None and second.num_classes == 10 and len(second) == 40
    np.testing.assert_array_equal(second.dense(), compute.logits)
    assert isinstance(second.values, np.memmap) and second.dense() is second.values  # no copy
    assert not second.values.flags.writeable

    record = json.loads((tmp_path / f"{key}.json").read_text())
    assert record["parts"] == {"teacher": TEACHER, "data": DATA, "transform": "identity", "topk": None}
    assert record["shape"] == [40, 10] and record["dtype"] == "float32" and record["topk"] is None
    assert record["meta"] == {"teacher": "mlp"} and record["created_at"]
    assert len(record["files"]["values"]["sha256"]) == 64
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind
    assert TeacherCache(tmp_path).get(cache_key(teacher=TEACHER, data="other")) is None


def test_key_parts_change_the_key():
    base = cache_key(teacher=TEACHER, data=DATA)
    assert base == cache_key(teacher=TEACHER, data=DATA, transform="identity", topk=None)
    assert len(base) == 64 and int(base, 16) >= 0
    variants = [
        cache_key(teacher="b" * 64, data=DATA),
        cache_key(teacher=TEACHER, data=DATA + "x"),
        cache_key(teacher=TEACHER, data=DATA, transform="hflip"),
        cache_key(teacher=TEACHER, data=DATA, topk=5),
        cache_key(teacher=TEACHER, data=DATA, topk=6),
    ]
    assert len({base, *variants}) == 6
    with pytest.raises(ValueError):
        cache_key(teacher="", data=DATA)
    with pytest.raises(ValueError):
        cache_key(teacher=TEACHER, data=DATA, topk=0)


def test_truncated_npy_is_recomputed_with_a_warning(tmp_path, caplog):
    cache = TeacherCache(tmp_path)
    key = cache_key(teacher=TEACHER, data=DATA)
    compute = Counter(_logits())
    entry, _ = cache.get_or_compute(key, compute)
    path = entry.path
    del entry
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    with caplog.at_level(logging.WARNING, logger="edgekd.distill.teacher_cache"):
        again, hit = cache.get_or_compute(key, compute)
    assert not hit and compute.calls == 2
    assert any("corrupt" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    np.testing.assert_array_equal(again.dense(), compute.logits)
    assert path.stat().st_size == size
    assert cache.get_or_compute(key, compute)[1] and compute.calls == 2


def test_flipped_bytes_and_bad_sidecar_are_misses(tmp_path, caplog):
    cache = TeacherCache(tmp_path)
    key = cache_key(teacher=TEACHER, data=DATA)
    entry = cache.put(key, _logits())
    path = entry.path
    del entry
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only the sha256 sees it
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert cache.get(key) is None
    assert "sha256" in caplog.text

    cache.put(key, _logits())
    (tmp_path / f"{key}.json").write_text("{not json")
    assert cache.get(key) is None

    cache.put(key, _logits())
    path.unlink()  # sidecar without its data
    assert cache.get(key) is None


def test_interrupted_write_leaves_no_trusted_file(tmp_path, monkeypatch):
    cache = TeacherCache(tmp_path)
    key = cache_key(teacher=TEACHER, data=DATA)

    def crash(fh, array, allow_pickle=False):
        fh.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(np, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.put(key, _logits())
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    assert cache.get(key) is None


def test_topk_round_trip_keeps_argmax_and_order(tmp_path):
    n, c, k = 64, 1000, 5
    logits = _logits(n, c, seed=1)
    logits[0] = 0.0  # a row of ties: the fill must still sit below the kept value
    key = cache_key(teacher=TEACHER, data=DATA, topk=k)
    entry, hit = TeacherCache(tmp_path).get_or_compute(key, lambda: logits)
    assert not hit and entry.topk == k and entry.num_classes == c
    assert entry.values.shape == (n, k) and entry.values.dtype == np.float32
    assert entry.indices.shape == (n, k) and entry.indices.dtype == np.int32

    dense = entry.dense()
    assert dense.shape == (n, c) and dense.dtype == np.float32
    np.testing.assert_array_equal(dense.argmax(axis=1), entry.indices[:, 0])
    np.testing.assert_array_equal(dense.argmax(axis=1)[1:], logits.argmax(axis=1)[1:])
    top = np.argsort(-dense, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(top, entry.indices)
    np.testing.assert_array_equal(top[1:], np.argsort(-logits, axis=1, kind="stable")[1:, :k])

    # the kept entries are the teacher's log-probabilities; the rest share the remaining mass equally
    logp = _log_softmax(logits)
    np.testing.assert_allclose(dense[np.arange(n)[:, None], entry.indices],
                               np.take_along_axis(logp, entry.indices.astype(np.intp), axis=1), atol=1e-5)
    np.testing.assert_allclose(np.exp(dense.astype(np.float64)).sum(axis=1), 1.0, atol=1e-4)
    fill = topk_fill(entry.values, c)
    assert (fill < entry.values[:, -1]).all()
    missing = np.ones((n, c), dtype=bool)
    np.put_along_axis(missing, entry.indices.astype(np.intp), False, axis=1)
    np.testing.assert_array_equal(dense[missing].reshape(n, c - k), np.repeat(fill[:, None], c - k, axis=1))

    again, hit = TeacherCache(tmp_path).get_or_compute(key, lambda: pytest.fail("recomputed"))
    assert hit
    np.testing.assert_array_equal(again.dense(), dense)


def test_files_are_plain_npy_without_pickle(tmp_path):
    cache = TeacherCache(tmp_path)
    dense = cache.put(cache_key(teacher=TEACHER, data=DATA), _logits())
    topk = cache.put(cache_key(teacher=TEACHER, data=DATA, topk=3), _logits())
    files = sorted(tmp_path.glob("*.npy"))
    assert len(files) == 3  # dense values, top-k values, top-k indices
    for path in files:
        assert path.read_bytes()[:6] == b"\x93NUMPY"
        array = np.load(path, allow_pickle=False)
        assert array.dtype in (np.float32, np.int32) and array.dtype.hasobject is False
    assert {p.suffix for p in tmp_path.iterdir()} == {".npy", ".json"}
    np.testing.assert_array_equal(np.load(dense.path, allow_pickle=False), _logits())
    assert np.load(topk.path, allow_pickle=False).shape == (40, 3)


def test_entries_are_black_box_sources(tmp_path):
    cache = TeacherCache(tmp_path)
    logits = _logits(30, 12)
    dense = cache.put(cache_key(teacher=TEACHER, data=DATA), logits)
    out = load_teacher_outputs(dense.path, num_samples=30, num_classes=12)
    np.testing.assert_array_equal(out, logits)
    topk = cache.put(cache_key(teacher=TEACHER, data=DATA, topk=4), logits)
    out = load_teacher_outputs(topk.path, num_samples=30, num_classes=12, kind="logits")
    np.testing.assert_array_equal(out, topk.dense())
    np.testing.assert_array_equal(out.argmax(axis=1), logits.argmax(axis=1))
    with pytest.raises(TeacherOutputError, match=r"\(30, 10\)"):
        load_teacher_outputs(topk.path, num_samples=30, num_classes=10)


def test_put_rejects_bad_outputs(tmp_path):
    cache = TeacherCache(tmp_path)
    key = cache_key(teacher=TEACHER, data=DATA)
    bad = _logits()
    bad[7, 2] = np.nan
    with pytest.raises(TeacherOutputError, match="row 7"):
        cache.put(key, bad)
    with pytest.raises(TeacherOutputError, match=r"\(10,\)"):
        cache.put(key, np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError):
        cache.put(key, _logits(), topk=11)
    with pytest.raises(ValueError):
        cache.put("../escape", _logits())
    assert list(tmp_path.iterdir()) == []


def test_put_returns_what_it_stored_when_another_writer_replaces_the_files(tmp_path, monkeypatch):
    """Two processes storing one key with bit-different logits (another CPU): the other one's values and indices
    can land between this one's files and its sidecar. put read the files back unverified and returned the other
    writer's top-k beside its own record, silently; it returns the arrays it stored now, and a later get sees
    that the files do not match the sidecar and recomputes."""
    from edgekd.distill import teacher_cache

    key = cache_key(teacher=TEACHER, data=DATA, topk=3)
    mine, theirs = _logits(seed=1), _logits(seed=2)
    write_sidecar = teacher_cache.atomic_write_json

    def other_writer_first(path, record):
        monkeypatch.setattr(teacher_cache, "atomic_write_json", write_sidecar)
        TeacherCache(tmp_path).put(key, theirs)  # the whole of the other process's put, then this sidecar
        write_sidecar(path, record)

    monkeypatch.setattr(teacher_cache, "atomic_write_json", other_writer_first)
    entry = TeacherCache(tmp_path).put(key, mine)
    np.testing.assert_array_equal(entry.indices[:, 0], mine.argmax(axis=1))
    assert not entry.values.flags.writeable and mine.flags.writeable  # the caller's array stays its own
    assert TeacherCache(tmp_path).get(key) is None  # the files are the other writer's: not trusted
