"""edgekd as a user gets it: from a built wheel, installed without the repository around it.

The Makefile installs edgekd editable, so the code always runs next to the repository's devices/, recipes and
tests. These tests build the wheel from a copy of the sources (setuptools' own backend, no download) and check
what it carries and how it runs unpacked, from a folder that is not the repository.
"""

from __future__ import annotations

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
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (so the build leaves no build/ or egg-info in the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    src, dist = root / "src", root / "dist"
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(source, src / name)
    build = ("import sys\nfrom setuptools import build_meta\n"
             "print(build_meta.build_wheel(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", build, str(dist)], cwd=src, capture_output=True, text=True)
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
