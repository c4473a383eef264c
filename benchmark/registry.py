"""A small name -> object registry, in the style of timm's model registry.

Registries replace if-chains: a plugin registers itself with a decorator, and
every lookup of an unknown name fails with an error listing the valid names.
Tests are parametrised over ``registry.names()``, so a newly registered
plugin is tested without anyone writing a new test.

Example::

    MODELS = Registry("model")

    @MODELS.register("smallcnn")
    def smallcnn(num_classes=10): ...

    MODELS.get("smallcnn")        # the function
    MODELS.names("resnet*")       # wildcard filter
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

from rfbench.benchmark.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from public names to plugin objects (classes or factories)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str | None = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; duplicate names are an error."""

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            doc = help or (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the object registered as ``name``, or raise :class:`UnknownNameError`."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style wildcard ``pattern``."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def describe(self, name: str) -> str:
        """One-line description (the first docstring line) of ``name``."""
        self.get(name)
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
