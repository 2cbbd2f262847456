"""Mistakes a caller of the Python API (edgekd.load_recipe, run, export, bench; bench.history; device profiles)
makes: each must raise an EdgeKDError that says what, why and how to fix, never a bare TypeError or
FileNotFoundError from deep inside. Found by an audit with real calls; tiny models, no mocks."""

from __future__ import annotations

import pytest

import edgekd
from edgekd.errors import RecipeError, RegistryError


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
