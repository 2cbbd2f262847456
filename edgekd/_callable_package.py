"""Let a subpackage double as the public function of the same name (edgekd.export, edgekd.bench).

Importing a submodule such as `edgekd.export.onnx` rebinds the attribute `edgekd.export` to the
package, hiding a plain function of that name; a callable package works whichever was imported first.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


def make_callable(package: str, target: str) -> None:
    """Make `package` callable, forwarding to `target` ('module:function'), imported at call time."""
    module_name, function_name = target.split(":")

    class _CallablePackage(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(importlib.import_module(module_name), function_name)(*args, **kwargs)

    sys.modules[package].__class__ = _CallablePackage
