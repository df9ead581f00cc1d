"""ByteCache: a least-recently-used cache bounded in bytes, shared by the server's in-memory caches.

A count bound says nothing about memory when one entry can be a 100 MP prediction (1.3 GB) and
another a 64 x 64 one, so every cache of predictions, volumes and volume masks is bounded by the
bytes of its numpy arrays instead (``MEDCLIPSEG_CACHE_MB``, split between the caches by
:func:`medclipseg.settings.cache_bytes`). An entry larger than the whole budget is not kept (the
caller still gets its value); adding one evicts the least recently used until the total fits.
Thread-safe; ``get_or_load`` lets one thread load a missing key while others wait for it.
"""
from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, Union

import numpy as np

__all__ = ["ByteCache", "budget_of", "size_of"]


def size_of(value: Any, _depth: int = 0) -> int:
    """Bytes held by ``value``'s numpy arrays (an ``nbytes`` attribute, dataclass fields, containers).
    Python scalars and strings count as nothing: beside images they are noise."""
    if value is None or _depth > 4:
        return 0
    if isinstance(value, np.ndarray):
        # A view counts as its base only when it owns nothing: the base is what stays alive.
        return int(value.nbytes if value.base is None else getattr(value.base, "nbytes", value.nbytes))
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return len(value) if not isinstance(value, str) else 0
    if isinstance(value, dict):
        return sum(size_of(v, _depth + 1) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return sum(size_of(v, _depth + 1) for v in value)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, (int, np.integer)):
        return int(nbytes)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(size_of(getattr(value, f.name), _depth + 1) for f in dataclasses.fields(value))
    return 0


class ByteCache:
    """LRU of ``key -> value`` whose values' bytes (``sizer``, default :func:`size_of`) stay within
    ``budget`` bytes: an int, or a function read at every insertion (a setting changed at run time)."""

    def __init__(self, budget: Union[int, Callable[[], int]], *, sizer: Callable[[Any], int] = size_of):
        self._budget = budget
        self._sizer = sizer
        self._guard = threading.Lock()
        self._items: "OrderedDict[Hashable, tuple]" = OrderedDict()   # key -> (value, bytes)
        self._bytes = 0
        self._loading: dict = {}

    @property
    def budget(self) -> int:
        return int(self._budget() if callable(self._budget) else self._budget)

    @property
    def nbytes(self) -> int:
        with self._guard:
            return self._bytes

    def __len__(self) -> int:
        with self._guard:
            return len(self._items)

    def __contains__(self, key) -> bool:
        with self._guard:
            return key in self._items

    def get(self, key, default=None):
        with self._guard:
            item = self._items.get(key)
            if item is None:
                return default
            self._items.move_to_end(key)
            return item[0]

    def put(self, key, value) -> bool:
        """Keep ``value`` (replacing what ``key`` held); False when it alone is over the budget."""
        size = int(self._sizer(value))
        budget = self.budget
        with self._guard:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > budget:
                return False
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > budget and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
            return True

    def pop(self, key, default=None):
        with self._guard:
            item = self._items.pop(key, None)
            if item is None:
                return default
            self._bytes -= item[1]
            return item[0]

    def clear(self) -> None:
        with self._guard:
            self._items.clear()
            self._bytes = 0

    def get_or_load(self, key, load: Callable[[], Any]):
        """The cached value, else ``load()`` (kept when it fits): one loader per key at a time, so a
        second request for a volume being read waits for that read instead of reading it again."""
        value = self.get(key)
        if value is not None:
            return value
        with self._guard:
            lock = self._loading.setdefault(key, threading.Lock())
        try:
            with lock:
                value = self.get(key)
                if value is None:
                    value = load()
                    self.put(key, value)
        finally:
            with self._guard:
                if self._loading.get(key) is lock:
                    self._loading.pop(key, None)
        return value


def budget_of(share: str) -> Callable[[], int]:
    """The budget function of one cache: its share of ``MEDCLIPSEG_CACHE_MB`` (settings.cache_bytes)."""
    from medclipseg import settings

    return lambda: settings.cache_bytes(share)

