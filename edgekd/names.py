"""Names that become parts of file paths on this host or on a device, checked where they are read.

A run name, a device name, an artifact's name, role and file name all end up joined to a folder: one with a `/`
or a `..` in it would write or delete outside that folder (an edited artifact.json, a checkpoint's metadata).
"""

from __future__ import annotations

# A run or device name: one word that is safe in any file system and in a shell word.
IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
IDENTIFIER_RULE = "letters, digits, '.', '_' and '-', starting with a letter or a digit"
# A file or folder name: anything on one line except a path separator, and not "." or "..".
# (Written without look-ahead, which pydantic's regex engine lacks: no dot first, or one dot then no dot, or two
# dots then anything.)
_C = r"[^/\\\x00-\x1f]"
PATH_COMPONENT = rf"^(?:[^./\\\x00-\x1f]{_C}*|\.[^./\\\x00-\x1f]{_C}*|\.\.{_C}+)$"
