"""The SQLite bench history: recording sessions and comparing them against the noise."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from edgekd.bench import history, stats
from edgekd.bench.result import BenchResult
from edgekd.errors import BenchError

from conftest import StepReporter, ctrl_c


def _result(name: str, center_us: float, seed: int, rounds: list[float], *, fmt: str = "onnx",
            precision: str = "fp32", device: str = "host", threads: int = 1, batch_size: int = 1,
            inputs: list[dict] | None = None, harness: str = "runner",
            cpu: tuple[str, str] | None = None) -> BenchResult:
    rng = np.random.default_rng(seed)
    ns = (rng.normal(center_us, center_us * 0.02, 3000) * 1000).astype(np.int64).tolist()
    system = {"info": {"system": {"machine": cpu[0], "cpu_model": cpu[1]}}} if cpu else {}
    return BenchResult(artifact={"name": name, "sha256": name * 4, "format": fmt, "precision": precision},
                       device={"name": device, **system}, settings={"threads": threads, "batch_size": batch_size},
                       latency_us=stats.summarize(ns), round_p50_us=rounds, latencies_ns=ns, harness=harness,
                       inputs=inputs if inputs is not None else [{"name": "x", "shape": [batch_size, 16],
                                                                  "dtype": "float32"}])


def test_compare_flags_a_real_slowdown_and_not_noise(tmp_path):
    db = tmp_path / "h.sqlite"
    a = history.record([_result("m", 10.0, 0, [10.0, 10.1]), _result("n", 5.0, 1, [5.0, 5.05])], db)
    b = history.record([_result("m", 20.0, 2, [20.0, 20.2]), _result("n", 5.01, 3, [5.0, 5.05])], db)
    assert [s["session"] for s in history.sessions(db)] == [b, a]
    rows = {r["artifact"]: r for r in history.compare(path=db)["rows"]}  # newest vs the one before, same device
    assert rows["m"]["significant"] and 95 < rows["m"]["p50_change_pct"] < 105
    assert not rows["n"]["significant"]


def test_a_change_smaller_than_the_round_spread_is_within_noise(tmp_path):
    db = tmp_path / "h.sqlite"
    before, after = _result("m", 10.0, 0, [10.0, 13.0]), _result("m", 11.0, 1, [11.0, 11.2])
    a, b = history.record([before], db), history.record([after], db)
    (row,) = history.compare(a, b, path=db)["rows"]
    assert stats.compare(before.latencies_ns, after.latencies_ns)["significant"]  # calls as samples: a "change"…
    low, high = row["p50_change_pct_ci95"]
    assert low < 0 < high and not row["significant"]  # …the rounds, fresh processes, say noise
    # ± half the range of the larger spread (10 and 13 µs: ±15%), as the bench table shows it
    assert row["round_spread_plusminus_pct"] == pytest.approx(15.0) and row["rounds"] == [2, 2]


def test_one_round_gives_no_verdict(tmp_path):
    db = tmp_path / "h.sqlite"
    a = history.record([_result("m", 10.0, 0, [10.0])], db)
    b = history.record([_result("m", 20.0, 1, [20.0, 20.1])], db)
    (row,) = history.compare(a, b, path=db)["rows"]
    assert row["p50_change_pct_ci95"] is None and not row["significant"]


def test_missing_history_and_unknown_session_are_clear_errors(tmp_path):
    with pytest.raises(BenchError, match="no bench history"):
        history.sessions(tmp_path / "none.sqlite")
    db = tmp_path / "h.sqlite"
    history.record([_result("m", 10.0, 0, [10.0])], db)
    with pytest.raises(BenchError, match="no earlier session"):
        history.compare(path=db)
    with pytest.raises(BenchError, match="no bench session 'nope'"):
        history.compare("nope", None, path=db)
    assert not (tmp_path / "none.sqlite").exists()


def test_results_of_one_name_that_measured_different_things_are_not_paired(tmp_path):
    """Same name, other format / precision / device / threads / batch / sequence length: not a change, never
    compared; the reason names the difference. The one row that matches is still compared."""
    db = tmp_path / "h.sqlite"
    seq = lambda n: [{"name": "ids", "shape": [1, n], "dtype": "int64"}]  # noqa: E731
    a = history.record([_result("m", 10.0, 0, [10.0, 10.1]), _result("q", 10.0, 1, [10.0, 10.1]),
                        _result("t", 10.0, 2, [10.0, 10.1], inputs=seq(128)), _result("b", 10.0, 3, [10.0, 10.1]),
                        _result("f", 10.0, 4, [10.0, 10.1]), _result("gone", 1.0, 5, [1.0, 1.1]),
                        _result("h", 10.0, 14, [10.0, 10.1])], db)
    b = history.record([_result("m", 4.0, 6, [4.0, 4.1], threads=4),
                        _result("q", 5.0, 7, [5.0, 5.1], precision="int8_dynamic"),
                        _result("t", 5.0, 8, [5.0, 5.1], inputs=seq(64)),
                        _result("b", 50.0, 9, [50.0, 50.1], batch_size=8),
                        _result("f", 9.0, 10, [9.0, 9.1], fmt="tflite"), _result("f", 11.0, 11, [11.0, 11.1]),
                        _result("new", 1.0, 12, [1.0, 1.1]), _result("h", 8.0, 15, [8.0, 8.1], harness="native")], db)
    found = history.compare(a, b, path=db)
    (row,) = found["rows"]
    assert row["artifact"] == "f" and row["identity"]["format"] == "onnx" and row["significant"]
    assert 5 < row["p50_change_pct"] < 15 and row["unrecorded"] == []
    reasons = {(u["artifact"], u["side"]): u["reason"] for u in found["unpaired"]}
    assert reasons == {("m", "both"): "threads 1 → 4", ("q", "both"): "precision fp32 → int8_dynamic",
                       ("t", "both"): "input shapes ids [1, 128] → ids [1, 64]",
                       ("b", "both"): "batch 1 → 8; input shapes x [1, 16] → x [8, 16]",
                       ("f", "both"): "format onnx → tflite", ("h", "both"): "harness runner → native",
                       ("new", "b"): "not measured in the earlier session",
                       ("gone", "a"): "not measured in the later session"}

    other = history.record([_result("m", 10.0, 13, [10.0, 10.1], device="pi")], db)
    with pytest.raises(BenchError, match="share no comparable result") as err:
        history.compare(a, other, path=db)
    assert "m: device host → pi" in err.value.why


def test_one_device_name_on_two_cpus_is_not_compared(tmp_path):
    """`host` on a laptop and on a CI machine sharing a history: an x86 Xeon's session and an Arm board's were
    compared as one device's change ("within noise, -12%")."""
    db = tmp_path / "h.sqlite"
    xeon, arm = ("x86_64", "Intel(R) Xeon(R) Processor"), ("aarch64", "Cortex-A53")
    a = history.record([_result("m", 10.0, 0, [10.0, 10.1], cpu=xeon), _result("n", 5.0, 1, [5.0, 5.1], cpu=xeon)], db)
    b = history.record([_result("m", 30.0, 2, [30.0, 30.2], cpu=arm), _result("n", 5.0, 3, [5.0, 5.1], cpu=xeon)], db)
    found = history.compare(a, b, path=db)
    assert [r["artifact"] for r in found["rows"]] == ["n"]
    (unpaired,) = found["unpaired"]
    assert unpaired["artifact"] == "m" and unpaired["reason"] == (
        "cpu x86_64 Intel(R) Xeon(R) Processor → aarch64 Cortex-A53")


def _schema_before(column: str) -> str:
    """history._SCHEMA as it was before `column` (its declaration, e.g. 'sampled INTEGER') was added."""
    old = history._SCHEMA.replace(f",\n    {column}", "")
    assert column.split()[0] not in old
    return old


def _history_with_one_old_row(tmp_path: Path, column: str) -> Path:
    """A history file written before `column` was added, holding one result of 'm' in session 'old'."""
    import sqlite3

    db = tmp_path / "h.sqlite"
    with sqlite3.connect(db) as con:
        con.executescript(_schema_before(column))
        con.execute("INSERT INTO results (session, created_at, device, artifact_name, artifact_sha256, runs,"
                    " round_p50_us) VALUES ('old', 't', 'host', 'm', 'mmmm', 3, '[10.0, 10.1]')")
    return db


def test_a_history_from_before_identities_still_compares(tmp_path):
    """A history written by an older edgekd (no identity column, results without input shapes) gains the
    column; its rows pair on what they recorded (format, precision, device, harness) and the rest is named."""
    import sqlite3

    db = tmp_path / "h.sqlite"
    with sqlite3.connect(db) as con:
        con.executescript(_schema_before("identity TEXT"))
        con.execute("INSERT INTO results (session, created_at, device, artifact_name, artifact_sha256, format,"
                    " precision, harness, p50_us, runs, unstable, round_p50_us, latencies) VALUES"
                    " ('old', 't', 'host', 'm', 'mmmm', 'onnx', 'fp32', 'runner', 10, 3, 0, '[10.0, 10.1]', ?)",
                    (history._pack([10_000, 10_100, 10_050]),))
        con.execute("INSERT INTO results (session, created_at, device, artifact_name, artifact_sha256, format,"
                    " precision, harness, p50_us, runs, unstable, round_p50_us, latencies) VALUES"
                    " ('old', 't', 'host', 'q', 'qqqq', 'onnx', 'fp32', 'runner', 10, 3, 0, '[10.0, 10.1]', ?)",
                    (history._pack([10_000, 10_100, 10_050]),))
    new = history.record([_result("m", 20.0, 0, [20.0, 20.2]), _result("q", 5.0, 1, [5.0, 5.1], fmt="tflite")], db)
    found = history.compare("old", new, path=db)
    (row,) = found["rows"]
    assert row["artifact"] == "m" and row["significant"]
    assert row["unrecorded"] == ["threads", "batch", "input shapes"]
    assert found["unpaired"] == [{"artifact": "q", "side": "both", "reason": "format onnx → tflite"}]


def test_a_sustained_bench_runs_the_time_asked_past_max_runs(tmp_path):
    """--sustained of a µs model ran out of max_runs (5,000,000) in seconds and stopped short of the minutes
    asked. Now it runs the whole time: max_runs (1,000 here; 200,000 by default) bounds the calls kept."""
    import edgekd
    from edgekd.bench.harness import SUSTAINED_WINDOWS, sustained_settings
    from edgekd.export.onnx import write_identity_model

    model = write_identity_model(tmp_path / "m.onnx", (8,), 18)
    settings = replace(sustained_settings(0.05), max_runs=1000, warmup_runs=5, warmup_min_seconds=0.01)  # 3 s
    (result,) = edgekd.bench([model], settings=settings, results_dir=tmp_path / "results")
    trend = result.sustained
    assert trend["seconds"] >= 3.0 and trend["calls"] > 1000 and "cut_short" not in trend
    assert trend["sampled"] == len(result.latencies_ns) == result.latency_us["n"] == 1000
    windows = trend["windows"]
    assert len(windows) == SUSTAINED_WINDOWS and sum(w["calls"] for w in windows) == trend["calls"]
    assert all(w["sampled"] == min(w["calls"], 1000) and w["min_us"] <= w["p50_us"] <= w["p99_us"] <= w["max_us"]
               for w in windows)
    assert trend["last_over_first"] == windows[-1]["p50_us"] / windows[0]["p50_us"]
    assert BenchResult.load(result.saved_path).sustained == trend


def test_what_a_sustained_run_prints():
    from edgekd.bench.harness import sustained_text, sustained_trend

    window = {"start_ns": 0, "elapsed_ns": 30_000_000_000, "calls": 9_000_000, "kept": 200_000, "busy_ns": 1,
              "p50_ns": 3000.0, "p90_ns": 3100.0, "p99_ns": 5000.0, "min_ns": 2900, "max_ns": 90000}
    later = {**window, "start_ns": 30_000_000_000, "p50_ns": 4500.0}
    raw = {"timed": {"runs": 18_000_000, "seconds": 60.01, "kept": 200_000}, "windows": [window, later]}
    assert sustained_text(sustained_trend(raw)) == ("p50 over time (µs) 0s:3.00  30s:4.50; last/first 1.50×; "
                                                   "18,000,000 calls in 60 s (overall percentiles from a uniform "
                                                   "sample of 200,000)")
    slow = {"timed": {"runs": 40, "seconds": 60.5, "kept": 40}, "windows": [{**window, "calls": 40, "kept": 40}]}
    assert sustained_text(sustained_trend(slow)) == ("p50 over time (µs) 0s:3.00; 40 calls in 60 s (each call's time "
                                                    "kept)")


def test_a_windows_p99_is_kept_only_when_the_window_had_calls_enough_for_one():
    """The tables show no p99 of fewer than stats.MIN_P99_SAMPLES calls; a sustained window's p99 was kept from
    any number of calls (40 here: the largest of them, not an estimate)."""
    from edgekd.bench.harness import sustained_trend

    window = {"start_ns": 0, "elapsed_ns": 30_000_000_000, "calls": 9_000_000, "kept": 200_000, "busy_ns": 1,
              "p50_ns": 3000.0, "p90_ns": 3100.0, "p99_ns": 5000.0, "min_ns": 2900, "max_ns": 90000}
    few = {**window, "start_ns": 30_000_000_000, "calls": 40, "kept": 40}
    enough = {**window, "start_ns": 60_000_000_000, "calls": stats.MIN_P99_SAMPLES, "kept": stats.MIN_P99_SAMPLES}
    trend = sustained_trend({"timed": {"runs": 9_000_408, "seconds": 90.0, "kept": 200_000},
                             "windows": [window, few, enough]})
    assert [w["p99_us"] for w in trend["windows"]] == [5.0, None, 5.0]
    assert [w["p90_us"] for w in trend["windows"]] == [3.1, 3.1, 3.1]


def test_the_bench_table_says_a_sustained_runs_percentiles_are_of_a_sample():
    from rich.console import Console

    from edgekd.console import bench_table

    result = _result("m", 10.0, 0, [10.0])  # 3,000 calls' times
    result.sustained = {"windows": [], "last_over_first": None, "calls": 7_013_000, "seconds": 60.0, "sampled": 3000}
    console = Console(record=True, width=250)
    console.print(bench_table([result]))
    assert "7013000 (3000 sampled)" in console.export_text()


def test_a_sustained_result_written_before_windows_still_loads(tmp_path):
    old = _result("m", 10.0, 0, [10.0]).model_dump(mode="json", by_alias=True)
    old["sustained"] = {"windows": [{"t_start_s": 0.0, "p50_us": 3.4, "calls": 500_000}], "last_over_first": 1.0,
                        "calls": 5_000_000, "seconds": 9.1, "cut_short": "stopped at 5,000,000 calls after 9 s"}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    assert BenchResult.load(path).sustained == old["sustained"]
    from edgekd.bench.harness import sustained_text

    assert sustained_text(old["sustained"]) == ("p50 over time (µs) 0s:3.40; last/first 1.00×; 5,000,000 calls in 9 s "
                                                "(each call's time kept); stopped at 5,000,000 calls after 9 s")


def test_the_p50s_shown_are_the_ones_the_change_compares(tmp_path):
    """A fast round times more calls in the same seconds than a slow one, so the median of all calls leans to
    it: before, rounds 10 and 13 µs showed p50 10.0 (the fast round's), after, 11.0 and 11.2 showed 11.1, a
    +11% beside a change of -2.7% computed from the rounds. The p50s shown are the rounds' (geometric mean),
    which the change and its interval compare."""
    db = tmp_path / "h.sqlite"

    def rounds_of(calls: dict[float, int]) -> BenchResult:
        ns = [int(us * 1000) for us, n in calls.items() for _ in range(n)]
        return BenchResult(artifact={"name": "m", "sha256": "m" * 64, "format": "onnx", "precision": "fp32"},
                           device={"name": "host"}, settings={"threads": 1, "batch_size": 1},
                           latency_us=stats.summarize(ns), round_p50_us=list(calls), latencies_ns=ns)

    a = history.record([rounds_of({10.0: 1300, 13.0: 1000})], db)
    b = history.record([rounds_of({11.0: 1000, 11.2: 1000})], db)
    (row,) = history.compare(a, b, path=db)["rows"]
    assert row["p50_a_us"] == pytest.approx((10.0 * 13.0) ** 0.5)
    assert row["p50_b_us"] == pytest.approx((11.0 * 11.2) ** 0.5)
    assert (row["p50_b_us"] / row["p50_a_us"] - 1) * 100 == pytest.approx(row["p50_change_pct"])


def test_the_default_earlier_session_is_the_one_before_b(tmp_path):
    """compare(b=S2) compares S2 with S1, the session before it on its device; it used to take the newest other
    one, S3, and show a change from a later session to an earlier one."""
    db = tmp_path / "h.sqlite"
    s1, s2, s3 = (history.record([_result("m", 10.0, seed, [10.0, 10.1])], db) for seed in range(3))
    history.record([_result("m", 10.0, 3, [10.0, 10.1], device="pi")], db)  # another device: never the default
    assert history.compare(b=s2, path=db)["a"] == s1
    assert history.compare(path=db, device="host")["a"] == s2 and history.compare(b=s3, path=db)["a"] == s2
    with pytest.raises(BenchError, match="no earlier session on device 'host'"):
        history.compare(b=s1, path=db)


def test_a_history_corrupt_past_its_header_is_a_clear_error(tmp_path):
    """Pages in the middle of the file overwritten (its header and size intact): reading it used to escape as a
    raw sqlite3.DatabaseError (`edgekd history` and `compare`: "internal error")."""
    db = tmp_path / "h.sqlite"
    for seed in range(12):
        history.record([_result("m", 10.0, seed, [10.0, 10.1])], db)
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(b"\xff" * 4096 * 4)
    for read in (lambda: history.sessions(db), lambda: history.compare(path=db)):
        with pytest.raises(BenchError, match="cannot use the bench history") as err:
            read()
        assert "malformed" in err.value.why and "move it aside" in err.value.fix


def test_an_unpaired_row_is_explained_by_its_closest_name_mate(tmp_path):
    """Earlier: m in FP32 and in INT8 at 1 thread; later: m in INT8 at 4 threads. What keeps it from a pairing is
    the threads; the reason used to be the first name-mate's, "precision fp32 → int8_static; threads 1 → 4"."""
    db = tmp_path / "h.sqlite"
    a = history.record([_result("m", 10.0, 0, [10.0, 10.1]), _result("m", 8.0, 1, [8.0, 8.1], precision="int8_static"),
                        _result("n", 1.0, 2, [1.0, 1.1])], db)
    b = history.record([_result("m", 4.0, 3, [4.0, 4.1], precision="int8_static", threads=4),
                        _result("n", 1.0, 4, [1.0, 1.1])], db)
    assert history.compare(a, b, path=db)["unpaired"] == [{"artifact": "m", "side": "both", "reason": "threads 1 → 4"}]


def test_another_programs_database_is_neither_read_as_a_history_nor_written_into(tmp_path):
    """--history at another tool's SQLite file: edgekd created its table there, `history` and `compare` then
    said 'no bench sessions' and `bench` recorded into the other program's database."""
    import sqlite3

    foreign = tmp_path / "notes.sqlite"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    for use in (lambda: history.sessions(foreign), lambda: history.compare(path=foreign),
                lambda: history.record([_result("m", 10.0, 0, [10.0])], foreign)):
        with pytest.raises(BenchError, match="is not an edgekd bench history") as err:
            use()
        assert "notes" in err.value.why and "export/history.sqlite" in err.value.fix
    with sqlite3.connect(foreign) as con:
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["notes"]
    history.record([_result("m", 10.0, 0, [10.0])], tmp_path / "new.sqlite")  # a new file still starts a history
    assert len(history.sessions(tmp_path / "new.sqlite")) == 1


def test_a_sustained_result_records_every_call_as_runs_and_its_sample_apart(tmp_path):
    """`runs` of a --sustained result was its sample (200,000 kept calls by default), not the millions it timed."""
    import sqlite3

    db = tmp_path / "h.sqlite"
    plain, sustained = _result("m", 10.0, 0, [10.0]), _result("n", 10.0, 1, [10.0])  # 3,000 calls' times each
    sustained.sustained = {"windows": [], "last_over_first": None, "calls": 7_013_000, "seconds": 60.0,
                           "sampled": 3000}
    history.record([plain, sustained], db)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT artifact_name, runs, sampled FROM results ORDER BY id").fetchall()
    assert rows == [("m", 3000, 3000), ("n", 7_013_000, 3000)]


def test_a_history_from_before_the_sampled_column_gains_it_and_keeps_its_rows(tmp_path):
    import sqlite3

    db = _history_with_one_old_row(tmp_path, "sampled INTEGER")
    history.record([_result("m", 10.0, 0, [10.0, 10.1])], db)
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT runs, sampled FROM results ORDER BY id").fetchall() == [(3, None), (3000, 3000)]


def test_two_processes_upgrading_an_old_history_at_once_both_succeed(tmp_path):
    """Both see no identity column and add it; the second's ALTER TABLE failed with 'duplicate column'."""
    import sqlite3

    db = tmp_path / "h.sqlite"
    with sqlite3.connect(db) as con:
        con.executescript(_schema_before("identity TEXT"))
    first, second = sqlite3.connect(db), sqlite3.connect(db)
    history._add_column(first, "identity", "TEXT")
    first.commit()
    history._add_column(second, "identity", "TEXT")  # what the slower process does: the column is there already
    assert "identity" in {row[1] for row in second.execute("PRAGMA table_info(results)")}
    first.close()
    second.close()


def test_the_default_earlier_session_is_the_last_that_measured_any_of_bs_artifacts(tmp_path):
    """A bench that a device failure cut short keeps its finished results in one session, and `--resume` records
    the rest in another: by default compare took that one for the rest's earlier session, shared no artifact with
    it and stopped ("share no artifact"), though the full bench before had measured them all."""
    db = tmp_path / "h.sqlite"
    full = history.record([_result("m", 10.0, 0, [10.0, 10.1]), _result("n", 5.0, 1, [5.0, 5.05])], db)
    history.record([_result("m", 10.0, 2, [10.0, 10.1])], db)  # kept before the device failed
    resumed = history.record([_result("n", 5.0, 3, [5.0, 5.05])], db)
    found = history.compare(path=db)
    assert found["b"] == resumed and found["a"] == full and [r["artifact"] for r in found["rows"]] == ["n"]


def test_the_default_earlier_session_is_the_last_that_measured_bs_artifacts_the_same_way(tmp_path):
    """Bench at 1 thread, try --threads 4 once, bench at 1 thread again: `edgekd compare` took the 4-thread session
    (it measured the same name) and stopped with "share no comparable result", though the first one was comparable.
    With no comparable session at all, the error still names what differs."""
    db = tmp_path / "h.sqlite"
    first = history.record([_result("m", 10.0, 0, [10.0, 10.1])], db)
    history.record([_result("m", 4.0, 1, [4.0, 4.1], threads=4)], db)
    again = history.record([_result("m", 10.0, 2, [10.0, 10.1])], db)
    found = history.compare(path=db)
    assert found["b"] == again and found["a"] == first and [r["artifact"] for r in found["rows"]] == ["m"]

    only = tmp_path / "only.sqlite"
    history.record([_result("m", 10.0, 0, [10.0, 10.1])], only)
    history.record([_result("m", 4.0, 1, [4.0, 4.1], threads=4)], only)
    with pytest.raises(BenchError, match="share no comparable result") as err:
        history.compare(path=only)
    assert "m: threads 1 → 4" in err.value.why


def test_without_an_earlier_session_of_bs_artifacts_the_default_says_so(tmp_path):
    """Bench one model, then another: `edgekd compare` compared the second with the first, said "sessions S1 and S2
    share no artifact" and advised to compare sessions that measured the same ones, naming a session never chosen."""
    db = tmp_path / "h.sqlite"
    history.record([_result("m", 10.0, 0, [10.0, 10.1])], db)
    second = history.record([_result("n", 5.0, 1, [5.0, 5.05]), _result("o", 5.0, 2, [5.0, 5.05])], db)
    with pytest.raises(BenchError, match="no earlier session on device 'host' measured n, o") as err:
        history.compare(path=db)
    assert second in err.value.why and "edgekd compare A B" in err.value.fix


def test_resume_records_a_kept_result_that_never_reached_the_history(tmp_path):
    """A bench killed after saving its result files but before its history transaction committed (SIGKILL, or a
    Ctrl-C in that moment) left complete results that --resume reused without measuring and never recorded:
    the history lost them for good. The crashed state is built directly: results saved, history without them."""
    import edgekd
    from edgekd.bench.harness import BenchSettings
    from edgekd.export.onnx import write_identity_model

    models = [write_identity_model(tmp_path / f"m{i}.onnx", (8 * (i + 1),), 18) for i in range(2)]
    fast = BenchSettings(warmup_runs=2, min_runs=5, min_seconds=0.0, rounds=1)
    first = edgekd.bench(models, settings=fast, results_dir=tmp_path / "res")  # saved; history never written
    db = tmp_path / "h.sqlite"
    resumed = edgekd.bench(models, settings=fast, results_dir=tmp_path / "res", history=db, resume=True)
    assert [r.created_at for r in resumed] == [r.created_at for r in first]  # reused, not measured again
    assert [s["results"] for s in history.sessions(db)] == [2]
    edgekd.bench(models, settings=fast, results_dir=tmp_path / "res", history=db, resume=True)
    assert [s["results"] for s in history.sessions(db)] == [2], "a result already in the history counted twice"


def test_a_bench_resumed_after_ctrl_c_in_its_last_round_is_one_session(tmp_path):
    """A bench stopped in its last round recorded the artifact it had finished as a session of its own, and
    --resume the rest as another: `edgekd history` listed two half sessions for one bench."""
    import edgekd
    from edgekd.bench.harness import BenchSettings
    from edgekd.export.onnx import write_identity_model

    models = [write_identity_model(tmp_path / f"m{i}.onnx", (8 * (i + 1),), 18) for i in range(2)]
    fast = BenchSettings(warmup_runs=2, min_runs=5, min_seconds=0.0, rounds=2)
    db, results = tmp_path / "h.sqlite", tmp_path / "res"
    with pytest.raises(KeyboardInterrupt):
        # 2 artifacts x 2 rounds: step 3 is the first artifact's last round, in the last round
        edgekd.bench(models, settings=fast, results_dir=results, history=db, reporter=StepReporter(ctrl_c, at=3))
    began = history.sessions(db)
    assert [s["results"] for s in began] == [1]  # the finished artifact is in the history at once: nothing lost
    resumed = edgekd.bench(models, settings=fast, results_dir=results, history=db, resume=True)
    assert all(r.complete for r in resumed)
    assert [(s["session"], s["results"]) for s in history.sessions(db)] == [(began[0]["session"], 2)]
    edgekd.bench(models, settings=fast, results_dir=results, history=db)  # a new bench: a session of its own
    assert [s["results"] for s in history.sessions(db)] == [2, 2]


def test_the_history_stores_the_p50_and_interval_the_tables_show(tmp_path):
    """A row held the pooled calls' median and its bootstrap interval (3.744 [3.742, 3.746] µs where the bench
    table showed 4.38 [2.08, 9.25]): the rounds' centre and interval are what every table and `compare` show."""
    import sqlite3

    db = tmp_path / "h.sqlite"
    rounds = [10.0, 13.0, 11.0]
    result = _result("m", 10.0, 0, rounds)
    result.latency_us["ci95_p50_rounds"] = stats.rounds_interval(rounds)
    history.record([result], db)
    with sqlite3.connect(db) as con:
        p50, lo, hi = con.execute("SELECT p50_us, ci_lo_us, ci_hi_us FROM results").fetchone()
    assert p50 == pytest.approx(stats.rounds_center(rounds))
    assert (lo, hi) == pytest.approx(stats.rounds_interval(rounds))
    assert lo < 10.0 and hi > 13.0  # the spread of the rounds, not of the calls of one process


def bench_two_runs(tmp_path):
    """Bench one artifact name as two runs exported it (an Identity graph at opset 17, then 18: two files), then as
    `edgekd export` alone made it (opset 16; its record names no run) beside a bare model file that no record
    describes; returns (history, [session of run r1, of run r2, of the files no run made])."""
    import edgekd
    from edgekd.bench.harness import BenchSettings
    from edgekd.export.formats import ExportOptions
    from edgekd.export.onnx import write_identity_model
    from edgekd.exporter import floor_artifact

    fast = BenchSettings(warmup_runs=2, min_runs=5, min_seconds=0.0, rounds=2)
    db, made = tmp_path / "h.sqlite", []
    for run, opset in (("r1", 17), ("r2", 18), (None, 16)):
        artifact = floor_artifact(tmp_path / str(run) / "artifacts", "onnx", (8,), ExportOptions(opset=opset), run)
        bare = [] if run else [write_identity_model(tmp_path / "bare.onnx", (8,), 18)]
        made.append(edgekd.bench([artifact.path, *bare], settings=fast, results_dir=tmp_path / str(run) / "results",
                                 history=db))
    sessions = [s["session"] for s in reversed(history.sessions(db))]  # oldest first
    assert [r.artifact.get("run") for results in made for r in results] == ["r1", "r2", None, None]
    return db, sessions


def test_the_history_keeps_the_run_a_result_came_from(tmp_path):
    """compare flagged a changed file but could not say which run made either side: the history kept no run."""
    db, (first, second, no_run) = bench_two_runs(tmp_path)
    (row,) = history.compare(first, second, path=db)["rows"]
    assert not row["same_file"] and (row["run_a"], row["run_b"]) == ("r1", "r2")
    (row,) = history.compare(second, no_run, path=db)["rows"]
    assert (row["run_a"], row["run_b"]) == ("r2", None)  # `edgekd export` alone, or a bare file: no run
    assert {s["session"]: s["runs"] for s in history.sessions(db)} == {first: ["r1"], second: ["r2"], no_run: []}


def test_a_history_from_before_the_run_column_gains_it_and_keeps_its_rows(tmp_path):
    import sqlite3

    db = _history_with_one_old_row(tmp_path, "run_name TEXT")
    new = _result("m", 10.0, 0, [10.0, 10.1])
    new.artifact["run"] = "demo"
    later = history.record([new], db)
    (row,) = history.compare("old", later, path=db)["rows"]
    assert (row["run_a"], row["run_b"]) == (None, "demo")


def test_the_bench_table_never_cuts_an_artifact_name():
    """In a log (160 columns) or a 120-column terminal, the artifact column was cut to `student-onnx-in…`: three
    INT8/INT4 rows looked the same. Names now fold onto a second line."""
    from rich.console import Console

    from edgekd.console import bench_table

    names = ["student-onnx-int8_dynamic", "student-onnx-int8_static", "student-onnx-int4"]
    results = [_result(name, 10.0, i, [10.0, 10.4]) for i, name in enumerate(names)]
    for width in (160, 120, 100):
        console = Console(record=True, width=width)
        console.print(bench_table(results))
        text = console.export_text()
        assert "…" not in text, text
        assert all(f"│ {name} " in text for name in names), text  # each whole, on its row's first line
