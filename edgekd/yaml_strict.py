"""YAML for recipes and device profiles: safe, and a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys in silence, so `seed: 1` a few lines above `seed: 2` ran with seed 2.
"""

from __future__ import annotations

from typing import Any

import yaml

_MERGE = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, naming the line of the second one (yaml_problem shows it)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if any(key_node.tag == _MERGE for key_node, _ in node.value):  # `<<: *anchor` keys may override on purpose
            return super().construct_mapping(node, deep=deep)
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):  # an unhashable key is yaml's own error to report
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "in a mapping", node.start_mark,
                    f"'{key}' is given twice (first at line {seen[key] + 1}); YAML would keep only the last",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML text like yaml.safe_load, refusing a key given twice in one mapping (a yaml.YAMLError)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
