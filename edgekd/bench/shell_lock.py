"""The device's bench lock taken from the device's own shell, for what runs there without edgekd's runner.

A runner holds the device's bench lock itself (runner.DeviceLock: flock on one file per device, found the same
way whoever started the bench). A native benchmark tool (a device without Python) and `edgekd devices --clean`
start no runner, so the shell takes the same lock on the same file for them with the device's flock tool
(util-linux on boards, busybox, Android's toybox), before it runs what they run; the lock is then held by that
command (it keeps the descriptor) until it ends, however it ends.

What the device's tools allow shapes the script: toybox's flock is only `flock [-sxun] FD` (no -w), so the
bounded wait is `timeout SECONDS flock FD` (toybox, busybox, coreutils; a 1 s poll where there is no timeout),
blocking, so no polling loads a device another bench measures on; Android's shell (mksh) closes a descriptor
opened by `exec 9<FILE` in every command it starts, so the lock file is opened as a redirection of a function
call, whose descriptor the commands in it (flock, then the tool, by exec) do get. The file is handled as the
runner handles it: a symbolic link is never opened, a missing file is created (O_EXCL: `set -C`) with mode 0666
so every user can lock it, and who holds it is written only through the locked descriptor's own inode
(/proc/self/fd/9), only when it has one link, so no planted link makes us write another file.

The script is fixed text; what varies reaches it as arguments (`sh -c SCRIPT sh WAIT ARGS...`). It reports on
stderr in lines `edgekd-device-lock: ...` (parsed by `report`, removed from the output the caller sees): the
path, then "held T0 T1" (the device's uptime on arrival and once held), "holder TEXT" (what the lock file
said when it had to wait), "waiting SECONDS" (as it begins to wait: `notices` passes it on while the command
runs), "busy T0 T1" (then it exits BUSY_EXIT without running anything), or "unavailable WHY" (then it runs
unlocked: no flock tool, a file in the way).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from edgekd.bench.runner import ANDROID_TMP, LOCK_ENV, LOCK_FILE, holder_summary

BUSY_EXIT = 75  # EX_TEMPFAIL: the lock stayed held for the whole wait
MARKER = "edgekd-device-lock: "
_LINE = re.compile(rf"^{re.escape(MARKER)}(\w+) ?(.*)$", re.MULTILINE)

# The lock file's path, as runner.device_lock_path finds it on the device.
_PATH = (f'_el=${{{LOCK_ENV}:-}}; if [ -z "$_el" ]; then '
         f'if [ -d {ANDROID_TMP} ] && [ -d /system/bin ]; then _el={ANDROID_TMP}/{LOCK_FILE}; '
         f'else _el=/tmp/{LOCK_FILE}; fi; fi; ')

_LOCK = r'''
_ew=$1; shift
_edgekd_say() { printf 'edgekd-device-lock: %s\n' "$*" >&2; }
_edgekd_at() { _et=; read _et _ </proc/uptime 2>/dev/null; }
_edgekd_word() { case $1 in *[!A-Za-z0-9._:@-]*) ;; *) printf '%s' "$1" ;; esac; }
_edgekd_holder() {
  set -- $(ls -lLdn /proc/self/fd/9 2>/dev/null)
  [ "$2" = 1 ] && [ -f /proc/self/fd/9 ] || return 0
  _eu=$(_edgekd_word "$(id -un 2>/dev/null || id -u 2>/dev/null)")
  _ef=$(_edgekd_word "${SSH_CLIENT%% *}")
  _ed=$(_edgekd_word "$(uname -n 2>/dev/null)")
  printf '{"pid": %s, "user": "%s", "from": %s, "device": "%s", "since": "%s"}\n' "$$" "$_eu" \
    "$([ -n "$_ef" ] && printf '"%s"' "$_ef" || printf null)" "$_ed" "$(date +%Y-%m-%dT%H:%M:%S%z 2>/dev/null)" \
    2>/dev/null >/proc/self/fd/9
}
_edgekd_lock() {
  _edgekd_at; _et0=$_et
  if _ee=$(flock -n 9 2>&1); then _edgekd_say "held $_et0 $_et0"; _edgekd_holder; return 0; fi
  if [ -n "$_ee" ]; then
    _edgekd_say "unavailable its file system refuses flock: $(printf '%s\n' "$_ee" | head -n 1)"; return 1; fi
  _edgekd_say "holder $(head -n 1 <&9 2>/dev/null)"
  if [ "$_ew" != 0 ]; then
    _edgekd_say "waiting $_ew"
    if command -v timeout >/dev/null 2>&1; then timeout "$_ew" flock 9 2>/dev/null
    else _en=${_ew%.*}; _en=$((${_en:-0} + 1))
      while [ "$_en" -gt 0 ] && ! flock -n 9 2>/dev/null; do sleep 1; _en=$((_en - 1)); done; fi
  fi
  _edgekd_at
  if flock -n 9 2>/dev/null; then _edgekd_say "held $_et0 $_et"; _edgekd_holder; return 0; fi
  _edgekd_say "busy $_et0 $_et"; exit 75
}
_edgekd_locked() { _edgekd_lock; _edgekd_body "$@"; exit $?; }
_edgekd_say "path $_el"
if ! command -v flock >/dev/null 2>&1; then
  _edgekd_say "unavailable the device has no flock tool (util-linux, busybox or toybox)"
elif [ -L "$_el" ]; then
  _edgekd_say "unavailable it is a symbolic link (not followed: whoever planted it could point it at a file of ours)"
else
  [ -e "$_el" ] || { (set -C; : >"$_el") 2>/dev/null && chmod 666 "$_el" 2>/dev/null; }
  if [ -f "$_el" ] && [ ! -L "$_el" ] && [ -r "$_el" ]; then _edgekd_locked "$@" 9<"$_el"; fi
  _edgekd_say "unavailable it cannot be created or read, or is not a regular file"
fi
_edgekd_body "$@"; exit $?
'''


def locked_script(body: str) -> str:
    """A fixed `sh -c` script that runs `body` (shell text of ours, never user input; it reads its own
    arguments as $1...) holding the device's bench lock, or unlocked where it cannot be had (said on stderr).
    Its first argument is the wait for a lock another bench holds (`wait_arg`); the rest are body's."""
    return _PATH + "_edgekd_body() {\n" + body + "\n}" + _LOCK


def wait_arg(seconds: float) -> str:
    """The wait as the script takes it: decimal seconds (timeout's syntax), "0" for not waiting."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds < 0:
        raise ValueError(f"lock wait must be seconds >= 0, got {seconds!r}")
    return format(seconds, ".3f").rstrip("0").rstrip(".") or "0"


EXEC_BODY = 'exec "$@"'  # the body that runs the command given as the script's other arguments, as its process


def locked_argv(argv: list[str], wait_s: float) -> list[str]:
    """`argv` run on the device holding its bench lock (waiting up to wait_s for another bench): an argv list
    whose every word reaches the device's shell as one literal word (device.run quotes each)."""
    return ["sh", "-c", locked_script(EXEC_BODY), "sh", wait_arg(wait_s), *argv]


@dataclass
class LockReport:
    """What the device's shell said about the lock: the record a result keeps (as the runner's DeviceLock),
    whether the lock stayed held for the whole wait, and the output without the lock's lines."""

    path: str | None = None
    state: str | None = None  # "held", "unavailable", "busy"; None: the shell said nothing (it did not start)
    why: str | None = None  # for "unavailable"
    waited_s: float | None = None
    holder: str | None = None  # who held it when we came (holder_summary), when we had to wait
    output: str = ""

    @property
    def busy(self) -> bool:
        return self.state == "busy"

    def record(self) -> dict[str, Any] | None:
        """As runner.DeviceLock records it: held (waited_s, waited_for) or unavailable (why)."""
        if self.state == "held":
            return {"path": self.path, "state": "held", "waited_s": self.waited_s, "waited_for": self.holder}
        if self.state == "unavailable":
            return {"path": self.path, "state": "unavailable", "why": self.why}
        return None


def notices(say: Callable[[str], None]) -> Callable[[str], None]:
    """An `on_line` for device.run (it gets each line of the command's stderr while it runs) that calls `say`
    as the device's shell begins to wait for another bench's lock: who holds it and how long it waits, in the
    words of the runner's own notice, so a wait of minutes does not look like a hang."""
    holder = "pid unknown"

    def on_line(line: str) -> None:
        nonlocal holder
        match = _LINE.match(line)
        if match is None:
            return
        kind, rest = match.group(1), match.group(2).strip()
        if kind == "holder":
            holder = holder_summary(rest)
        elif kind == "waiting":
            say(f"the device is busy with another bench ({holder}); waiting up to {_seconds(rest)} s for it to end")

    return on_line


def report(stderr: str) -> LockReport:
    """Parse the script's lines out of the command's stderr."""
    out = LockReport()
    times: tuple[str, str] = ("", "")
    for match in _LINE.finditer(stderr):
        kind, rest = match.group(1), match.group(2).strip()
        if kind == "path":
            out.path = rest
        elif kind == "holder":
            out.holder = holder_summary(rest)
        elif kind in ("held", "busy"):
            out.state = kind
            times = tuple((rest.split() + ["", ""])[:2])  # type: ignore[assignment]
        elif kind == "unavailable":
            out.state, out.why = kind, "".join(c for c in rest if c.isprintable())[:300]
    if out.state in ("held", "busy"):
        out.waited_s = _waited(*times) if out.holder is not None else 0.0
    out.output = "".join(line for line in stderr.splitlines(keepends=True) if not line.startswith(MARKER))
    return out


def _seconds(text: str) -> str:
    """A wait as the runner's notice says it: whole seconds (the text itself if it is not a number)."""
    try:
        return f"{float(text):.0f}"
    except ValueError:
        return text


def _waited(t0: str, t1: str) -> float | None:
    """Seconds between two readings of the device's /proc/uptime; None when it could not be read."""
    try:
        return round(max(0.0, float(t1) - float(t0)), 3)
    except ValueError:
        return None
