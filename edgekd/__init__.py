"""edgekd: distill → compress → export → benchmark on the real device.

The public API is small and lazy: importing edgekd imports neither torch nor any runtime.

    import edgekd
    recipe = edgekd.load_recipe("demo")
    run = edgekd.run(recipe)
    for art in run.artifacts:
        print(art.format, art.precision, art.size_bytes, art.parity.agreement)
    results = edgekd.bench(run.artifacts, device="host")
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekd.pipeline import RunResult
    from edgekd.recipe import Recipe


def load_recipe(source: Any) -> "Recipe":
    """Load and validate a recipe from a YAML path, a built-in name ('demo') or a dict."""
    from edgekd.recipe import load_recipe as _load

    return _load(source)


def run(recipe: Any, **kwargs: Any) -> "RunResult":
    """Run every stage of a recipe (a Recipe, a path, a built-in name or a dict); resumable."""
    from edgekd.pipeline import run as _run
    from edgekd.recipe import Recipe

    return _run(recipe if isinstance(recipe, Recipe) else load_recipe(recipe), **kwargs)


# Callable packages: edgekd.export(checkpoint, output_dir, ...) and edgekd.bench(artifacts, device=...).
from edgekd import bench, export  # noqa: E402

__all__ = ["__version__", "load_recipe", "run", "export", "bench"]
