"""One generic name → object registry, used for data sets, model families and losses.

Recipes refer to entries by name; an unknown name lists the known ones.
"""

from __future__ import annotations

import logging
from typing import Callable, Generic, Iterator, TypeVar

from edgekd.errors import RegistryError

T = TypeVar("T")
logger = logging.getLogger(__name__)


class Registry(Generic[T]):
    """A named collection filled with the `register` decorator."""

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                logger.warning("%s '%s' registered twice; the later one wins", self.kind, name)
            self._entries[name] = obj
            return obj

        return decorator

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} '{name}'",
                why=f"known {self.plural}: {', '.join(self.names())}",
                fix=f"use one of the known names",
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)
