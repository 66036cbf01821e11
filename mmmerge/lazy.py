"""Package names imported when first used, so `import mmmerge.cli` (and `mmmerge --help`) pays only for what a
command runs: transformers alone takes about a second to import."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, where: dict[str, str | tuple[str, str]], namespace: dict) -> tuple[Callable, Callable]:
    """`__getattr__` and `__dir__` for `package`, whose name N comes from module `where[N]` (relative to it), or
    is the name `attr` of the module when `where[N]` is `(module, attr)`."""

    def getattr_(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = where[name] if isinstance(where[name], tuple) else (where[name], name)
        value = getattr(importlib.import_module(module, package), attr)
        namespace[name] = value
        return value

    def dir_():
        return sorted(set(namespace) | set(where))

    return getattr_, dir_
