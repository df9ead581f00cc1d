"""Module attributes that import their defining module on first use.

Packages use it to offer short import paths (``medclipseg.io.read_image``) without importing
every submodule, and so every heavy dependency, when one of them is imported.
"""
from __future__ import annotations

import importlib
from typing import Callable, Mapping


def lazy_getattr(module_globals: dict, table: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``table`` = {attribute name: module that defines it}.

    The first access imports the defining module and caches the value in ``module_globals``,
    so later accesses are ordinary attribute look-ups.
    """
    module_name = module_globals["__name__"]

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name]), name)
        module_globals[name] = value
        return value

    return __getattr__
