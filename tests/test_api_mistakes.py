"""Mistakes a caller of the Python API (edgekd.load_recipe, run, export, bench; bench.history; device profiles)
makes: each must raise an EdgeKDError that says what, why and how to fix, never a bare TypeError or
FileNotFoundError from deep inside. Found by an audit with real calls; tiny models, no mocks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import edgekd
from edgekd.errors import ArtifactError, RecipeError, RegistryError


@pytest.mark.parametrize("source", [None, 3, True, ["demo"], b"demo", {"demo"}])
def test_a_recipe_of_the_wrong_type_is_refused(source):
    with pytest.raises(RecipeError, match=f"cannot load a recipe from {type(source).__name__}") as err:
        edgekd.load_recipe(source)
    assert "path, a built-in recipe name or a dict" in err.value.why
    with pytest.raises(RecipeError, match="cannot load a recipe from"):
        edgekd.run(source)


def test_an_empty_recipe_name_is_refused_as_such():
    """Path('') is the current folder: it said 'recipe . is a folder'."""
    with pytest.raises(RecipeError, match="the recipe's path or name is empty") as err:
        edgekd.load_recipe("")
    assert "demo" in err.value.fix


def test_yaml_text_given_as_the_recipe_says_so(tmp_path, monkeypatch):
    """It said 'recipe not found: name: x ...', as if the text were a file name."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match="looks like YAML text, not a path") as err:
        edgekd.load_recipe("name: x\nseed: 1\n")
    assert "yaml.safe_load" in err.value.fix
    with pytest.raises(RecipeError, match="recipe not found: mine: v2.yaml"):  # a file name is still one
        edgekd.load_recipe("mine: v2.yaml")


def test_a_recipe_object_is_taken_as_it_is():
    recipe = edgekd.load_recipe({"name": "x"})
    assert edgekd.load_recipe(recipe) is recipe


@pytest.mark.parametrize("device", [None, 3, ["host"]])
def test_a_device_that_is_no_name_is_refused(device, tmp_path):
    """Path(device) raised a bare TypeError, from bench(device=...) and export(devices=[...]) alike."""
    from edgekd.devices.profiles import find_profile

    with pytest.raises(RegistryError, match="a device is a profile name or a profile's path, not") as err:
        find_profile(device)
    assert "host" in err.value.why and "device='host'" in err.value.fix
    with pytest.raises(RegistryError, match="a device is a profile name"):
        edgekd.bench([], device=device)
    with pytest.raises(RegistryError, match="a device is a profile name"):
        edgekd.export(tmp_path / "student.pt", tmp_path / "out", devices=[device])


@pytest.fixture(scope="module")
def bare_onnx(tmp_path_factory):
    """A tiny ONNX model file (no artifact record): enough for the checks before any runner starts."""
    import torch

    path = tmp_path_factory.mktemp("bare") / "tiny.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(path), dynamo=False)
    return path


@pytest.mark.parametrize("kind", [str, Path])
def test_one_artifact_path_not_in_a_list_is_refused(kind, bare_onnx):
    """A string was benched letter by letter: '/ is not an artifact folder'; a Path raised TypeError."""
    with pytest.raises(ArtifactError, match="artifacts must be a list, got one") as err:
        edgekd.bench(kind(bare_onnx))
    assert err.value.fix == f"put it in a list: [{str(bare_onnx)!r}]"


@pytest.mark.parametrize("artifacts, said", [
    (None, "artifacts must be a list, got NoneType"), (3, "artifacts must be a list, got int"),
    ([None], "cannot benchmark NoneType None"), ([{"file": "model.onnx"}], "cannot benchmark dict"),
])
def test_artifacts_of_the_wrong_type_are_refused(artifacts, said):
    with pytest.raises(ArtifactError, match=re.escape(said)) as err:
        edgekd.bench(artifacts)
    assert "artifact folders, artifact.json files" in err.value.why
