"""Every recipe field with its type, default and meaning, read from the pydantic models themselves.

The README shows the fields most recipes touch; this listing is the complete reference, and it cannot go
stale because it is the schema that validates recipes.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from edgekd.recipe import Recipe


@dataclass(frozen=True)
class RecipeField:
    path: str  # YAML path, e.g. distill.loss.temperature; list items as members[]
    type: str
    default: str
    description: str


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The pydantic model a field holds (directly or as list items), and the path suffix for list items."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (None,)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, "[]"
    return None, ""


def _type_text(annotation: Any) -> str:
    """Readable type: Literal choices as "a" | "b", containers with their item types, no module prefixes."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is not None:
        inner = ", ".join("Any" if a is Any else _type_text(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _default_text(value: Any) -> str:
    return json.dumps(value.model_dump(mode="json") if isinstance(value, BaseModel) else value, default=str)


def recipe_fields(model: type[BaseModel] = Recipe, defaults: BaseModel | None = None,
                  prefix: str = "") -> list[RecipeField]:
    """Leaf fields of `model`, depth first in declaration order. Defaults come from a default instance, so a
    section's own default (teacher.train.epochs 20, not TrainConfig's 30) is the one shown."""
    if defaults is None and model is Recipe:
        defaults = Recipe()
    out: list[RecipeField] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        value = getattr(defaults, name) if defaults is not None else None
        nested, suffix = _model_in(info.annotation)
        if nested is not None:
            out.extend(recipe_fields(nested, value if not suffix else None, f"{path}{suffix}."))
            continue
        if defaults is not None:
            default = _default_text(value)
        else:
            default = "(required)" if info.is_required() else _default_text(info.get_default(call_default_factory=True))
        out.append(RecipeField(path, _type_text(info.annotation), default, info.description or ""))
    return out
