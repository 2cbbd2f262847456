"""Shared fixtures: one real run of the tiny recipe, reused by the tests that only read its outputs; and the
skip-or-fail helpers for tests that need something optional (they skip locally, but fail on CI)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Callable, NoReturn

import pytest

TESTS = Path(__file__).parent
TINY_RECIPE = TESTS / "recipes" / "tiny.yaml"


def _restore_launcher_ignored_signals() -> None:
    """A suite started under nohup, or as a background job of a script (`./.ci/run &`), inherits SIGHUP, SIGINT
    and SIGQUIT ignored, and so does every process the tests start: a loopback phone's shell then outlives the
    hang-up adbd sends it, and a host edgekd ignores the Ctrl-C a test sends, and those tests failed for the
    launcher's sake. Python sets its Ctrl-C handler only when SIGINT is not ignored at start-up."""
    import signal

    for signum, handler in ((signal.SIGHUP, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler),
                            (signal.SIGQUIT, signal.SIG_DFL)):
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, handler)


_restore_launcher_ignored_signals()


# Seconds each of the slowest files took in `make test` (one xdist worker's share, 2-core machine; the rest take
# under 15 s). make test hands whole files to its two workers (--dist loadfile) in collection order
# (--no-loadscope-reorder), and _slowest_files_first puts these first, longest first: the longest jobs first is what
# keeps the two workers' loads even at the end, where a slow file handed out last ran alone on one worker. An
# estimate, not a bound: a file missing here, or a changed time, only makes the split less even.
FILE_SECONDS = {
    "test_pipeline.py": 210, "test_cli_mistakes.py": 160, "test_text.py": 135, "test_bench_devices.py": 100,
    "test_bench_adb.py": 85, "test_arm64_board.py": 75, "test_strategies.py": 75, "test_cli_distill_errors.py": 55,
    "test_rundir.py": 45, "test_cli_errors.py": 45, "test_folder_lock.py": 35, "test_ssh_device.py": 35,
    "test_adb_device.py": 30, "test_ddp.py": 30, "test_resume_audit.py": 25, "test_text_checkpoints.py": 20,
    "test_runner.py": 20, "test_qat.py": 15, "test_rerun_relevance.py": 60, "test_report_markdown.py": 15,
}


def pytest_collection_modifyitems(config, items):
    """_slowest_files_first, in xdist's workers (each collects the same order, which the controller hands out)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _slowest_files_first(items)


def _slowest_files_first(items: list) -> None:
    """Stable: each file's tests keep their order, and the files not in FILE_SECONDS theirs after the listed ones."""
    items.sort(key=lambda item: -FILE_SECONDS.get(Path(str(item.path)).name, 0))


def on_ci() -> bool:
    """CI runs with CI=true (and .ci/run fails on any skip): there a test that cannot run must fail."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail_on_ci(reason: str) -> NoReturn:
    """Skip a test this machine cannot run; on CI fail it instead, so a broken setup cannot pass unseen."""
    if on_ci():
        pytest.fail(f"{reason} (on CI this test must run, so it fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def import_or_skip(module: str, reason: str) -> ModuleType:
    """pytest.importorskip for an optional extra, except that on CI a module missing fails the test."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        skip_or_fail_on_ci(f"{reason} ({exc})")


def hold_device_lock(lock: Path) -> int:
    """Hold a device's bench lock as another bench's runner would (on another machine, or another user's): flock
    on the file, our pid in it. Returns the fd; closing it releases the lock."""
    import fcntl
    import json

    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "user": "alice", "from": "192.0.2.7"}).encode())
    return fd


class NoteKeeper:
    """A progress reporter that keeps what a bench notes (and shows no progress)."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def task(self, description, total):
        from edgekd.progress import SilentReporter

        return SilentReporter().task(description, total)

    def note(self, message):
        self.notes.append(message)


class StepReporter:
    """A progress reporter that runs `action` once, when a task has taken `at` steps: the moment a user pulls the
    cable or presses Ctrl-C (see ctrl_c) in a bench or run. `at` may be a function of the task's description and
    total, returning None for tasks it should leave alone."""

    def __init__(self, action: Callable[[], None], at: int | Callable[[str, int], int | None] = 1) -> None:
        self.action: Callable[[], None] | None = action
        self.at = at

    def task(self, description, total):
        reporter, target = self, self.at(description, total) if callable(self.at) else self.at

        class Task:
            done = 0

            def advance(self, steps=1, **fields):
                self.done += steps
                if reporter.action is not None and target is not None and self.done >= target:
                    action, reporter.action = reporter.action, None
                    action()

            def close(self):
                pass

        return Task()

    def note(self, message):
        pass


def ctrl_c() -> None:
    """A Ctrl-C as the CLI turns one into an exception (edgekd.interrupts): raised at the next progress step."""
    raise KeyboardInterrupt


def waiting_on(lock: Path) -> bool:
    """Someone is blocked in flock on `lock` (a '->' line of /proc/locks names its inode)."""
    inode = f":{lock.stat().st_ino} "
    return any("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


def _seed_rngs() -> None:
    from edgekd.distill.trainer import seed_everything

    seed_everything(0)


@pytest.fixture(scope="module", autouse=True)
def _seeded_module():
    """Seed torch and numpy before each module's fixtures. torch draws a random initial seed per process, so an
    unseeded model init made a test's outcome depend on the run: a margin that held on one draw failed on another."""
    _seed_rngs()


@pytest.fixture(autouse=True)
def _seeded_test():
    """The same for each test, so a test's draw does not depend on which tests ran before it in the worker."""
    _seed_rngs()


@pytest.fixture(scope="session", autouse=True)
def _device_locks_of_this_session(tmp_path_factory):
    """Device locks of this test process's own (the processes it starts inherit them): benches on 'host' in two
    xdist workers (make test) would otherwise stop each other, as two benches of one user on one device must,
    or wait for each other's runners on the host's shared lock file (runners over SSH still share it)."""
    from edgekd.bench.device_lock import LOCK_DIR_ENV
    from edgekd.bench.runner import LOCK_ENV

    env = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("device-locks")
    env.setenv(LOCK_DIR_ENV, str(folder))
    env.setenv(LOCK_ENV, str(folder / "device-side.lock"))  # the runners' lock on the device (runner.DeviceLock)
    yield
    env.undo()


# torch's own intra-op thread count in this process before _one_torch_thread set it to 1 (test_process_state runs
# edgekd as a user's process has it).
TORCH_DEFAULT_THREADS: int | None = None
ONE_THREAD_ENV = "OMP_NUM_THREADS"
ONE_THREAD_ENV_SET = False  # conftest set it (it was not in the environment)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op torch thread in each test process, and in the processes it starts (edgekd's CLI, runs): make
    test runs two xdist workers on two cores, and torch's default of a thread per core had each worker's OpenMP
    threads spin against the other worker's (a tiny run took twice as long, in wall and CPU time). The models are
    tiny; no test checks the thread count it trains with (test_process_state restores torch's default)."""
    import torch

    global TORCH_DEFAULT_THREADS, ONE_THREAD_ENV_SET
    TORCH_DEFAULT_THREADS = torch.get_num_threads()
    env = pytest.MonkeyPatch()
    if ONE_THREAD_ENV not in os.environ:
        env.setenv(ONE_THREAD_ENV, "1")
        ONE_THREAD_ENV_SET = True
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(TORCH_DEFAULT_THREADS)
    env.undo()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny recipe run end to end (real training, export, onnxruntime, runner) into a temp folder."""
    import edgekd

    out = tmp_path_factory.mktemp("runs")
    return edgekd.run(edgekd.load_recipe(TINY_RECIPE), output_dir=out)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and tensors: intra-op threads only add overhead (and stall on a busy machine). Restored after
    the module, since the xdist worker goes on with other files."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
