"""Ctrl-C from the `edgekd` process's start to its end: exit 130 and the one-line message, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# The console script's own lines (pyproject's [project.scripts] entry), after a finder that stops the import of
# one module: it says so on stdout and waits there for the signal, so the Ctrl-C lands inside that import.
ENTRY = """
import sys, time

PAUSED = sys.argv.pop(1)

class Pause:
    def find_spec(self, name, path=None, target=None):
        if name == PAUSED:
            sys.meta_path.remove(self)
            print("importing", name, flush=True)
            while True:
                time.sleep(60)
        return None

sys.meta_path.insert(0, Pause())
sys.argv[0] = "edgekd"
from edgekd.entry import main
sys.exit(main())
"""


def _interrupted_in_import(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Start `edgekd ARGS`, send one SIGINT while it imports `module`, and return how it ended."""
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, module, *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        marker = proc.stdout.readline()  # a line the child prints inside that import: no delay, no race
        assert marker == f"importing {module}\n", f"{module} was not imported: {marker!r} {proc.communicate()}"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, marker + stdout, stderr)


STOPPED = "stopped before it finished; run the same command again"
EXPORT_STOPPED = "no artifact was finished; run the same command again to export them all (every one is exported again)"


@pytest.mark.parametrize("module, kept", [
    ("typer", STOPPED),  # the CLI's module imports it, before any command's handler (was: traceback, rc -2)
    ("typer._adapters", STOPPED),  # typer builds the command from the app (was: the same)
    ("torch", EXPORT_STOPPED),  # the command imports the exporter: its own handler is in place
])
def test_ctrl_c_while_the_command_starts_exits_130_with_one_message(tmp_path, module, kept):
    """One SIGINT in `edgekd export` shortly after start ended the process by the signal (rc -2) with a
    traceback: it came while `edgekd.cli` imported typer and rich, before the command's handler was set."""
    from edgekd.checkpoints import save_checkpoint
    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(64,), num_classes=10, width=16, depth=1)
    save_checkpoint(model, tmp_path / "student.pt", role="student", data={"name": "digits"})
    proc = _interrupted_in_import(module, ["export", "student.pt", "--output-dir", "arts", "--precision", "fp32"],
                                  cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines == [f"interrupted: {kept}"], proc.stderr
    assert not (tmp_path / "arts").exists()  # nothing was exported: no folder is left


def test_sigterm_while_the_cli_imports_exits_143(tmp_path):
    """SIGTERM (a cancelled CI job) in the same window: 143 and the command's message, no traceback."""
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, "typer", "history", "--history", "h.sqlite"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout.readline() == "importing typer\n"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    assert stderr.splitlines() == [f"terminated: {STOPPED}"], stderr


def test_the_console_script_is_the_entry_that_handles_ctrl_c():
    """The tests above run `edgekd.entry:main`; the installed `edgekd` command must be that function."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["edgekd"] == "edgekd.entry:main"


# The console script's lines after an exit function (it runs in the interpreter's shutdown, after the command has
# ended) that says so on stdout and waits for the test's go, given as a file once the test has sent the signal.
AT_EXIT = """
import atexit, os, sys, time

GO = sys.argv.pop(1)

def shutting_down():
    print("shutting down", flush=True)
    while not os.path.exists(GO):
        time.sleep(0.01)
    for _ in range(3):  # a Ctrl-C that reached the process is handled by now
        time.sleep(0.01)

atexit.register(shutting_down)
sys.argv[0] = "edgekd"
from edgekd.entry import main
sys.exit(main())
"""


def test_ctrl_c_after_the_command_ended_leaves_its_exit_code(tmp_path):
    """A Ctrl-C in the interpreter's shutdown, after the command had done its work and printed its output, ended
    the process with a traceback of our handler's SystemExit in an exit function, or, once Python had put the
    default action back, killed it by the signal (exit -2)."""
    go = tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", AT_EXIT, str(go), "fields", "data"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "200"})
    try:
        output = []
        for line in proc.stdout:  # the command's table, then the exit function's line
            output.append(line)
            if line == "shutting down\n":
                break
        proc.send_signal(signal.SIGINT)
        go.touch()
        rest, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert output[-1] == "shutting down\n", output
    assert "data.name" in "".join(output)  # the command did its work
    assert proc.returncode == 0, stderr
    assert stderr == "", stderr


_REPEATED = """
import os, signal, sys
from edgekd import interrupts

with interrupts.installed():
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the first: raised where the command is
        print("not stopped")
    except KeyboardInterrupt:
        print("stopping", flush=True)
        os.kill(os.getpid(), signal.SIGINT)  # a second while it unwinds: recorded, not raised again
        print("cleanup finished", interrupts._received, flush=True)
        if len(sys.argv) > 1:
            os.kill(os.getpid(), signal.SIGINT)  # a third: gone at once
            print("never printed")
"""


@pytest.mark.parametrize("third", [False, True])
def test_a_second_ctrl_c_lets_the_cleanup_finish_and_a_third_ends_at_once(third):
    """A second Ctrl-C during the first one's cleanup raised again: once in ~11 tries it landed in jax's gc
    callback, and Python printed 'Exception ignored in: <function _xla_gc_callback>' with a traceback."""
    proc = subprocess.run([sys.executable, "-c", _REPEATED, *(["third"] if third else [])], capture_output=True,
                          text=True, timeout=60)
    assert "stopping\ncleanup finished [2, 2]\n" in proc.stdout and "Traceback" not in proc.stderr, proc
    if third:
        assert proc.returncode == 130 and "never printed" not in proc.stdout
        assert proc.stderr == "interrupted: stopped at once, before its cleanup ended\n"
    else:
        assert proc.returncode == 0
