"""SQLite history of bench results, so a run can be compared with an earlier one on the same device.

One row per BenchResult; the raw latencies are stored as a compressed .npy blob (never a pickle), so a
comparison can bootstrap the interval of the p50 change instead of comparing two bare numbers.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edgekd.bench import stats
from edgekd.bench.result import BenchResult
from edgekd.errors import BenchError

DEFAULT_PATH = Path("export") / "history.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    created_at TEXT NOT NULL,
    device TEXT NOT NULL,
    artifact_name TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    format TEXT, precision TEXT, harness TEXT,
    p50_us REAL, ci_lo_us REAL, ci_hi_us REAL, runs INTEGER, unstable INTEGER,
    device_info TEXT,
    round_p50_us TEXT,
    latencies BLOB
);
CREATE INDEX IF NOT EXISTS results_session ON results(session);
"""


def _connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    if not create and not Path(path).is_file():
        raise BenchError(f"no bench history at {path}", why="no benchmark has been recorded there yet",
                         fix="run `edgekd bench ARTIFACT…` (or `edgekd run`), or point --history at the right file")
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), timeout=30)
        db.executescript(_SCHEMA)
    except (sqlite3.Error, OSError) as exc:
        raise BenchError(f"cannot open the bench history {path}", why=str(exc),
                         fix="check the path (--history) or delete a corrupt history file") from None
    return db


def _pack(latencies_ns: list[int]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(latencies_ns, dtype=np.int64), allow_pickle=False)
    return zlib.compress(buffer.getvalue())


def _unpack(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False)


def record(results: Iterable[BenchResult], path: Path = DEFAULT_PATH, session: str | None = None) -> str:
    """Store results under one session id (returned)."""
    session = session or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    with _connect(path) as db:
        for r in results:
            lat = r.latency_us
            ci = lat.get("ci95_p50") or (None, None)
            db.execute(
                "INSERT INTO results (session, created_at, device, artifact_name, artifact_sha256, format, precision,"
                " harness, p50_us, ci_lo_us, ci_hi_us, runs, unstable, device_info, round_p50_us, latencies)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (session, r.created_at, r.device["name"], r.artifact["name"], r.artifact["sha256"],
                 r.artifact.get("format"), r.artifact.get("precision"), r.harness, lat.get("p50"), ci[0], ci[1],
                 lat.get("n"), int(bool(lat.get("unstable"))), json.dumps(r.device),
                 json.dumps(r.round_p50_us), _pack(r.latencies_ns)))
    return session


def sessions(path: Path = DEFAULT_PATH, device: str | None = None) -> list[dict[str, Any]]:
    """Past bench sessions, newest first."""
    with _connect(path, create=False) as db:
        rows = db.execute(
            "SELECT session, MIN(created_at), device, COUNT(*) FROM results"
            + (" WHERE device = ?" if device else "") + " GROUP BY session, device ORDER BY MIN(id) DESC",
            (device,) if device else ()).fetchall()
    return [{"session": s, "created_at": c, "device": d, "results": n} for s, c, d, n in rows]


def _session_rows(db: sqlite3.Connection, session: str) -> dict[str, tuple[str, str, np.ndarray, list[float]]]:
    rows = db.execute("SELECT artifact_name, artifact_sha256, device, latencies, round_p50_us FROM results"
                      " WHERE session = ?", (session,)).fetchall()
    if not rows:
        raise BenchError(f"no bench session '{session}' in the history", fix="list sessions with `edgekd history`")
    return {name: (sha, device, _unpack(blob), json.loads(rounds or "[]")) for name, sha, device, blob, rounds in rows}


def _round_spread_pct(rounds: list[float]) -> float:
    """How much the p50 moved between the fresh processes of one session (%): the machine's own noise."""
    return (max(rounds) / min(rounds) - 1.0) * 100 if len(rounds) > 1 and min(rounds) > 0 else 0.0


def _p50_us(row: tuple[str, str, np.ndarray, list[float]]) -> float:
    """The session's p50: of all its calls, or (a native tool's summary) the median of its rounds' p50s."""
    return float(np.median(row[2])) / 1000 if len(row[2]) else float(np.median(row[3]))


def compare(a: str | None = None, b: str | None = None, *, path: Path = DEFAULT_PATH,
            device: str | None = None) -> list[dict[str, Any]]:
    """Compare session `b` (default: the newest) with `a` (default: the one before it on the same device).

    For each artifact in both: p50 change with a 95% interval over the rounds of the two sessions (Welch), and
    whether it exceeds the noise; with one round on a side there is no interval and no verdict.
    """
    past = sessions(path, device)
    if b is None:
        if not past:
            every = sessions(path, None) if device is not None else []
            if every:
                raise BenchError(f"no bench session on device '{device}' in the history",
                                 why="devices in it: " + ", ".join(sorted({s["device"] for s in every})),
                                 fix="pick one of them with --device, or run `edgekd bench --device "
                                     f"{device}` first")
            raise BenchError("the bench history is empty", fix="run `edgekd bench` first")
        b = past[0]["session"]
    if a is not None and a == b:
        raise BenchError(f"both sessions are '{a}'", why="a session compared with itself shows no change",
                         fix="name two different sessions (`edgekd history` lists them)")
    with _connect(path, create=False) as db:
        newer = _session_rows(db, b)
        if a is None:
            b_device = next(iter(newer.values()))[1]
            earlier = [s["session"] for s in past if s["device"] == b_device and s["session"] != b]
            if not earlier:
                raise BenchError(f"no earlier session on device '{b_device}' to compare with",
                                 fix="run `edgekd bench` again, or name two sessions: edgekd compare A B")
            a = earlier[0]
        older = _session_rows(db, a)
    out = []
    for name in sorted(set(older) & set(newer)):
        rounds_a, rounds_b = older[name][3], newer[name][3]
        if not rounds_a or not rounds_b:
            continue
        # The rounds (fresh processes) of each session are the samples: the calls of one process move together,
        # so an interval over calls would call the machine's own drift a change.
        cmp = stats.compare_rounds(rounds_a, rounds_b, paired=False)
        out.append({"artifact": name, "a": a, "b": b, "same_file": older[name][0] == newer[name][0],
                    "p50_a_us": _p50_us(older[name]), "p50_b_us": _p50_us(newer[name]),
                    "p50_change_pct": cmp["p50_change_pct"], "p50_change_pct_ci95": cmp["p50_change_pct_ci95"],
                    "round_spread_pct": max(_round_spread_pct(rounds_a), _round_spread_pct(rounds_b)),
                    "rounds": [len(rounds_a), len(rounds_b)], "significant": cmp["significant"]})
    if not out:
        raise BenchError(f"sessions {a} and {b} share no artifact", fix="compare sessions that measured the same artifacts")
    return out
