"""The run directory: fixed paths, atomic writes, content hashes and the stage manifest.

Layout of `export/<run-name>/`:
    recipe.yaml      the resolved recipe
    manifest.json    finished stages with the hash of their inputs and outputs
    checkpoints/     model weights (state dicts, loaded with weights_only=True)
    artifacts/       one folder per exported artifact (model file + artifact.json)
    results/         bench results (JSON)
    report/          index.html, report.md, plots
    .edgekd.lock     locked (flock) by the one process writing the folder; see `exclusive_folder`
A stage is skipped when the manifest records the same input hash and its outputs are intact.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from edgekd.errors import EdgeKDError, FolderInUseError, OutputDirError, first_line, printable

try:
    import fcntl
except ModuleNotFoundError:  # no flock (Windows): folders and temp files go unlocked, see exclusive_folder
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

MANIFEST_SCHEMA = "edgekd.manifest/1"
TEMP_SUFFIX = ".tmp"
LOCK_NAME = ".edgekd.lock"
FOLDER_IN_USE_WHY = "one process at a time may write it: two would overwrite each other's files and records"
_TEMP_NAME = re.compile(r"\..+\.(\d+)-[A-Za-z0-9_]+\.tmp")  # .<final name>.<writer pid>-<random>.tmp
_UMASK = os.umask(0o022)  # reading the umask means setting it: put it straight back
os.umask(_UMASK)


def writable_dir(folder: str | os.PathLike[str], fix: str, what: str | None = None) -> Path:
    """Create `folder` and prove it writable now, before minutes of work whose result would have nowhere to go."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # a name of this process's own: with one fixed name, of two processes starting at once one removed the
        # other's probe, which was then told it could not write; named as a temp file, the orphan sweeps remove
        # one a SIGKILL left
        fd, probe = tempfile.mkstemp(prefix=f".write-probe.{os.getpid()}-", suffix=TEMP_SUFFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _unwritable(what or f"cannot write to {folder}", folder, exc, fix) from None
    return folder


@contextlib.contextmanager
def tentative_dir(folder: str | os.PathLike[str], fix: str, what: str | None = None) -> Iterator[Path]:
    """`writable_dir` for a command that may yet fail before it writes there (an unknown device, a missing
    checkpoint): it still fails first on a folder it cannot write, but when the block raises, the folders it
    made are removed again while they hold nothing but lock files no process holds (its own, released by
    then), so a mistake leaves no empty export/results/ behind. A folder with anything else in it stays."""
    folder = Path(folder)
    made = []  # deepest first
    for candidate in [folder, *folder.parents]:
        if candidate.exists() or candidate.is_symlink():
            break
        made.append(candidate)
    writable_dir(folder, fix=fix, what=what)
    try:
        yield folder
    except BaseException:
        for candidate in made:
            if not _remove_if_unused(candidate):
                break
        raise


def _remove_if_unused(folder: Path) -> bool:
    """Remove `folder` if all it holds is edgekd lock files no process holds; True when it is gone."""
    try:
        children = list(folder.iterdir())
        if not all(_free_lock_file(child) for child in children):
            return False
        for child in children:
            child.unlink()
        folder.rmdir()
    except OSError:  # changed meanwhile (another process wrote there), or not ours to remove: it stays
        return False
    return True


def _free_lock_file(path: Path) -> bool:
    """An edgekd lock file (a run's, an export's, a bench's) that no live process holds."""
    return (path.name.startswith(".edgekd") and path.name.endswith(".lock") and path.is_file()
            and not path.is_symlink() and not _claimed(path))


def private_dir(folder: str | os.PathLike[str], refuse: Callable[[str], EdgeKDError]) -> Path:
    """Create `folder` for this user alone (0700) where edgekd keeps what others must not change (a device's
    work directory, whose runner it starts; its device locks). An existing one that is not ours alone is refused
    with `refuse(problem)` ('belongs to another user (uid N)', 'can be written by other users (mode 1777)'), and
    left as it is: taking write access away from a folder edgekd did not make would change a shared folder for
    everyone (a profile's `workdir: /tmp` run as root made /tmp 1755). OSError when it cannot be made."""
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    status = folder.stat()
    if status.st_uid != os.getuid():
        raise refuse(f"belongs to another user (uid {status.st_uid})")
    if status.st_mode & 0o022:
        raise refuse(f"can be written by other users (mode {stat.S_IMODE(status.st_mode):o})")
    return folder


def _unwritable(what: str, folder: Path, exc: OSError, fix: str) -> OutputDirError:
    """Why `folder` cannot be written to: the file standing where it or a parent must be, named, else the OS's
    reason."""
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        kind = "link" if blocker.is_symlink() and not blocker.exists() else "file"
        return OutputDirError(what, why=_in_the_way(blocker), fix=f"remove or rename the {kind} {blocker}, or {fix}")
    return OutputDirError(what, why=f"{exc.strerror or exc} ({exc.filename or folder})", fix=fix)


def _in_the_way(blocker: Path) -> str:
    """Why `blocker` (from _file_in_the_way) stops a folder being made: a file, or a link to nothing (a loop)."""
    if blocker.is_symlink() and not blocker.exists():
        return f"{blocker} is a symbolic link that leads nowhere (to a missing path, or in a loop), where a folder " \
               "is needed"
    return f"{blocker} is a file, where a folder is needed"


def _file_in_the_way(folder: Path) -> Path | None:
    """The existing non-folder among `folder` and its parents ("File exists" alone does not say which)."""
    for candidate in [folder, *folder.parents]:
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A crash leaves at most a stray temp file, never a half-written file under the final name; its name carries
    the writer's process id, and the writer holds a lock on it, so that `remove_orphan_temp_files` can tell a
    dead writer's file from a live one's.
    """
    final = Path(path)
    if final.is_dir():  # checked before the work: os.replace cannot put a file over a folder
        raise OutputDirError(f"cannot write {final}: a folder of that name is in the way",
                             why="edgekd writes a file there, and a file cannot replace a folder",
                             fix=f"remove or rename the folder {final}, or choose another output folder")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}-", suffix=TEMP_SUFFIX, dir=final.parent)
    except OSError as exc:
        raise _unwritable(f"cannot write {final}", final.parent, exc, "choose a writable output folder "
                          "(--output-dir / --results-dir), or fix its permissions") from None
    if not _claim(fd):
        os.close(fd)
        fd = -1
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600; the final file gets the mode open() would give
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
        if fd >= 0:
            os.close(fd)


def _claim(fd: int) -> bool:
    """Lock a temp file (flock) while it is written: the proof `remove_orphan_temp_files` asks for that its writer
    lives, where the pid in its name cannot say (a writer in another container or on another machine sharing the
    folder has a pid this one does not see). False where nothing can be locked; the pid alone protects it then."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks
        return False
    return True


def _claimed(path: Path) -> bool:
    """True while a live writer holds `path`'s lock (see `_claim`), or when that cannot be told."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone meanwhile, or unreadable: leave it
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the probe's own lock
    return False


# How long a writer whose pid is alive may leave its temp file (or folder) unlocked: the moment between creating
# it and locking it. Past that, an unlocked one with a live pid is a dead writer's whose pid was reused (after
# a container restart or a reboot pids start again), and it would stay for good.
UNCLAIMED_GRACE_S = 60.0


def _maybe_unclaimed_yet(path: Path, pid: int) -> bool:
    """Whether an unlocked temp file or folder may still be its writer's, about to lock it: its pid lives and it
    was made within UNCLAIMED_GRACE_S."""
    if not _process_alive(pid):
        return False
    try:
        return time.time() - path.stat().st_mtime < UNCLAIMED_GRACE_S
    except OSError:  # gone meanwhile
        return True


def remove_orphan_temp_files(folder: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """Delete the temp files that `atomic_path` writers killed mid-write (SIGKILL, power cut) left under `folder`
    (in it alone when not `recursive`: a folder the user named, whose subfolders are not edgekd's).

    Nothing reads them, but each is as large as the file it was to become (a checkpoint, a model) and a run
    killed again and again would pile them up. Only files whose writer process is gone are removed: another
    process writing into the same folder right now keeps its file, whether its pid is seen here (this machine)
    or not (another container or machine sharing the folder, seen by the lock it holds on the file). A file
    nobody locks whose pid lives is a dead writer's once it is older than UNCLAIMED_GRACE_S (the pid was reused).
    """
    removed = []
    folder = Path(folder)
    for path in (folder.rglob if recursive else folder.glob)(f".*{TEMP_SUFFIX}"):
        match = _TEMP_NAME.fullmatch(path.name)
        if match is None or not path.is_file() or _claimed(path) or _maybe_unclaimed_yet(path, int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


CLAIM_NAME = ".edgekd-claim"


@contextlib.contextmanager
def process_temp_dir(kind: str) -> Iterator[Path]:
    """A private temp folder of this process's, removed when the block ends, made in one folder per user and kind
    (TMP/edgekd-KIND@UID: '@' is in no device name, so it is no host work directory `edgekd-NAME-UID`).

    A process killed with SIGKILL never runs TemporaryDirectory's cleanup, and its folder stayed in the temp area
    for good; here the next process to make one removes those of processes that are gone. A folder is known as
    its owner's as atomic_path's temp files are: its name starts with the owner's pid, and the owner holds a
    lock (flock) on a file in it, so the folder of a live owner is kept, whether its pid is seen here or only its
    lock (another container sharing the temp area), also in the moment between its creation and the lock."""
    parent = Path(tempfile.gettempdir()) / f"edgekd-{kind}@{os.getuid()}"
    fix = "remove that folder, or set TMPDIR to a folder of your own"
    try:
        private_dir(parent, lambda problem: OutputDirError(f"the temp folder {parent} {problem}",
                                                           why="others could change the files edgekd keeps there",
                                                           fix=fix))
        remove_orphan_temp_dirs(parent)
        folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
        fd = os.open(folder / CLAIM_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise _unwritable(f"cannot make a temp folder in {parent}", parent, exc, fix) from None
    _claim(fd)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def remove_orphan_temp_dirs(parent: str | os.PathLike[str]) -> list[Path]:
    """Remove the folders `process_temp_dir` made in `parent` whose owner is gone (no process holds the lock in it,
    and its pid is no process here or the folder is older than UNCLAIMED_GRACE_S); a name of another form is not
    one of them and stays."""
    removed = []
    for folder in Path(parent).iterdir():
        pid = folder.name.partition("-")[0]
        if not pid.isdigit() or folder.is_symlink() or not folder.is_dir():
            continue
        claim = folder / CLAIM_NAME
        if (claim.exists() and _claimed(claim)) or _maybe_unclaimed_yet(folder, int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


@contextlib.contextmanager
def exclusive_folder(folder: str | os.PathLike[str], *, what: str, fix: str, lock_name: str = LOCK_NAME,
                     why: str = FOLDER_IN_USE_WHY, note: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `folder` for the block: a second edgekd process that asks for it fails at once
    with FolderInUseError (`what` is in use, `why` one at a time; `fix` says how to proceed) instead of
    interleaving its writes (or, for a device, its timings).

    The lock is flock(2) on `folder/lock_name`, so the OS releases it when the holder ends, however it ends
    (SIGKILL, power cut): there is never a stale lock to remove, and the lock file itself stays. The file holds
    the holder's pid and host, and `note` (what the holder does, e.g. where it saves), for the message. A file
    system that cannot lock (some network mounts) or a platform without flock runs unlocked, with a warning:
    refusing every run there would help no one.
    """
    if fcntl is None:
        logger.warning("cannot lock %s on this platform; do not start two edgekd processes on it at once", folder)
        yield
        return
    path = Path(folder) / lock_name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        blocker = _file_in_the_way(path.parent)
        raise OutputDirError(f"cannot create the lock file {path}",
                             why=_in_the_way(blocker) if blocker else first_line(exc),
                             fix="choose a writable output folder, or fix its permissions") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                logger.warning("cannot lock %s (%s); do not start two edgekd processes on it at once",
                               path, first_line(exc))
            else:
                raise FolderInUseError(
                    f"{what} is in use by another edgekd process ({_lock_holder(path)})",
                    why=f"{why} (the lock is released when that process ends, also if it is killed)",
                    fix=fix) from None
        os.ftruncate(fd, 0)
        note_line = " ".join((note or "").splitlines())  # one line: the pid and host are the first
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n{note_line}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would let a third process lock a new one)


def folder_holder(folder: str | os.PathLike[str], lock_name: str = LOCK_NAME) -> str | None:
    """Who holds `folder`'s lock ('pid N') while an edgekd process writes it, else None: readers (report) that
    take no lock can say a run is under way instead of calling its folder unfinished."""
    path = Path(folder) / lock_name
    return _lock_holder(path) if path.is_file() and _claimed(path) else None


def _lock_holder(path: Path) -> str:
    """'pid N' (and 'on HOST' when another machine holds it, and the holder's note) from a lock file, as far as
    it can be read."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    pid, host = ((lines[0].split() if lines else []) + ["", ""])[:2]
    if not pid.isdigit():  # the holder has the lock but has not written its pid yet
        return "pid unknown"
    note = printable(lines[1]).strip() if len(lines) > 1 else ""
    return (f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
            + (f", {note}" if note else ""))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):  # gone, or a pid no system has
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: without this a power cut can bring back the old file (or none) under its name."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform that cannot open folders (Windows) has nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename itself has happened
        pass
    finally:
        os.close(fd)


def atomic_save_array(path: str | os.PathLike[str], array) -> Path:
    """Write a numpy array as .npy atomically, never pickled (a file object: np.save would append ".npy")."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
    return Path(path)


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write bytes or text to `path` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def schema_problem(record: Any, expected: str) -> str | None:
    """Why a JSON record is not one this edgekd reads (None when it is, or names no schema): a record of a newer
    version may mean something else by the same fields, so reading it as ours would give wrong answers quietly."""
    found = record.get("schema") if isinstance(record, dict) else None
    if found is None or found == expected:
        return None
    if written_by_newer(record, expected):
        return f"it was written by a newer edgekd (schema {found}; this edgekd reads {expected})"
    return f"its schema is {str(found)[:60]!r}, not {expected!r}"


def written_by_newer(record: Any, expected: str) -> bool:
    """The record's schema is `expected`'s kind at a higher version ("edgekd.manifest/2" for ".../1")."""
    found = record.get("schema") if isinstance(record, dict) else None
    kind, _, version = expected.rpartition("/")
    found_kind, _, found_version = str(found).rpartition("/")
    return found_kind == kind and found_version.isdigit() and int(found_version) > int(version)


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_obj(obj: Any) -> str:
    """Content hash of a JSON-able object (canonical: sorted keys, no whitespace)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


COPY_USED = "is used instead"  # the end of manifest_problem when .manifest.json.copy stood in for the manifest


SET_ASIDE = "set_aside"  # manifest key: records of the stages a recipe turned off (RunDir.forget)


class RunDir:
    """Paths and manifest of one run directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- paths -------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def manifest_copy_path(self) -> Path:
        """A second copy of the manifest, written with it: a manifest damaged from outside (a hand edit, a bad
        copy) cost the whole run, every stage redone though its outputs were intact."""
        return self.root / ".manifest.json.copy"

    @property
    def recipe_path(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def create(self) -> None:
        """Create the directory tree, failing early with a clear message if it is not writable."""
        fix = "choose a writable folder with --output-dir (or `output_dir:` in the recipe), or fix its permissions"
        for sub in (self.root, self.checkpoints, self.artifacts, self.results, self.report, self.data):
            writable_dir(sub, fix=fix, what=f"cannot write the run directory {self.root}")

    # -- manifest ----------------------------------------------------------------------
    def load_manifest(self) -> dict[str, Any]:
        """The manifest, keeping only well-formed stage records: it is only a cache of what is done, so an
        unreadable one, or a record of the wrong shape (a hand edit, another tool), means "not done"."""
        return self._read_manifest()[0]

    def manifest_problem(self) -> str | None:
        """Why an existing manifest was not used, or some of its stage records, and what is done instead (None
        when it was, or there is none yet): a run that starts over says so, rather than silently redoing minutes
        of work."""
        return self._read_manifest()[1]

    def repair_manifest(self) -> str | None:
        """manifest_problem, and when the copy stood in for a damaged manifest, the manifest rewritten from it:
        a run whose stages were all up to date wrote no manifest, so every later run warned again and the file
        stayed damaged. Called by the run holding the folder's lock."""
        manifest, problem = self._read_manifest()
        if problem and problem.endswith(COPY_USED):
            atomic_write_json(self.manifest_path, manifest)
            problem = f"{problem}, and {self.manifest_path.name} is rewritten from it"
        return problem

    def _read_manifest(self) -> tuple[dict[str, Any], str | None]:
        manifest, problem = self._read_manifest_file(self.manifest_path)
        if problem is None:
            return manifest, None
        if self.manifest_copy_path.is_file():
            copy, copy_problem = self._read_manifest_file(self.manifest_copy_path)
            if copy_problem is None:  # safe: is_done still checks every output a record names against its sha256
                return copy, f"{problem}; its copy {self.manifest_copy_path.name}, written with it, {COPY_USED}"
        return manifest, f"{problem}; stages it does not vouch for run again"

    def _read_manifest_file(self, path: Path) -> tuple[dict[str, Any], str | None]:
        empty = {"schema": MANIFEST_SCHEMA, "stages": {}}
        if not path.exists():
            return empty, None
        try:
            manifest = read_json(path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return empty, f"it cannot be read ({first_line(exc)})"
        if not isinstance(manifest, dict):
            return empty, f"it holds a JSON {type(manifest).__name__}, not an object"
        problem = schema_problem(manifest, MANIFEST_SCHEMA)
        if problem and written_by_newer(manifest, MANIFEST_SCHEMA):  # starting over would redo (and overwrite) it
            raise OutputDirError(f"cannot resume the run in {self.root}", why=f"{path}: {problem}",
                                 fix="run it with the edgekd that wrote it (pip install -U edgekd), or give this "
                                     "run another name or --output-dir")
        if problem:
            return empty, problem
        stages = manifest.get("stages")
        if not isinstance(stages, dict):
            manifest["stages"] = {}
            return manifest, "its `stages` is not an object"
        manifest["stages"] = {name: record for name, record in stages.items() if _well_formed(record)}
        dropped = sorted(set(stages) - set(manifest["stages"]))
        return manifest, (f"the record of stage(s) {', '.join(dropped)} is malformed" if dropped else None)

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        return self.load_manifest()["stages"].get(stage)

    def is_done(self, stage: str, input_hash: str) -> bool:
        """True when `stage` finished with these inputs and its recorded outputs are intact."""
        return self.done_record(stage, input_hash)[0] is not None

    def done_record(self, stage: str, input_hash: str) -> tuple[dict[str, Any] | None, str | None]:
        """(`stage`'s record when it finished with these inputs and its outputs are intact, else None; why a
        record of these very inputs is not done, 'checkpoints/teacher.pt is missing', else None), from one pass
        over the outputs: a run that redoes minutes of training because a file was deleted or damaged says which."""
        record = self.stage_record(stage)
        if not record or record.get("input_hash") != input_hash:
            return None, None
        damaged = _damaged_output(self.root, record)
        return (record, None) if damaged is None else (None, damaged)

    def mark_done(self, stage: str, input_hash: str, outputs: list[Path], seconds: float, **extra: Any) -> str:
        """Record `stage` as finished; returns the stage's output hash (used downstream as an input)."""
        manifest = self.load_manifest()
        out = {str(Path(p).relative_to(self.root)): sha256_file(p) for p in outputs}
        record = {
            "input_hash": input_hash,
            "outputs": out,
            "output_hash": hash_obj(out),
            "seconds": round(seconds, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        manifest["stages"][stage] = record
        if isinstance(manifest.get(SET_ASIDE), dict):  # an older record of it, no longer worth taking back
            manifest[SET_ASIDE].pop(stage, None)
        self._write_manifest(manifest)
        return record["output_hash"]

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        """The manifest first, then its copy: a run stopped between the two (Ctrl-C, SIGKILL) resumes from the
        manifest, which then already records the stage; copy first, that finished stage was run again."""
        atomic_write_json(self.manifest_path, manifest)
        atomic_write_json(self.manifest_copy_path, manifest)

    def recorded_outputs(self, stage: str, pattern: str) -> list[Path]:
        """Files `stage` wrote in its last finished run whose names match `pattern`, in name order. Later stages
        read these rather than globbing folders, so a file an earlier run left behind (a precision since
        dropped, a bench since disabled) is never taken for a current one."""
        record = self.stage_record(stage) or {}
        return sorted(self.root / rel for rel in record.get("outputs", {})
                      if _inside_run(rel) and Path(rel).match(pattern))

    def forget(self, stage: str) -> None:
        """Drop a stage the recipe turned off from the stages done (the report must not show it), setting its
        record aside for `take_back`."""
        manifest = self.load_manifest()
        record = manifest["stages"].pop(stage, None)
        if record is not None:
            aside = manifest.get(SET_ASIDE)
            manifest[SET_ASIDE] = {**(aside if isinstance(aside, dict) else {}), stage: record}
            self._write_manifest(manifest)

    def take_back(self, stage: str, input_hash: str, *, write: bool = True) -> dict[str, Any] | None:
        """The record `forget` set aside, made done again (`write`: in the manifest; the other ranks of a
        distributed run only read) when it is for these inputs and its outputs are intact, else None: a stage
        turned off and on again (scratch.enabled, bench.enabled) was redone from the start."""
        manifest = self.load_manifest()
        aside = manifest.get(SET_ASIDE)
        taken = manifest["stages"].get(stage)  # already taken back (by rank 0, since this rank's is_done)
        record = taken if taken is not None else aside.get(stage) if isinstance(aside, dict) else None
        if (not _well_formed(record) or record.get("input_hash") != input_hash
                or _damaged_output(self.root, record) is not None):
            return None
        if write and taken is None:
            manifest["stages"][stage] = aside.pop(stage)
            self._write_manifest(manifest)
        return record


def _well_formed(record: Any) -> bool:
    """A stage record the pipeline can read: its input and output hashes, and its outputs as path -> sha256."""
    if not isinstance(record, dict):
        return False
    outputs = record.get("outputs")
    return (isinstance(record.get("input_hash"), str) and isinstance(record.get("output_hash"), str)
            and isinstance(outputs, dict) and all(isinstance(v, str) for v in outputs.values()))


def _damaged_output(root: Path, record: dict[str, Any]) -> str | None:
    """The first output of a stage record that is not as recorded (missing, or another sha256), else None."""
    for rel, digest in record.get("outputs", {}).items():
        path = root / rel
        if not _inside_run(rel):
            return f"its record names {rel!r}, a path outside the run folder"
        if not path.is_file():
            return f"{rel} is missing"
        if sha256_file(path) != digest:
            return f"{rel} changed since the stage wrote it (another sha256)"
    return None


def _inside_run(rel: str) -> bool:
    """A manifest's output path stays in the run folder (the manifest is a file anyone may edit)."""
    path = Path(rel)
    return not path.is_absolute() and ".." not in path.parts
