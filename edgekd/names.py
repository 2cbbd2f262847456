"""Names that become parts of file paths on this host or on a device, checked where they are read.

A run name, a device name, an artifact's name, role and file name all end up joined to a folder: one with a `/`
or a `..` in it would write or delete outside that folder (an edited artifact.json, a checkpoint's metadata).
"""

from __future__ import annotations

from typing import Literal

# A run or device name: one word that is safe in any file system and in a shell word.
IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
IDENTIFIER_RULE = "letters, digits, '.', '_' and '-', starting with a letter or a digit"
# A file or folder name: anything on one line except a path separator, and not "." or "..".
# (Written without look-ahead, which pydantic's regex engine lacks: no dot first, or one dot then no dot, or two
# dots then anything.)
_C = r"[^/\\\x00-\x1f]"
PATH_COMPONENT = rf"^(?:[^./\\\x00-\x1f]{_C}*|\.[^./\\\x00-\x1f]{_C}*|\.\.{_C}+)$"

# An artifact's precision, the last part of its name (role-format-precision): what a recipe can ask for, and
# "unknown" for a model file benchmarked bare (no export record says how it was quantized). int8_qat: ONNX
# only, made by quantization-aware distillation (export.qat).
Precision = Literal["fp32", "int8_static", "int8_dynamic", "int4", "int8_qat"]
ArtifactPrecision = Literal[Precision, "unknown"]
