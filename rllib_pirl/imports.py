"""Objects named ``"package.module:Name"`` (in yaml files, checkpoints and the env table)."""

from __future__ import annotations

import functools
import importlib


def import_object(path: str):
    """``"package.module:Name"`` → the object."""
    if not isinstance(path, str) or ":" not in path:
        raise ValueError(f"Expected 'package.module:Name', got {path!r}")
    module_name, name = path.split(":", 1)
    return getattr(importlib.import_module(module_name), name)


def _call(path: str, *args, **kwargs):
    return import_object(path)(*args, **kwargs)


def deferred(path: str):
    """A picklable stand-in for the function at ``path`` that imports it at its first call
    (a simulator's package loads only when its env is used)."""
    return functools.partial(_call, path)
