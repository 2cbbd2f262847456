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


def export(checkpoint: Any, output_dir: Any, **kwargs: Any):
    """Export a checkpoint to verified ONNX artifacts (FP32 and INT8); see edgekd.exporter.export_checkpoint."""
    from edgekd.exporter import export_checkpoint

    return export_checkpoint(checkpoint, output_dir, **kwargs)


def bench(artifacts: Any, device: str = "host", **kwargs: Any):
    """Benchmark artifacts (records, folders or model files) on a device; returns BenchResults."""
    from edgekd.bench.harness import bench as _bench

    return _bench(artifacts, device=device, **kwargs)


__all__ = ["__version__", "load_recipe", "run", "export", "bench"]
