"""Exporters (ONNX now), verification and artifact records.

Calling the package, `edgekd.export(checkpoint, output_dir, ...)`, exports a checkpoint to verified
artifacts (edgekd.exporter.export_checkpoint).
"""

from edgekd import _make_callable

_make_callable(__name__, "edgekd.exporter:export_checkpoint")
