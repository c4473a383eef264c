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

from rfbench.core.errors import UnknownNameError

T = TypeVar("T")

INVENTION_LABEL = "rfbench's own invention, not from a paper"


def inventions_of(obj: object) -> dict[str, str]:
    """A plugin's ``inventions`` attribute: ``{"": note}`` when the whole method is rfbench's own,
    ``{"option=value": note}`` for an option that is (e.g. ``{"tmode=confidence": ...}``)."""
    return dict(getattr(obj, "inventions", None) or {})


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
        """One-line description (the first docstring line) of ``name``, with the label of any part
        that is rfbench's own invention (:meth:`invention_notes`)."""
        self.get(name)
        text = self._help.get(name, "")
        labels = [(f"{k}: " if k else "") + INVENTION_LABEL for k in inventions_of(self._items[name])]
        return f"{text} [{'; '.join(labels)}]" if labels else text

    def invention_notes(self, name: str, settings: dict | None = None) -> list[str]:
        """The notes of ``name``'s parts that are rfbench's own (not from a paper), each starting with
        :data:`INVENTION_LABEL`; with ``settings`` (its config as a mapping), only the parts in use."""
        out = []
        for key, note in inventions_of(self.get(name)).items():
            if key and settings is not None:
                k, v = key.split("=", 1)
                if str(settings.get(k)) != v:
                    continue
            out.append(f"{INVENTION_LABEL}{f' ({key})' if key else ''}: {note}")
        return out

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
