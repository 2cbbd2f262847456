"""Distillation: losses, feature capture, strategies and the training loop.

Calling the package, `edgekd.distill(recipe, teacher=...)`, distils the recipe's student in memory, without a
run directory (edgekd.distill.api.distill_student); `edgekd.run` does the same as its distill stage and keeps
checkpoints, metrics and a manifest.
"""

from edgekd import _make_callable

_make_callable(__name__, "edgekd.distill.api:distill_student")
