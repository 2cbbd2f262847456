"""Device profiles: YAML files in devices/ (or any path), loaded into Device objects by name.

Search order for `--device NAME`: a path to a .yaml file; ./devices/NAME.yaml; ~/.config/edgekd/devices/NAME.yaml;
the built-in `host` (this machine). Unknown names list the profiles found. `{profile_dir}` in a profile's
strings is the folder of its file (for boards on this machine, such as devices/arm64-emulated.yaml).
"""

from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

import yaml

from edgekd.devices.base import Device, DeviceError, DeviceProfile
from edgekd.errors import RegistryError

KINDS = ("local", "ssh", "adb")
_COMMON = {"name", "kind", "python", "workdir", "threads", "cpus", "emulated"}
PROFILE_DIR = "{profile_dir}"  # expands to the profile file's folder (see _expand)


def search_dirs() -> list[Path]:
    return [Path.cwd() / "devices", Path(os.path.expanduser("~/.config/edgekd/devices"))]


def known_profiles() -> list[str]:
    names = {"host"}
    for folder in search_dirs():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def _builtin_host() -> DeviceProfile:
    import sys

    return DeviceProfile(name="host", kind="local", python=sys.executable,
                         workdir=str(Path(tempfile.gettempdir()) / f"edgekd-host-{os.getuid()}"))


def find_profile(name_or_path: str) -> DeviceProfile:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return load_profile(path)
    for folder in search_dirs():
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return load_profile(candidate)
    if name_or_path == "host":
        return _builtin_host()
    raise RegistryError(f"unknown device '{name_or_path}'", why=f"known devices: {', '.join(known_profiles())}",
                        fix="use one of them, or give the path of a profile YAML (see devices/*.example.yaml)")


def load_profile(path: Path) -> DeviceProfile:
    """Read and check a profile: a typo or a wrong type is reported here, naming the file and the field,
    not later as a crash inside the benchmark (or an option silently ignored)."""
    try:
        raw: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeviceError(f"device profile not found: {path}", fix="check the path (profiles live in devices/)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DeviceError(f"cannot read device profile {path}", why=str(exc).splitlines()[0],
                          fix="fix the YAML (see devices/*.example.yaml)") from None
    if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
        raise DeviceError(f"invalid device profile {path}",
                          why=f"`kind:` must be one of {', '.join(KINDS)}, got {raw.get('kind') if isinstance(raw, dict) else raw!r}",
                          fix="start from devices/pi.example.yaml or devices/phone.example.yaml")
    raw = _expand(raw, str(Path(path).resolve().parent))
    check_fields(raw, path)
    common = {k: raw[k] for k in _COMMON if k in raw}
    common.setdefault("name", Path(path).stem)
    if raw["kind"] == "adb":
        common.setdefault("workdir", "/data/local/tmp/edgekd")
    if raw["kind"] == "local" and "python" not in common:
        import sys

        common["python"] = sys.executable
    return DeviceProfile(**common, options={k: v for k, v in raw.items() if k not in _COMMON})


# ---------------------------------------------------------------------- field checks
# A check returns None when the value is fine, else the rule it breaks ("must be ...").
Check = Callable[[Any], "str | None"]


class Field(NamedTuple):
    check: Check
    example: str  # what a right value looks like, for the fix
    optional: bool = True  # null means "not set" (the default, or the device's own check for required ones)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _one_line(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != "" and not any(c in value for c in "\n\r\0")


def _text(value: Any) -> str | None:
    return None if _one_line(value) else "must be non-empty text on one line"


def _path(value: Any) -> str | None:
    return None if _one_line(value) else "must be a path (non-empty text on one line)"


def _word(value: Any) -> str | None:
    """Host, user, serial: handed to ssh/adb as one argument, so never a second word or an option."""
    text = str(value) if _is_int(value) else value
    if not isinstance(text, str) or not text or text.startswith("-") or any(c.isspace() or ord(c) < 32 for c in text):
        return "must be one word not starting with '-'"
    return None


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _positive_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 1 else "must be a whole number ≥ 1"


def _port(value: Any) -> str | None:
    port = int(value) if isinstance(value, str) and value.isdigit() else value
    return None if _is_int(port) and 1 <= port <= 65535 else "must be a port number between 1 and 65535"


def _seconds(value: Any) -> str | None:
    return None if _is_number(value) and value > 0 else "must be a number of seconds > 0"


def _python(value: Any) -> str | None:
    """The device's interpreter as a path, or an argv prefix (an emulator plus an interpreter)."""
    if _one_line(value) or (isinstance(value, list) and value and all(_one_line(v) for v in value)):
        return None
    return "must be the path of the device's Python, a non-empty list of words (an argv prefix), or null"


def host_cpus() -> list[int]:
    """The CPUs this process may run on: taskset can pin only to those."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cpus(value: Any, *, local: bool) -> str | None:
    if not isinstance(value, list) or not value or not all(_is_int(c) and c >= 0 for c in value):
        return "must be a non-empty list of CPU numbers ≥ 0"
    if len(set(value)) != len(value):
        return "must not name a CPU twice"
    missing = sorted(set(value) - set(host_cpus())) if local else []
    if missing:
        return (f"must name CPUs this machine can run on ({', '.join(map(str, host_cpus()))}), and "
                f"{', '.join(map(str, missing))} {'is' if len(missing) == 1 else 'are'} not among them")
    return None


def _mapping(allowed: dict[str, Check]) -> Check:
    """A nested mapping (thermal:, native:) with known keys only: a typo there would be ignored too."""
    def check(value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"must be a mapping with keys among {', '.join(allowed)}"
        for key, item in value.items():
            if key not in allowed:
                closest = _closest(key, allowed)
                hint = f" (did you mean '{closest}'?)" if closest else ""
                return f"has no key '{key}'{hint}: its keys are {', '.join(allowed)}"
            rule = allowed[key](item)
            if rule:
                return f"'{key}' {rule}"
        return None
    return check


def _ssh_options(value: Any) -> str | None:
    """The shape only: SSHDevice checks each option (managed ones, one-line values) before connecting."""
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return None
    if isinstance(value, list) and all(isinstance(e, str) and "=" in e for e in value):
        return None
    return 'must be a mapping of ssh option names to values (or a list of "Key=Value" strings)'


def _non_negative(value: Any) -> str | None:
    return None if _is_number(value) and value >= 0 else "must be a number ≥ 0"


def _number(value: Any) -> str | None:
    return None if _is_number(value) else "must be a number"


def _status(value: Any) -> str | None:
    return None if _is_int(value) and 0 <= value <= 6 else "must be an Android thermal status 0 (none) … 6 (shutdown)"


_THERMAL = {"max_celsius": _number, "max_status": _status, "wait_seconds": _non_negative, "poll_seconds": _seconds}
_NATIVE = {"tflite": _path, "onnx": _path}

# Fields every kind reads (DeviceProfile, plus thermal: for cool_down and native: for a device without Python).
_ANY_KIND = {
    "name": Field(_text, "a short name, e.g. `name: pi`", optional=False),
    "kind": Field(lambda v: None, "one of local, ssh, adb", optional=False),
    "python": Field(_python, "`python: python3`, `python: /home/pi/venv/bin/python` or `python: null`"),
    "workdir": Field(_path, "a writable folder on the device, e.g. `workdir: /tmp/edgekd-work`", optional=False),
    "threads": Field(_positive_int, "a whole number ≥ 1, e.g. `threads: 4`", optional=False),
    "emulated": Field(_bool, "`emulated: true` or `emulated: false`", optional=False),
    "thermal": Field(_mapping(_THERMAL), "e.g. `thermal: {max_celsius: 60, wait_seconds: 120, poll_seconds: 5}`"),
    "native": Field(_mapping(_NATIVE), "e.g. `native: {tflite: ~/android/benchmark_model}`"),
}
# What each kind's device reads from `options` (SSHDevice, EmulatedBoard, AdbDevice).
_BY_KIND = {
    "local": {},
    "ssh": {
        "host": Field(_word, "a host name, an address or a ~/.ssh/config alias, e.g. `host: raspberrypi.local`"),
        "user": Field(_word, "a user name on the board, e.g. `user: pi`"),
        "port": Field(_port, "e.g. `port: 22`"),
        "identity_file": Field(_path, "a private key file, e.g. `identity_file: ~/.ssh/id_ed25519`"),
        "known_hosts": Field(_path, "a known_hosts file, e.g. `known_hosts: ~/.ssh/known_hosts`"),
        "config_file": Field(_path, "an ssh config file, e.g. `config_file: ~/.ssh/config`"),
        "connect_timeout": Field(_seconds, "seconds, e.g. `connect_timeout: 10`"),
        "ssh_options": Field(_ssh_options, "e.g. `ssh_options: {ProxyJump: bastion}`"),
        "board_dir": Field(_path, "the emulated board's folder, e.g. `board_dir: \"{profile_dir}/arm64\"`"),
    },
    "adb": {
        "serial": Field(_word, "a serial from `adb devices`, e.g. `serial: R58M12345AB`"),
        "adb": Field(_path, "the adb binary, e.g. `adb: ~/Android/Sdk/platform-tools/adb`"),
        "server_port": Field(_port, "e.g. `server_port: 5037`"),
    },
}


def known_fields(kind: str) -> dict[str, Field]:
    """Every field a profile of this kind may have (cpus: is checked against this host for kind local)."""
    cpus = Field(lambda v: _cpus(v, local=kind == "local"), "CPU numbers, e.g. `cpus: [0, 1]`")
    return {**_ANY_KIND, "cpus": cpus, **_BY_KIND[kind]}


def check_fields(raw: dict[Any, Any], path: Path) -> None:
    """Reject unknown keys (with a suggestion) and values of the wrong type or range, naming file and field."""
    kind = raw["kind"]
    fields = known_fields(kind)
    for key, value in raw.items():
        if key not in fields:
            closest = _closest(key, fields)
            raise DeviceError(
                f"unknown field `{key}:` in device profile {path}" + (f" (did you mean `{closest}:`?)" if closest else ""),
                why=f"a profile of kind {kind} has the fields: {', '.join(sorted(fields))}{_elsewhere(key, kind)}",
                fix=f"rename `{key}:` to `{closest}:` in {path}" if closest else
                    f"remove `{key}:` from {path}, or correct its spelling")
        field = fields[key]
        if value is None and field.optional:
            continue
        rule = field.check(value) if value is not None else "must be set (it cannot be null)"
        if rule:
            raise DeviceError(f"invalid `{key}: {_show(value)}` in device profile {path}",
                              why=f"`{key}` {rule}, got {value!r}",
                              fix=f"set `{key}:` in {path} to {field.example}")


def _elsewhere(key: Any, kind: str) -> str:
    """A field of another kind (`host:` in a local profile) is more likely a wrong `kind:` than a typo."""
    others = [k for k, fields in _BY_KIND.items() if k != kind and key in fields]
    return f" (`{key}:` belongs to kind {' and '.join(others)})" if others else ""


def _closest(key: Any, known: Any) -> str | None:
    """The known name a typo most likely meant (difflib), or None."""
    matches = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
    return matches[0] if matches else None


def _show(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("...").strip()
    return text if len(text) <= 60 else text[:57] + "..."


def _expand(value: Any, folder: str) -> Any:
    """`{profile_dir}` in a profile's strings is the folder of the profile file: a board on this machine (the
    emulated one) is described by paths next to its profile, wherever the repository is checked out."""
    if isinstance(value, str):
        return value.replace(PROFILE_DIR, folder)
    if isinstance(value, list):
        return [_expand(v, folder) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, folder) for k, v in value.items()}
    return value


def open_device(name_or_path: str) -> Device:
    """A connected Device for a profile name or path."""
    profile = find_profile(name_or_path)
    if profile.kind == "local":
        from edgekd.devices.local import LocalDevice

        return LocalDevice(profile)
    if profile.kind == "ssh" and profile.options.get("board_dir"):
        from edgekd.devices.emulated import EmulatedBoard

        return EmulatedBoard(profile)
    if profile.kind == "ssh":
        from edgekd.devices.ssh import SSHDevice

        return SSHDevice(profile)
    from edgekd.devices.adb import AdbDevice

    return AdbDevice(profile)
