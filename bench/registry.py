"""Name -> class registries for the strings users write in configs (attacks, defenses, models).

Lookups of unknown names raise a one-line ConfigError listing what exists; registering a
name twice is a programming error (ValueError).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bench.errors import ConfigError


class Registry(Mapping[str, type]):
    """A read-mostly mapping from config names to classes."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, type] = {}

    def register(self, name: str, cls: type) -> type:
        """Adds ``cls`` under ``name`` and returns it."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = cls
        return cls

    def __getitem__(self, name: str) -> type:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def name_of(self, obj: object) -> str:
        """The registered name of an instance's class (its lower-cased class name if none)."""
        for name, cls in self._items.items():
            if type(obj) is cls:
                return name
        return type(obj).__name__.lower()
