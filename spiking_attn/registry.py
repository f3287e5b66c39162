"""Named registries: the one place where a name given by a user (a task, a mechanism) is looked up.

The CLI takes its choices from them, ``build_model`` and ``train`` dispatch through them, and later
stages (converter, energy counter, exporters) read the same entries. Adding an entry never touches an
if/else chain: register it, and every reader sees it.
"""
from __future__ import annotations

import re
from typing import Dict, Generic, Iterator, Tuple, TypeVar

from .errors import DTypeError, SpikingAttnError

Entry = TypeVar("Entry")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[Entry]):
    """Entries of one kind, by name, in registration order.

    Args:
        kind: what the entries are ('task', 'mechanism'), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, Entry] = {}

    def register(self, name: str, entry: Entry, *, replace: bool = False) -> Entry:
        """Add ``entry`` under ``name`` (lower case, digits and underscores). Returns the entry.

        A name that is taken is an error unless ``replace`` is set.
        """
        if not isinstance(name, str):
            raise DTypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        if not _NAME.match(name):
            raise SpikingAttnError(f"{self.kind} name {name!r} must start with a lower-case letter and hold only "
                                   "lower-case letters, digits and underscores")
        if name in self._entries and not replace:
            raise SpikingAttnError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> Entry:
        """Remove and return the entry called ``name``."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> Entry:
        """The entry called ``name``; an unknown name is an error that lists the known ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise SpikingAttnError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._entries)}") from None

    def names(self) -> Tuple[str, ...]:
        return tuple(self._entries)

    def items(self):
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
