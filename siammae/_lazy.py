"""PEP 562 lazy re-exports: a package's public names are imported on first use, not when the package is.

So ``import siammae.cli.track`` (and every ``--help``) stays free of torch, training, evaluation and the export
runtimes until a command actually needs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose ``exports`` map a public name to its defining module.

    A name is looked up once, then cached in the package ``namespace`` (its ``globals()``).
    """

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
