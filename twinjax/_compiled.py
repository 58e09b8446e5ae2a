"""Compiled functions kept by structure, shared across calls.

JAX compiles a function once per trace; twinjax builds its jitted functions (forecast
outcomes, predictive curves, outcome likelihoods) around a template and a structure (regions,
tolerances), with everything numeric traced. [`CompiledCache`][] keeps them so that later calls
of the same structure reuse the compilation. Keys contain ``id(owner)`` (the template); each
entry holds the owner itself, so that id cannot be reused by another object while the entry
lives. Least recently used entries are dropped beyond `max_entries`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable


class CompiledCache:
    """A bounded least-recently-used store of compiled functions (module docs)."""

    def __init__(self, max_entries: int):
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self.max_entries = int(max_entries)

    def get(self, key: Hashable, owner: object, build: Callable[[], Callable]) -> Callable:
        """The function stored under `key` for `owner`, built by `build()` on a miss."""
        hit = self._entries.get(key)
        if hit is not None and hit[0] is owner:
            self._entries.move_to_end(key)
            return hit[1]
        fn = build()
        self._entries[key] = (owner, fn)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return fn

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
