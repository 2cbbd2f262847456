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
# What the build reads: the package, its metadata and the readme pyproject.toml names.
SOURCES = ("pyproject.toml", "README.md", "edgekd")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of what the build reads."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    """The wheel built from the copy (so the build leaves no build/ or egg-info in the checkout)."""
    dist = tmp_path_factory.mktemp("dist")
    build = ("import sys\nfrom setuptools import build_meta\n"
             "print(build_meta.build_wheel(sys.argv[1]))")
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
    # what the code reads at run time by path: the runner it pushes to devices, recipes, example profiles
    needed = {"edgekd/bench/runner.py", *(f"edgekd/recipes/{name}.yaml" for name in builtin_recipes()),
              "edgekd/devices/examples/pi.yaml", "edgekd/devices/examples/phone.yaml"}
    assert needed <= shipped, sorted(needed - shipped)


def test_a_device_profile_starts_from_the_example_the_wheel_ships(installed, tmp_path):
    """The examples lived in the repository's devices/, which a wheel does not have, and the errors told the
    user to copy them from there."""
    probe = subprocess.run([sys.executable, "-c", "import edgekd; print(edgekd.__file__)"], cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True, text=True)
    assert Path(probe.stdout.strip()).is_relative_to(installed), probe  # the wheel's code, not the checkout's

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
