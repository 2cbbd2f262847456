"""`edgekd fields`: the recipe reference read from the schema must cover every field recipes use."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

import edgekd
from edgekd.errors import RecipeError
from edgekd.recipe import Recipe
from edgekd.recipe_fields import recipe_fields

CLI = [sys.executable, "-m", "edgekd.cli"]


def _yaml_paths(node: object, prefix: str = "") -> list[str]:
    """Key paths of a recipe document, list items of mappings spelled `key[].field`."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in [f"{prefix}{k}", *_yaml_paths(v, f"{prefix}{k}.")]]
    if isinstance(node, list) and node and all(isinstance(i, dict) for i in node):
        return [p for item in node for p in _yaml_paths(item, f"{prefix.rstrip('.')}[].")]
    return []


def test_every_key_of_every_builtin_recipe_is_listed():
    fields = recipe_fields()
    listed = {f.path for f in fields}
    mappings = {f.path for f in fields if f.type.startswith("dict[")}  # free-form: model.params, export.targets
    recipes = sorted(resources.files("edgekd.recipes").iterdir(), key=str)
    recipes += sorted((Path(__file__).parent / "recipes").glob("*.yaml"))
    checked = 0
    for path in recipes:
        if not str(path).endswith(".yaml"):
            continue
        for key in _yaml_paths(yaml.safe_load(path.read_text())):
            inside_mapping = any(key.startswith(f"{p}.") for p in mappings)  # e.g. a key of model.params
            assert key in listed or inside_mapping or any(p.startswith(f"{key}.") or p.startswith(f"{key}[]")
                                                         for p in listed), f"{path}: {key} is not listed"
            checked += 1
    assert checked > 200


def test_defaults_are_those_of_a_default_recipe():
    dumped = Recipe().model_dump(mode="json")
    for field in recipe_fields():
        if "[]" in field.path:
            continue
        value = dumped
        for part in field.path.split("."):
            value = value[part]
        assert json.loads(field.default) == value, field.path
    by_path = {f.path: f for f in recipe_fields()}
    assert by_path["teacher.train.epochs"].default == "20"  # the section's default, not TrainConfig's 30
    assert by_path["distill.ensemble.members[].model.family"].default == "(required)"
    assert by_path["export.int8_reduce_range"].type == '"auto" | true | false'


def test_cli_lists_a_section_and_rejects_an_unknown_one():
    env = {**os.environ, "COLUMNS": "200"}
    shown = subprocess.run([*CLI, "fields", "distill.loss"], capture_output=True, text=True, check=True,
                           env=env).stdout
    assert "distill.loss.temperature" in shown and "T²" in shown and "bench.device" not in shown
    wrong = subprocess.run([*CLI, "fields", "distil"], capture_output=True, text=True, env=env)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "no recipe field under 'distil'" in wrong.stderr and "distill" in wrong.stderr


def test_listing_fields_does_not_import_torch():
    code = "import sys; from edgekd.recipe_fields import recipe_fields; recipe_fields(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


@pytest.mark.parametrize("export, said", [({"formats": ["onnx", "onnx"]}, "formats (onnx) is listed more than once"),
                                          ({"targets": {"student": ["fp32", "int4", "fp32"]}},
                                           "targets.student (fp32) is listed more than once")])
def test_a_format_or_precision_listed_twice_is_refused(export, said):
    """Each was exported twice into the same folder, the second over the first."""
    with pytest.raises(RecipeError, match=re.escape(said)):
        edgekd.load_recipe({"export": export})
