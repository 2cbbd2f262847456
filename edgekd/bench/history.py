"""SQLite history of bench results, so a run can be compared with an earlier one on the same device.

One row per BenchResult; the raw latencies are stored as a compressed .npy blob (never a pickle) and each
round's p50, which is what a comparison uses as its samples. A row also keeps what it measured beyond the
artifact's name (IDENTITY: format, precision, device and its CPU, threads, batch, input shapes): two results
are only compared when all of it matches.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
import uuid
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np

from edgekd.bench import stats
from edgekd.bench.result import BenchResult
from edgekd.errors import BenchError, first_line

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
    latencies BLOB,
    identity TEXT,
    sampled INTEGER,
    run_name TEXT
);
CREATE INDEX IF NOT EXISTS results_session ON results(session);
"""
# Columns added after the first histories were written: a history without one gains it when opened (ALTER TABLE),
# its old rows holding NULL there. `runs` is every timed call; `sampled` the calls whose times the percentiles and
# the stored latencies are of (fewer than runs when --sustained kept a uniform sample of a long run). `run_name` is
# the `edgekd run` that exported the artifact (its record's lineage), NULL for a model file no run made.
_ADDED_COLUMNS = (("identity", "TEXT"), ("sampled", "INTEGER"), ("run_name", "TEXT"))
# What makes two results of one artifact name comparable: a different value of any of these measures a
# different thing (INT8 vs FP32, 4 threads vs 1, batch 8 vs 1, sequence length 128 vs 64, another device,
# edgekd's runner vs a runtime's own benchmark binary, another CPU under the same device name: `host` on a laptop
# and on a CI machine sharing a history).
IDENTITY = ("format", "precision", "device", "cpu", "threads", "batch_size", "inputs", "harness")
_IDENTITY_LABELS = {"batch_size": "batch", "inputs": "input shapes"}


def check_path(path: Any) -> None:
    """A history given as no path is refused by name: Path() would raise a bare TypeError (path=None)."""
    if not isinstance(path, (str, os.PathLike)):
        raise BenchError(f"the bench history must be a file's path, got {type(path).__name__} {repr(path)[:60]}",
                         fix=f"leave the default, {DEFAULT_PATH}, or give the path of a history file")


def check_usable(path: Path) -> None:
    """Open an existing history before a bench measures anything: a damaged file or another program's
    database was found only when the results were recorded, after every artifact had been measured. A new
    history is made when the first results are recorded (a bench refused before that leaves no file)."""
    check_path(path)
    if Path(path).exists():
        with _open(path):
            pass


def _connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    check_path(path)
    if not create and not Path(path).is_file():
        raise BenchError(f"no bench history at {path}",
                         why="it is a folder" if Path(path).is_dir() else "no benchmark has been recorded there yet",
                         fix="run `edgekd bench ARTIFACT…` (or `edgekd run`), or point --history at the right file")
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), timeout=30)
        try:
            _check_is_history(db, path, create)
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(results)")}
            for column, kind in _ADDED_COLUMNS:
                if column not in columns:
                    _add_column(db, column, kind)
        except BaseException:
            db.close()
            raise
    except (sqlite3.Error, OSError) as exc:
        raise BenchError(f"cannot open the bench history {path}", why=first_line(exc),
                         fix=f"move {path} aside if it is damaged (the next bench starts a new history), or "
                             "give edgekd bench another --history file") from None
    return db


def _check_is_history(db: sqlite3.Connection, path: Path, create: bool) -> None:
    """Refuse another program's database: never read it as a history, nor write edgekd's table into it (an empty
    one becomes a history when `create`)."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "results" not in tables and (tables or not create):
        raise BenchError(f"{path} is not an edgekd bench history",
                         why="it is an SQLite database without edgekd's `results` table"
                             + (f" (it has {', '.join(sorted(tables))})" if tables else ""),
                         fix="point --history at edgekd's history (export/history.sqlite by default), or at a new "
                             "file for a new one")


def _add_column(db: sqlite3.Connection, column: str, kind: str) -> None:
    """Upgrade a history written before `column` (one of _ADDED_COLUMNS) existed. Two processes opening it at
    once may both try; the one that comes second finds the column there, which is what it wanted."""
    try:
        db.execute(f"ALTER TABLE results ADD COLUMN {column} {kind}")  # names from _ADDED_COLUMNS, not user input
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):
            raise


@contextmanager
def _open(path: Path, *, create: bool = True) -> Iterator[sqlite3.Connection]:
    """The history for one read or one transaction (committed, or rolled back on an error), closed after. A
    file corrupt past its header, or held locked by another program beyond the timeout, fails at a query, not
    when opened: that too is a BenchError, not an internal error."""
    db = _connect(path, create=create)
    try:
        with db:
            yield db
    except sqlite3.Error as exc:
        raise BenchError(f"cannot use the bench history {path}", why=str(exc),
                         fix="if another program holds it (locked), retry when it is done; if it is corrupt "
                             "(malformed), move it aside: the next bench starts a new one") from None
    finally:
        db.close()


def _pack(latencies_ns: list[int]) -> bytes:
    """Per-call latencies as stored: int64 ns in .npy form (no pickle), zlib-compressed; read them back with
    np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(latencies_ns, dtype=np.int64), allow_pickle=False)
    return zlib.compress(buffer.getvalue())


def identity(result: BenchResult) -> dict[str, Any]:
    """What a result measured beyond the artifact's name (IDENTITY); None where the result does not say."""
    inputs = [[i.get("name"), i.get("shape")] for i in result.inputs] if result.inputs else None
    system = ((result.device.get("info") or {}).get("system") or {}) if isinstance(result.device, dict) else {}
    cpu = " ".join(str(v) for v in (system.get("machine"), system.get("cpu_model")) if v) or None
    return {"format": result.artifact.get("format"), "precision": result.artifact.get("precision"),
            "device": result.device.get("name"), "cpu": cpu, "threads": result.settings.get("threads"),
            "batch_size": result.settings.get("batch_size"), "inputs": inputs, "harness": result.harness}


def run_of(result: BenchResult) -> str | None:
    """The `edgekd run` that exported the artifact, as its record named it; None for a bare model file (or a
    result saved before results kept it), so a changed file can be traced to the run that made it."""
    run = result.artifact.get("run")
    return run if isinstance(run, str) and run else None


def new_session() -> str:
    """A session id: when it began (sorts by time, reads as a date) and a random tail (two in one second)."""
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def record(results: Iterable[BenchResult], path: Path = DEFAULT_PATH, session: str | None = None) -> str:
    """Store results under one session id (returned): `session`, which may hold results already (a resumed
    bench adds the rest of its results to the session it began), or a new one."""
    session = session or new_session()
    with _open(path) as db:
        for r in results:
            lat = r.latency_us
            # the p50 and interval the tables, the report and `compare` show: the rounds' centre and interval
            # when there are several rounds (rows written by earlier builds hold the pooled calls' median and
            # its bootstrap interval, which is narrower than the spread of fresh processes)
            ci = stats.shown_p50_interval(lat) or (None, None)
            # a --sustained result's latency summary is of a sample of its calls; `calls` counts them all
            calls = (r.sustained or {}).get("calls")
            db.execute(
                "INSERT INTO results (session, created_at, device, artifact_name, artifact_sha256, format, precision,"
                " harness, p50_us, ci_lo_us, ci_hi_us, runs, unstable, device_info, round_p50_us, latencies, identity,"
                " sampled, run_name) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (session, r.created_at, r.device["name"], r.artifact["name"], r.artifact["sha256"],
                 r.artifact.get("format"), r.artifact.get("precision"), r.harness,
                 stats.shown_p50(lat, r.round_p50_us), ci[0], ci[1],
                 calls if calls is not None else lat.get("n"), int(bool(lat.get("unstable"))), json.dumps(r.device),
                 json.dumps(r.round_p50_us), _pack(r.latencies_ns), json.dumps(identity(r)), lat.get("n"),
                 run_of(r)))
    return session


def unrecorded(results: Iterable[BenchResult], path: Path = DEFAULT_PATH) -> list[BenchResult]:
    """The results the history does not hold yet (the same artifact file, device and creation time), in order.

    A bench killed after saving its result files but before its history transaction committed (SIGKILL, a
    Ctrl-C in between) leaves complete results that `--resume` reuses without measuring: they are recorded
    then, and only then, so none is lost and none counted twice."""
    results = list(results)
    if not results:
        return []
    if not Path(path).is_file():
        return results
    with _open(path, create=False) as db:
        held = set(db.execute("SELECT artifact_sha256, device, created_at FROM results").fetchall())
    return [r for r in results if (r.artifact["sha256"], r.device["name"], r.created_at) not in held]


def sessions(path: Path = DEFAULT_PATH, device: str | None = None) -> list[dict[str, Any]]:
    """Past bench sessions, newest first, each with the runs its artifacts came from (sorted; empty when none
    came from a run, or the history is older than the run column)."""
    where, args = ("device = ?", (device,)) if device else ("1", ())
    with _open(path, create=False) as db:
        rows = db.execute("SELECT session, MIN(created_at), device, COUNT(*) FROM results WHERE " + where
                          + " GROUP BY session, device ORDER BY MIN(id) DESC", args).fetchall()
        runs: dict[tuple[str, str], list[str]] = {}
        for s, d, run in db.execute("SELECT DISTINCT session, device, run_name FROM results WHERE run_name IS NOT NULL"
                                    " AND " + where + " ORDER BY run_name", args):
            runs.setdefault((s, d), []).append(run)
    return [{"session": s, "created_at": c, "device": d, "results": n, "runs": runs.get((s, d), [])}
            for s, c, d, n in rows]


class _Row(NamedTuple):
    name: str
    sha256: str
    device: str
    rounds: list[float]
    identity: dict[str, Any]
    run: str | None  # the run that exported the artifact (None: a bare model file, or an older history)


def _session_rows(db: sqlite3.Connection, session: str) -> list[_Row]:
    # Not the latencies: a comparison uses the rounds, and the calls of a long run are megabytes to unpack.
    rows = db.execute("SELECT artifact_name, artifact_sha256, device, round_p50_us, format, precision, harness,"
                      " identity, run_name FROM results WHERE session = ? ORDER BY id", (session,)).fetchall()
    if not rows:
        raise BenchError(f"no bench session '{session}' in the history", why="no result in it carries that session id",
                         fix="list sessions with `edgekd history`")
    out = []
    for name, sha, device, rounds, fmt, precision, harness, ident, run in rows:
        # A row recorded before the identity column knows only its format, precision, device and harness.
        part = "identity"
        try:  # a hand edit or a damaged file: say which part, not the decoder's exception
            known = json.loads(ident) if ident else {"format": fmt, "precision": precision, "device": device,
                                                     "harness": harness}
            measured = {key: known.get(key) for key in IDENTITY}
            part = "round p50s"
            out.append(_Row(name, sha, device, [float(p) for p in json.loads(rounds or "[]")], measured, run))
        except (ValueError, TypeError, AttributeError):
            raise BenchError(f"the result of {name} in bench session '{session}' is damaged",
                             why=f"its stored {part} cannot be decoded",
                             fix="compare other sessions (`edgekd history` lists them), or bench again") from None
    return out


def _differences(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(what differs as "threads 1 → 4", what one side did not record): the second does not stop a pairing."""
    differ, unknown = [], []
    for key in IDENTITY:
        label = _IDENTITY_LABELS.get(key, key)
        if a[key] is None or b[key] is None:
            if a[key] != b[key]:
                unknown.append(label)
        elif a[key] != b[key]:
            show = (lambda v: ", ".join(f"{n} {s}" for n, s in v)) if key == "inputs" else str
            differ.append(f"{label} {show(a[key])} → {show(b[key])}")
    return differ, unknown


def pair(older: list[_Row], newer: list[_Row]) -> tuple[list[tuple[_Row, _Row, list[str]]], list[dict[str, Any]]]:
    """Pair the rows of two sessions on the artifact's name AND its identity (IDENTITY).

    Returns ([(older row, newer row, fields one side did not record)], [unpaired: {artifact, side, reason}]).
    A field only one side recorded (a history from before it was kept) does not stop a pairing, but is
    named. Rows of the same name that differ in a recorded field are never paired: the reason names the
    difference.
    """
    pairs, unpaired, used = [], [], set()
    for new in newer:
        same_name = [(i, old, *_differences(old.identity, new.identity)) for i, old in enumerate(older)
                     if old.name == new.name]
        match = next(((i, old, unknown) for i, old, differ, unknown in same_name if i not in used and not differ),
                     None)
        if match is not None:
            used.add(match[0])
            pairs.append((match[1], new, match[2]))
        elif same_name:
            # the closest name-mate's differences: the first one's could name a field another mate shares
            diffs = min((differ for _, _, differ, _ in same_name), key=len) or ["already paired with another row"]
            unpaired.append({"artifact": new.name, "side": "both", "reason": "; ".join(diffs)})
        else:
            unpaired.append({"artifact": new.name, "side": "b", "reason": "not measured in the earlier session"})
    for i, old in enumerate(older):
        if i not in used and not any(u["artifact"] == old.name and u["side"] == "both" for u in unpaired):
            unpaired.append({"artifact": old.name, "side": "a", "reason": "not measured in the later session"})
    return pairs, unpaired


def _round_spread(*sessions: list[float]) -> float | None:
    """The larger ± of the round p50s of two sessions (stats.round_spread_pct, as the bench table shows it): the
    machine's own noise beside a change; None when neither had two rounds."""
    spreads = [s for s in map(stats.round_spread_pct, sessions) if s is not None]
    return max(spreads) if spreads else None


def _last_to_measure(db: sqlite3.Connection, earlier: list[str], newer: list[_Row]) -> str | None:
    """The newest of `earlier` (newest first) with a result comparable with one of `newer` (same name, measured the
    same way: `pair`), else the newest that measured any of their names (compare then says what differs), else None.
    A bench of some artifacts follows one of others (or history from before a resumed bench joined its
    session): the session just before shares no artifact with it. A bench at other settings in between (`--threads 4` once) measured the same names
    another way: comparing with either found nothing to compare, though an earlier session had it all."""
    names = sorted({row.name for row in newer})
    by_name = None
    for session in earlier:
        if not db.execute("SELECT 1 FROM results WHERE session = ? AND artifact_name IN (%s) LIMIT 1"
                          % ",".join("?" * len(names)), (session, *names)).fetchone():
            continue
        by_name = by_name or session
        try:
            pairs, _ = pair(_session_rows(db, session), newer)
        except BenchError:  # a damaged session is nobody's default; naming it by hand says what is wrong with it
            continue
        if any(old.rounds and new.rounds for old, new, _ in pairs):
            return session
    return by_name


def compare(a: str | None = None, b: str | None = None, *, path: Path = DEFAULT_PATH,
            device: str | None = None) -> dict[str, Any]:
    """Compare session `b` (default: the newest) with `a` (default: the newest one before it on the same device
    that measured any of its artifacts the same way, see `pair`).

    Results are paired on the artifact's name and what they measured (IDENTITY): an INT8 and an FP32 file of
    one name, or one file at 1 and at 4 threads, are different measurements. For each pair: p50 change with a
    95% interval over the rounds of the two sessions (Welch), and whether it exceeds the noise; with one round
    on a side there is no interval and no verdict.

    Returns {"a", "b", "rows": [one per pair; p50_a_us and p50_b_us are the centres of the rounds the change
    compares; round_spread_plusminus_pct the larger ± of either session's round p50s, as the bench table shows it
    (None from one round each); run_a and run_b the runs that exported each side's file, None when unknown],
    "unpaired": [{"artifact", "side" ("a", "b" or "both"), "reason"}]}.
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
            raise BenchError("the bench history is empty", why="no bench has recorded a result in it yet",
                             fix="run `edgekd bench` first")
        b = past[0]["session"]
    if a is not None and a == b:
        raise BenchError(f"both sessions are '{a}'", why="a session compared with itself shows no change",
                         fix="name two different sessions (`edgekd history` lists them)")
    with _open(path, create=False) as db:
        newer = _session_rows(db, b)
        if a is None:
            b_device = newer[0].device
            on_device = [s["session"] for s in sessions(path, b_device)]  # newest first
            earlier = on_device[on_device.index(b) + 1:]  # before b: a b named by hand may not be the newest
            if not earlier:
                raise BenchError(f"no earlier session on device '{b_device}' to compare with",
                                 fix="run `edgekd bench` again, or name two sessions: edgekd compare A B")
            a = _last_to_measure(db, earlier, newer)
            if a is None:  # the session just before would be an arbitrary pick: "share no artifact" with it
                names = sorted({row.name for row in newer})
                raise BenchError(f"no earlier session on device '{b_device}' measured {', '.join(names)}",
                                 why=f"session {b} is the first bench of {'it' if len(names) == 1 else 'them'} there",
                                 fix="bench them again later to compare, or name two sessions: edgekd compare A B "
                                     "(`edgekd history` lists them)")
        older = _session_rows(db, a)
    pairs, unpaired = pair(older, newer)
    out = []
    for old, new, unknown in sorted(pairs, key=lambda p: p[1].name):
        if not old.rounds or not new.rounds:
            unpaired.append({"artifact": new.name, "side": "both", "reason": "no per-round p50 recorded"})
            continue
        # The rounds (fresh processes) of each session are the samples: the calls of one process move together,
        # so an interval over calls would call the machine's own drift a change.
        cmp = stats.compare_rounds(old.rounds, new.rounds, paired=False)
        out.append({"artifact": new.name, "a": a, "b": b, "same_file": old.sha256 == new.sha256,
                    "run_a": old.run, "run_b": new.run,
                    "identity": new.identity, "unrecorded": unknown,
                    "p50_a_us": stats.rounds_center(old.rounds), "p50_b_us": stats.rounds_center(new.rounds),
                    "p50_change_pct": cmp["p50_change_pct"], "p50_change_pct_ci95": cmp["p50_change_pct_ci95"],
                    "round_spread_plusminus_pct": _round_spread(old.rounds, new.rounds),
                    "rounds": [len(old.rounds), len(new.rounds)], "significant": cmp["significant"],
                    "no_interval": cmp["no_interval"]})
    if not out:
        reasons = [f"{u['artifact']}: {u['reason']}" for u in unpaired if u["side"] == "both"]
        if reasons:
            raise BenchError(f"sessions {a} and {b} share no comparable result",
                             why="results of the same name measured different things: " + "; ".join(reasons),
                             fix="compare sessions benchmarked with the same settings (threads, batch size, "
                                 "input shapes) on the same device, of the same format and precision")
        raise BenchError(f"sessions {a} and {b} share no artifact", why="no artifact name was measured in both",
                         fix="compare sessions that measured the same artifacts (`edgekd history` lists them)")
    return {"a": a, "b": b, "rows": out, "unpaired": unpaired}
