"""Device profiles: YAML files in devices/ (or any path), loaded into Device objects by name.

Search order for `--device NAME`: a path to a .yaml file; ./devices/NAME.yaml; ~/.config/edgekd/devices/NAME.yaml;
the built-in `host` (this machine). Unknown names list the profiles found. `{profile_dir}` in a profile's
strings is the folder of its file (for boards on this machine, such as devices/arm64-emulated.yaml).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from edgekd.devices.base import Device, DeviceProfile
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
    from edgekd.devices.base import DeviceError

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
    common = {k: raw[k] for k in _COMMON if k in raw}
    common.setdefault("name", Path(path).stem)
    if raw["kind"] == "adb":
        common.setdefault("workdir", "/data/local/tmp/edgekd")
    if raw["kind"] == "local" and "python" not in common:
        import sys

        common["python"] = sys.executable
    return DeviceProfile(**common, options={k: v for k, v in raw.items() if k not in _COMMON})


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
