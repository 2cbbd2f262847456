"""edgekd as a user gets it: from a built wheel, installed without the repository around it.

The Makefile installs edgekd editable, so the code always runs next to the repository's devices/, recipes and
tests. These tests build the wheel from a copy of the sources (setuptools' own backend, no download) and check
what it carries and how it runs unpacked, from a folder that is not the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Not sources, at the checkout's top (edgekd/export/ is a subpackage): version control, the venv, run outputs,
# build leftovers, caches; and in devices/arm64 what `make arm-board` builds there (hundreds of MB).
LEFT_OUT = {REPO: {".git", ".venv", "export", "build", "dist", ".pytest_cache", ".hypothesis"},
            REPO / "devices" / "arm64": {"rootfs", "ssh", "work"}}


def _not_sources(folder: str, names: list[str]) -> set[str]:
    left = LEFT_OUT.get(Path(folder), set()) & set(names)
    return left | {n for n in names if n == "__pycache__" or n.endswith((".egg-info", ".pyc"))}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the checkout's sources, so the builds leave no build/ or egg-info in it."""
    src = tmp_path_factory.mktemp("checkout") / "edgekd"
    shutil.copytree(REPO, src, ignore=_not_sources)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    return _build(source, "wheel", tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def sdist(source, tmp_path_factory) -> Path:
    return _build(source, "sdist", tmp_path_factory.mktemp("dist"))


def _build(source: Path, kind: str, dist: Path) -> Path:
    """setuptools' PEP 517 backend, as pip or `python -m build` call it, in this environment instead of an isolated
    one (no download): torch 2.13 requires setuptools>=77.0.3, above pyproject.toml's build floor."""
    build = f"import sys\nfrom setuptools import build_meta\nprint(build_meta.build_{kind}(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", build, str(dist)], cwd=source, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dist / proc.stdout.strip().splitlines()[-1]


def _metadata(wheel: Path) -> dict[str, list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(archive.read(name).decode())
    return {key: message.get_all(key) or [] for key in set(message.keys())}


def test_the_license_is_an_spdx_expression(wheel):
    """A TOML table `license = {text = ...}` is deprecated by setuptools, whose builds refuse it after 2027-02-18;
    the SPDX string is recorded as License-Expression (core metadata 2.4)."""
    metadata = _metadata(wheel)
    assert metadata.get("License-Expression") == ["Apache-2.0"], metadata
    assert "License" not in metadata, metadata


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel unpacked as pip installs a pure-Python wheel: its files in a site folder, no repository near."""
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def _edgekd(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI run from the unpacked wheel (first on sys.path), in a folder that is not the repository."""
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", "from edgekd.cli import main; main()", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)


def test_the_wheel_carries_every_file_of_the_package(source, wheel):
    """A data file ships only when pyproject.toml's package-data names it: one it misses works in the editable
    install the Makefile makes and is absent for every user of the wheel."""
    from edgekd.recipe import builtin_recipes

    package = {p.relative_to(source).as_posix() for p in (source / "edgekd").rglob("*") if p.is_file()}
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    assert not sorted(package - shipped), sorted(package - shipped)
    assert all(n.split("/")[0] in ("edgekd", wheel.name.split("-py3")[0] + ".dist-info") for n in shipped), shipped
    # what the code reads at run time by path: the runner it pushes to devices, recipes, example profiles
    needed = {"edgekd/bench/runner.py", *(f"edgekd/recipes/{name}.yaml" for name in builtin_recipes()),
              "edgekd/devices/examples/pi.yaml", "edgekd/devices/examples/phone.yaml"}
    assert needed <= shipped, sorted(needed - shipped)


def test_the_sdist_is_the_whole_source_release(source, sdist):
    """Without MANIFEST.in, setuptools put tests/test_*.py in the sdist but not the conftest.py, helpers, recipes
    and samples they import, nor the device profiles they read nor the torch pin the README installs with."""
    import tarfile

    with tarfile.open(sdist) as archive:
        root = archive.getnames()[0].split("/")[0]
        shipped = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    for folder in ("tests", "devices", "benchmarks"):
        files = {p.relative_to(source).as_posix() for p in (source / folder).rglob("*") if p.is_file()}
        assert files and not sorted(files - shipped), sorted(files - shipped)
    assert {"constraints.txt", "Makefile", "pyproject.toml", "README.md"} <= shipped
    assert root == sdist.name[: -len(".tar.gz")]


def test_a_device_profile_starts_from_the_example_the_wheel_ships(installed, tmp_path):
    """The examples lived in the repository's devices/, which a wheel does not have, and the errors told the
    user to copy them from there."""
    # the wheel's code, every module of it: one it lacked would be imported from an editable install's checkout
    probe = subprocess.run([sys.executable, "-c", "import edgekd.cli, edgekd.bench.harness, edgekd.export.onnx, sys;"
                            "print(*(m.__file__ for n, m in sys.modules.items() if n.startswith('edgekd')))"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True,
                           text=True)
    assert probe.returncode == 0 and all(Path(f).is_relative_to(installed) for f in probe.stdout.split()), probe

    from edgekd.export.onnx import write_identity_model

    write_identity_model(tmp_path / "model.onnx", (1, 4), 18)
    unknown = _edgekd(installed, tmp_path, "bench", "model.onnx", "--device", "pi")
    assert unknown.returncode == 2 and "edgekd devices --example pi" in unknown.stderr, unknown.stderr

    example = _edgekd(installed, tmp_path, "devices", "--example", "pi")
    assert example.returncode == 0, example.stderr
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "pi.yaml").write_text(example.stdout, encoding="utf-8")
    listing = _edgekd(installed, tmp_path, "devices")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[1]: line for line in listing.stdout.splitlines() if line.startswith("│")}
    assert "ssh" in rows["pi"] and str(tmp_path / "devices" / "pi.yaml") in rows["pi"], listing.stdout
    assert "built in" in rows["host"], listing.stdout

    wrong = _edgekd(installed, tmp_path, "devices", "--example", "pii")
    assert wrong.returncode == 2 and "did you mean 'pi'?" in wrong.stderr and "Traceback" not in wrong.stderr


def test_bench_runs_on_this_host_from_the_wheel(installed, tmp_path):
    """The built-in host and the runner pushed to it come from the package alone: no devices/ folder here."""
    from edgekd.export.onnx import write_identity_model

    write_identity_model(tmp_path / "model.onnx", (1, 4), 18)
    proc = _edgekd(installed, tmp_path, "bench", "model.onnx", "--rounds", "1", "--min-seconds", "0.02")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model" in proc.stdout and (tmp_path / "export" / "history.sqlite").is_file()
    assert list((tmp_path / "export" / "results").glob("*.json")), proc.stdout
