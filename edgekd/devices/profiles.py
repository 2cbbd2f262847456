"""Device profiles: YAML files in devices/ (or any path), loaded into Device objects by name.

Search order for `--device NAME`: a path to a .yaml file; ./devices/NAME.yaml; ~/.config/edgekd/devices/NAME.yaml;
the built-in `host` (this machine). Unknown names list the profiles found. `{profile_dir}` in a profile's
strings is the folder of its file (for boards on this machine, such as devices/arm64-emulated.yaml).
Example profiles to start one from ship inside the package (examples/, `edgekd devices --example NAME`): an
installed edgekd has no repository devices/ folder to copy them from.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from edgekd.compress.isa import CPU_ARCHES, PROFILE_FLAGS
from edgekd.devices.base import Device, DeviceError, DeviceProfile
from edgekd.errors import RegistryError, first_line, pydantic_message, yaml_problem
from edgekd.names import IDENTIFIER, IDENTIFIER_RULE
from edgekd.yaml_strict import load_yaml

KINDS = ("local", "ssh", "adb")
_COMMON = {"name", "kind", "python", "workdir", "threads", "cpus", "emulated"}
PROFILE_DIR = "{profile_dir}"  # expands to the profile file's folder (see _expand)


def search_dirs() -> list[Path]:
    return [Path.cwd() / "devices", Path(os.path.expanduser("~/.config/edgekd/devices"))]


START = ("start from an example profile: `edgekd devices --example pi` (a board over SSH) or "
         "`edgekd devices --example phone` (a phone over adb)")


def listed_profiles() -> dict[str, Path | None]:
    """Each name `--device` takes and the file find_profile reads for it (the first in search order); None for
    the built-in host."""
    found: dict[str, Path | None] = {}
    for folder in search_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                found.setdefault(path.stem, path)
    found.setdefault("host", None)
    return dict(sorted(found.items()))


def known_profiles() -> list[str]:
    return list(listed_profiles())


def example_profiles() -> dict[str, Path]:
    """The example profiles shipped as package data (examples/NAME.yaml), by name."""
    folder = resources.files("edgekd.devices") / "examples"
    return {p.name[: -len(".yaml")]: Path(str(p)) for p in sorted(folder.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".yaml")}


def example_profile(name: str) -> Path:
    examples = example_profiles()
    if name not in examples:
        meant = _closest(name, examples)
        raise RegistryError(f"no example profile '{name}'" + (f" (did you mean '{meant}'?)" if meant else ""),
                            why=f"the examples are {', '.join(examples)}",
                            fix="give one of them: edgekd devices --example pi > devices/pi.yaml")
    return examples[name]


def _builtin_host() -> DeviceProfile:
    import sys

    return DeviceProfile(name="host", kind="local", python=sys.executable, workdir=_local_workdir("host"))


def _local_workdir(name: str) -> str:
    """A work directory of this user's own (not /tmp/edgekd-work, which every user of the machine shares)."""
    return str(Path(tempfile.gettempdir()) / f"edgekd-{name}-{os.getuid()}")


def find_profile(name_or_path: str) -> DeviceProfile:
    if not isinstance(name_or_path, (str, os.PathLike)):  # Path() would raise a bare TypeError (device=None)
        raise RegistryError(f"a device is a profile name or a profile's path, not {type(name_or_path).__name__} "
                            f"{repr(name_or_path)[:60]}",
                            why=f"known devices: {', '.join(known_profiles())} (from ./devices/ and "
                                "~/.config/edgekd/devices/)",
                            fix="give one of them as a string, e.g. device='host'" +
                                ("; name one device at a time" if isinstance(name_or_path, (list, tuple)) else ""))
    if not str(name_or_path).strip():  # Path("") is the current folder: "a folder holding profiles …"
        raise RegistryError("the device name is empty", why=f"known devices: {', '.join(known_profiles())}",
                            fix="give a device name (e.g. host) or a profile's .yaml path")
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return load_profile(path)
    for folder in search_dirs():
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return _named_as_asked(load_profile(candidate), str(name_or_path), candidate)
    if name_or_path == "host":
        return _builtin_host()
    known = known_profiles()
    if path.is_dir():  # a folder of profiles, say: "unknown device" would hide what was given
        inside = sorted(p.stem for p in path.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))
        raise RegistryError(f"device '{name_or_path}' is a folder, not a device profile",
                            why=f"it holds the profiles {', '.join(inside)}" if inside else
                                "a device is a profile's name or the path of its YAML file",
                            fix=f"give one profile's file, e.g. {path / (inside[0] + '.yaml')}" if inside else
                                f"give a profile's YAML file, or one of the known devices: {', '.join(known)}")
    if path.is_file():  # a file, but not named .yaml: it was "unknown device"
        raise RegistryError(f"device '{name_or_path}' is a file but no device profile",
                            why="a device is a profile's name or the path of its .yaml file",
                            fix=f"give a profile's .yaml file (rename it if it is one), or one of: {', '.join(known)}")
    meant = _closest(name_or_path, known)
    raise RegistryError(f"unknown device '{name_or_path}'" + (f" (did you mean '{meant}'?)" if meant else ""),
                        why=f"known devices: {', '.join(known)} (from ./devices/ and ~/.config/edgekd/devices/)",
                        fix=f"use one of them, or give the path of a profile YAML; {START}")


def _named_as_asked(profile: DeviceProfile, asked: str, path: Path) -> DeviceProfile:
    """A profile found by its file's name must carry that name: results and history rows are filed under
    `name:`, so a copied profile that kept its original's (`edgekd devices` lists it by file) would mix its
    measurements with another device's."""
    if profile.name != asked:
        raise DeviceError(f"device '{asked}' is read from {path}, whose `name:` is '{profile.name}'",
                          why=f"results are filed under `name:`, so this device's would mix with those of "
                              f"'{profile.name}'",
                          fix=f"set `name: {asked}` in {path} (or remove the line), or rename the file to "
                              f"{profile.name}.yaml")
    return profile


def load_profile(path: Path) -> DeviceProfile:
    """Read and check a profile: a typo or a wrong type is reported here, naming the file and the field,
    not later as a crash inside the benchmark (or an option silently ignored)."""
    if Path(path).is_dir():
        raise DeviceError(f"device profile {path} is a folder", why="a profile is one YAML file",
                          fix="give the profile's .yaml file, or a device name (profiles live in devices/)")
    try:
        raw: Any = load_yaml(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeviceError(f"device profile not found: {path}", fix="check the path (profiles live in devices/)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeviceError(f"cannot read device profile {path}", why=first_line(exc),
                          fix="check the file's permissions and that it is UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise DeviceError(f"cannot read device profile {path}: YAML syntax error {yaml_problem(exc)}",
                          why="the file is not valid YAML",
                          fix="fix the YAML at that line (indentation, a missing ':' or an unclosed quote or "
                              "bracket; compare with `edgekd devices --example pi`)") from None
    if not isinstance(raw, dict):
        raise DeviceError(f"invalid device profile {path}: " + ("the file is empty" if raw is None else
                          f"a profile must be a YAML mapping, got {type(raw).__name__}"),
                          why="a profile is `field: value` lines, starting with `kind:` (local, ssh or adb)",
                          fix=START)
    if raw.get("kind") not in KINDS:
        raise DeviceError(f"invalid device profile {path}",
                          why=f"`kind:` must be one of {', '.join(KINDS)}, got {raw.get('kind')!r}", fix=START)
    raw = _expand(raw, str(Path(path).resolve().parent))
    check_fields(raw, path)
    common = {k: raw[k] for k in _COMMON if k in raw}
    common.setdefault("name", Path(path).stem)
    if not re.match(IDENTIFIER, common["name"]):
        raise DeviceError(f"invalid device profile {path}: its file name '{common['name']}' is no device name",
                          why=f"without `name:` a profile is named after its file, and a device name is one word "
                              f"of {IDENTIFIER_RULE} (it names files)",
                          fix="add `name:` to the profile, or rename the file")
    if common["name"] == "host" and raw["kind"] != "local":  # found before the built-in host, it would replace it
        raise DeviceError(f"device profile {path} gives the name 'host' to a device of kind {raw['kind']}",
                          why="'host' is this machine: results and history rows filed under it would mix the "
                              f"{raw['kind']} device's measurements with this machine's",
                          fix=f"give it a name of its own (`name:` in {path}, or rename the file)")
    if raw.get("native") and "python" not in raw:
        # `native:` names the benchmark tools of a device without Python: without `python:` they are what it
        # uses (the default python3 was tried instead, and failed with "install Python" on a stock phone).
        common["python"] = None
    if raw["kind"] == "adb":
        common.setdefault("workdir", "/data/local/tmp/edgekd")
    if raw["kind"] == "local":
        import sys

        common.setdefault("python", sys.executable)
        common.setdefault("workdir", _local_workdir(common["name"]))
    return DeviceProfile(**common, options={k: v for k, v in raw.items() if k not in _COMMON})


# ---------------------------------------------------------------------- field checks (pydantic)
# The models only check (load_profile builds the DeviceProfile from the mapping). Strict: YAML's `true`, "4" or
# 2.5 is no thread count. A field's description completes "must be ..."; its examples show right values in the fix.
Text = Annotated[str, Field(pattern=r"^[^\n\r\x00]*\S[^\n\r\x00]*$")]  # non-empty, one line
# Host, user, serial: handed to ssh/adb as one argument, so never a second word or an option (a number is a word).
Word = Annotated[str, BeforeValidator(lambda v: str(v) if type(v) is int else v),
                 Field(pattern=r"^[^-\s\x00-\x1f][^\s\x00-\x1f]*$")]
Port = Annotated[int, BeforeValidator(lambda v: int(v) if isinstance(v, str) and v.isdigit() else v),
                 Field(ge=1, le=65535)]
PATH, WORD = "a path (non-empty text on one line)", "one word not starting with '-'"
PORT = "a port number between 1 and 65535"
CPU = "a mapping `arch:` (x86_64, arm64 or arm32) and `flags:` (a list, required for x86_64)"


def _field(rule: str, *examples: Any, default: Any = None, **limits: Any) -> Any:
    return Field(default, description=rule, examples=list(examples), **limits)


class _Checked(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Thermal(_Checked):
    """When bench waits for the device to cool down. Its keys may be absent, not null."""

    max_celsius: float = _field("a temperature in °C", 60)
    max_status: int = _field("an Android thermal status 0 (none) … 6 (shutdown)", 1, ge=0, le=6)
    wait_seconds: float = _field("a number of seconds ≥ 0", 120, ge=0)
    poll_seconds: float = _field("a number of seconds > 0", 5, gt=0)


class Native(_Checked):
    """The runtimes' own benchmark binaries, for a device without Python."""

    tflite: Text = _field(PATH, "~/android/benchmark_model")
    onnx: Text = _field(PATH, "~/android/onnxruntime_perf_test")


class Cpu(_Checked):
    """The device's CPU, for what is decided without connecting to it (export's int8_reduce_range: 8-bit weights
    on Arm and on x86 with VNNI/AMX, 7-bit otherwise). Words as the runner reports them (edgekd.compress.isa)."""

    arch: Literal[tuple(CPU_ARCHES)] = _field(  # type: ignore[valid-type]
        f"one of {', '.join(CPU_ARCHES)} (what `uname -m` calls "
        f"{', '.join(CPU_ARCHES.values())})", "arm64", default=...)
    flags: list[str] | None = _field(
        "a list of the CPU's flags as /proc/cpuinfo spells them (`flags:` on x86, `Features:` on Arm), those edgekd "
        "reads", ["avx2", "avx512f", "avx512_vnni"])

    @field_validator("flags")
    @classmethod
    def _flags_of_its_arch(cls, flags: list[str] | None, info: ValidationInfo) -> list[str] | None:
        """A typo'd or foreign flag would silently change the decision (`asimddp` on x86 reads as 'no AVX2')."""
        arch = info.data.get("arch")
        known = PROFILE_FLAGS.get(arch or "", ())
        for flag in flags or ():
            if flag not in known:
                close = difflib.get_close_matches(flag, known, n=1)
                raise ValueError(f"must list flags of an {arch} CPU that edgekd reads ({', '.join(known)}), and "
                                 f"'{flag}' is not one" + (f" (did you mean '{close[0]}'?)" if close else ""))
        if flags is not None and len(set(flags)) != len(flags):
            raise ValueError("must not name a flag twice")
        return flags

    @model_validator(mode="after")
    def _x86_needs_flags(self) -> "Cpu":
        """On x86 the flags decide (VNNI/AMX: 8-bit weights; AVX2 without: 7-bit): an x86 CPU without them is
        as unknown as no `cpu:` at all, so say so rather than guess."""
        if self.arch == "x86_64" and not self.flags:
            raise ValueError("must list the flags of an x86_64 CPU (`flags: [avx2, avx512_vnni]`): whether its int8 "
                             "kernels saturate 8-bit weights depends on them (VNNI/AMX or not); without `cpu:` the "
                             "device gets the safe 7-bit weights")
        return self


class CommonProfile(_Checked):
    """What every kind reads: DeviceProfile's fields, thermal: (cool_down), native: (a device without Python)."""

    name: Annotated[str, Field(pattern=IDENTIFIER)] = _field(f"one word of {IDENTIFIER_RULE} (it names files)",
                                                             "pi", default="")
    kind: str = ""  # checked before validation: it picks the model
    python: Text | Annotated[list[Text], Field(min_length=1)] | None = _field(
        "the path of the device's Python, a non-empty list of words (an argv prefix), or null", "python3", None)
    workdir: Text = _field("a writable folder on the device (one line)", "/tmp/edgekd-work", default="")
    threads: int = _field("a whole number ≥ 1", 4, default=1, ge=1)
    emulated: bool = _field("true or false", True, default=False)
    cpus: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = _field(
        "a non-empty list of CPU numbers ≥ 0, each named once", [0, 1])
    thermal: Thermal | None = _field("a mapping of thermal limits", {"max_celsius": 60, "wait_seconds": 120})
    native: Native | None = _field("a mapping of runtimes to benchmark binaries", {"tflite": "~/benchmark_model"})

    @field_validator("workdir")
    @classmethod
    def _workdir_the_device_reads_as_written(cls, workdir: str, info: ValidationInfo) -> str:
        """The folder is argv to the device's Python and mkdir (quoted), and a remote source path to scp."""
        kind = info.data.get("kind")
        if workdir.startswith("-"):
            raise ValueError("must not start with '-' (the device's Python would read the runner's path in it as "
                             "an option): give an absolute path")
        if kind != "local" and workdir.startswith("~"):
            raise ValueError("must not start with '~': the device's shell gets it quoted (a folder named '~'), "
                             "scp expands it; give an absolute path" +
                             (", or one relative to the login's home without '~/'" if kind == "ssh" else ""))
        if kind == "ssh" and set(workdir) & set("*?[]\\"):
            raise ValueError("must not hold * ? [ ] or \\ (scp reads them in a remote path as a pattern): "
                             "give a plain path")
        return workdir

    @field_validator("cpus")
    @classmethod
    def _distinct_cpus_of_this_host(cls, cpus: list[int] | None, info: ValidationInfo) -> list[int] | None:
        """taskset pins only to CPUs this host has; a remote board's CPUs are its own."""
        if cpus and len(set(cpus)) != len(cpus):
            raise ValueError("must not name a CPU twice")
        missing = sorted(set(cpus or ()) - set(host_cpus())) if info.data.get("kind") == "local" else []
        if missing:
            raise ValueError(f"must name CPUs this machine can run on ({', '.join(map(str, host_cpus()))}), and "
                             f"{', '.join(map(str, missing))} {'is' if len(missing) == 1 else 'are'} not among them")
        return cpus


class LocalProfile(CommonProfile):
    kind: Literal["local"]


class SshProfile(CommonProfile):
    """What SSHDevice and EmulatedBoard read from `options`."""

    kind: Literal["ssh"]
    host: Word | None = _field(f"{WORD} (a host, an address or a ~/.ssh/config alias)", "raspberrypi.local")
    user: Word | None = _field(f"{WORD} (a user name on the board)", "pi")
    port: Port | None = _field(PORT, 22)
    identity_file: Text | None = _field(PATH, "~/.ssh/id_ed25519")
    known_hosts: Text | None = _field(PATH, "~/.ssh/known_hosts")
    config_file: Text | None = _field(PATH, "~/.ssh/config")
    connect_timeout: float | None = _field("a number of seconds > 0", 10, gt=0)
    # The shape only: SSHDevice checks each option (managed ones, one-line values) before connecting.
    ssh_options: dict[str, Any] | list[Annotated[str, Field(pattern="=")]] | None = _field(
        'a mapping of ssh option names to values (or a list of "Key=Value" strings)', {"ProxyJump": "bastion"})
    board_dir: Text | None = _field(f"{PATH}: the emulated board's folder", "{profile_dir}/arm64")
    cpu: Cpu | None = _field(CPU, {"arch": "arm64"}, {"arch": "x86_64", "flags": ["avx2", "avx512_vnni"]})


class AdbProfile(CommonProfile):
    """What AdbDevice reads from `options`."""

    kind: Literal["adb"]
    serial: Word | None = _field(f"{WORD} (a serial from `adb devices`)", "R58M12345AB")
    adb: Text | None = _field(f"{PATH}: the adb binary", "~/Android/Sdk/platform-tools/adb")
    server_port: Port | None = _field(PORT, 5037)
    cpu: Cpu | None = _field(CPU, {"arch": "arm64"})


MODELS: dict[str, type[CommonProfile]] = {"local": LocalProfile, "ssh": SshProfile, "adb": AdbProfile}
_NESTED: dict[str, type[BaseModel]] = {"thermal": Thermal, "native": Native, "cpu": Cpu}


def host_cpus() -> list[int]:
    """The CPUs this process may run on: taskset can pin only to those."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def check_fields(raw: dict[Any, Any], path: Path) -> None:
    """Validate with the kind's model; its first complaint (in file order) becomes one DeviceError."""
    _check_keys_are_text(raw, path)
    try:
        MODELS[raw["kind"]].model_validate(raw)
    except ValidationError as exc:
        first = min(exc.errors(), key=lambda e: list(raw).index(e["loc"][0]))
        raise _profile_error(first, raw, path) from None


def _check_keys_are_text(raw: dict[Any, Any], path: Path, within: str = "") -> None:
    """A key YAML reads as a value (`~`, `1.5`, `yes`, a date) names no field: pydantic's complaint about it could
    not be placed in the file (an internal error listed no device at all) or named `yes:` as `1:`."""
    for key, value in raw.items():
        if not isinstance(key, str):
            shown = yaml.safe_dump(key, default_flow_style=True).removesuffix("\n...\n").strip()
            raise DeviceError(f"the key `{within}{shown}:` in device profile {path} is not a field name",
                              why=f"YAML reads it as the value {key!r}, not as text (~ is null; yes, no, numbers "
                                  "and dates are values too), and every field of a profile is named in text",
                              fix=f"remove it from {path}, or correct it to the field meant (`edgekd devices "
                                  "--example pi` shows a profile's fields)")
        if isinstance(value, dict):
            _check_keys_are_text(value, path, f"{within}{key}.")


def _profile_error(error: Any, raw: dict[Any, Any], path: Path) -> DeviceError:
    """What names the file and the (dotted) field, why the rule and the bad value, fix a right value."""
    keys, value, model = _locate(error["loc"], raw)
    field = ".".join(map(str, keys))
    if keys[-1] not in model.model_fields:  # an unknown key (or one that is not text)
        closest, known = _closest(keys[-1], model.model_fields), sorted(model.model_fields)
        meant = ".".join([*keys[:-1], str(closest)])
        owner = f"a profile of kind {raw['kind']}" if len(keys) == 1 else f"`{keys[0]}:`"
        return DeviceError(
            f"unknown field `{field}:` in device profile {path}" + (f" (did you mean `{meant}:`?)" if closest else ""),
            why=f"{owner} has the fields: {', '.join(known)}{_elsewhere(field, raw['kind'])}",
            fix=f"rename `{field}:` to `{meant}:` in {path}" if closest else
                f"remove `{field}:` from {path}, or correct its spelling")
    info = model.model_fields[keys[-1]]
    rule = ("must be set (it cannot be null)" if value is None else pydantic_message(error)
            if error["type"] == "value_error" else f"must be {info.description}")
    examples = " or ".join(f"`{keys[0]}: {_show(e if len(keys) == 1 else {keys[1]: e})}`" for e in info.examples or ())
    return DeviceError(f"invalid `{field}: {_show(value)}` in device profile {path}",
                       why=f"`{field}` {rule}, got {value!r}",
                       fix=f"set `{field}:` in {path} to {info.description}, e.g. {examples}")


def _locate(loc: tuple[Any, ...], raw: dict[Any, Any]) -> tuple[list[Any], Any, type[BaseModel]]:
    """The keys of the field a pydantic location names (`thermal.max_status`; not a list item nor a union
    branch), its value and the model it belongs to."""
    top, model = loc[0], MODELS[raw["kind"]]
    if top in _NESTED and len(loc) > 1 and isinstance(raw[top], dict) and loc[1] in raw[top]:
        return [top, loc[1]], raw[top][loc[1]], _NESTED[top]
    return [top], raw[top], model


def _elsewhere(key: str, kind: str) -> str:
    """A field of another kind (`host:` in a local profile) is more likely a wrong `kind:` than a typo."""
    others = [k for k, m in MODELS.items() if k != kind and key in m.model_fields.keys() - CommonProfile.model_fields]
    return f" (`{key}:` belongs to kind {' and '.join(others)})" if others else ""


def _closest(key: Any, known: Any) -> str | None:
    """The known name a typo most likely meant (difflib), or None."""
    matches = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
    return matches[0] if matches else None


def _show(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
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
