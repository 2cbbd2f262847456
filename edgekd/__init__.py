"""edgekd: distill → compress → export → benchmark on the real device.

The public API is small and lazy: importing edgekd imports neither torch nor any runtime.

    import edgekd
    recipe = edgekd.load_recipe("demo")
    run = edgekd.run(recipe)
    for art in run.artifacts:
        print(art.name, art.size_bytes, art.parity.agreement if art.parity else None)  # floors have no parity
    results = edgekd.bench(run.artifacts, device="host")
    outcome = edgekd.distill(recipe)  # the distill stage alone, in memory: outcome.student, .steps
"""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False  # not typing's: the `edgekd` command imports this package before its Ctrl-C handler is set
if TYPE_CHECKING:
    from typing import Any

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


def _make_callable(package: str, target: str) -> None:
    """Let a subpackage double as the public function of the same name (edgekd.distill, edgekd.export, edgekd.bench).

    Importing a submodule such as `edgekd.export.onnx` rebinds the attribute `edgekd.export` to the
    package, hiding a plain function of that name; a callable package works whichever came first.
    It lives here, in the root package every submodule loads anyway, so that importing
    `edgekd.bench.runner` loads no other edgekd module.
    """
    import importlib
    import sys
    import types

    module_name, function_name = target.split(":")

    class _CallablePackage(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(importlib.import_module(module_name), function_name)(*args, **kwargs)

    sys.modules[package].__class__ = _CallablePackage


def __getattr__(name: str) -> Any:
    """edgekd.distill, edgekd.export and edgekd.bench (callable packages) are imported on first use."""
    if name in ("distill", "export", "bench"):
        import importlib

        return importlib.import_module(f"edgekd.{name}")
    raise AttributeError(f"module 'edgekd' has no attribute {name!r}")


__all__ = ["__version__", "load_recipe", "run", "distill", "export", "bench"]
