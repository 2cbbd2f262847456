"""The CLI's progress reporter: bars on a terminal, plain start/end lines in a log."""

from __future__ import annotations

import io

from rich.console import Console

from edgekd.console import RichReporter


def _report(console: Console) -> None:
    with RichReporter(console) as reporter:
        task = reporter.task("distill student", 3)
        for step in range(3):
            task.advance(1, loss=0.5 - 0.1 * step, val_accuracy=float("nan"))
        task.close()
        task.close()  # closing twice (an error path after a normal close) prints nothing more
        reporter.note("teacher: done in 1.0 s")


def test_a_log_gets_one_line_as_work_starts_and_one_as_it_ends() -> None:
    out = io.StringIO()
    _report(Console(file=out, force_terminal=False, width=200))
    lines = out.getvalue().splitlines()
    assert lines[0] == "distill student: started (3 steps)"
    assert lines[1].startswith("distill student: 3/3 in ") and lines[1].endswith(" s  loss 0.300"), lines[1]
    assert lines[2] == "teacher: done in 1.0 s"
    assert len(lines) == 3, lines  # no progress bar drawn at the end on top of the lines
    assert "\x1b[" not in out.getvalue()


def test_a_terminal_gets_a_progress_bar() -> None:
    out = io.StringIO()
    _report(Console(file=out, force_terminal=True, width=200))
    text = out.getvalue()
    assert "started" not in text
    assert "3/3" in text and "━" in text


def test_a_ctrl_c_a_library_swallowed_stops_at_the_next_progress_step():
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import io, os, signal, time
        from rich.console import Console
        from edgekd import interrupts
        from edgekd.console import RichReporter

        with interrupts.installed():
            try:  # a library's bare except around an import: the KeyboardInterrupt is gone
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
            except:  # noqa: E722
                pass
            task = RichReporter(Console(file=io.StringIO())).task("train", 10)
            try:
                task.advance(1)
            except KeyboardInterrupt:
                print("stopped at the next step")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "stopped at the next step", (out.stdout, out.stderr)
