"""Objects a config names by import path (``mypkg.rewards:my_reward``): a user's own reward function or judge,
used without forking. Importing runs the user's module, as ``python -c "import mypkg.rewards"`` would; a config
file is trusted code in that sense, and nothing else in it is ever executed."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any


def is_import_path(name: str) -> bool:
    """``package.module:attribute`` (a registered name never holds a colon)."""
    return ":" in name


def import_object(path: str, what: str) -> Any:
    """The attribute ``path`` names (``package.module:attr``, ``attr`` may be dotted); ``ValueError`` naming
    ``what`` (e.g. "reward") and the path when the module does not import or lacks the attribute."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what} {path!r}: expected an import path 'package.module:name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any failure of the user's module is reported, not raised through
        raise ValueError(f"{what} {path!r}: cannot import module {module_name!r} ({type(e).__name__}: {e})") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj


def check_callable(obj: Any, path: str, what: str, parameters: tuple[str, ...]) -> Callable:
    """``obj`` if it is callable with the positional ``parameters``; ``ValueError`` saying what it accepts else."""
    if not callable(obj):
        raise ValueError(f"{what} {path!r} is a {type(obj).__name__}, not a function or class")
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return obj
    try:
        signature.bind(*parameters)
    except TypeError:
        raise ValueError(f"{what} {path!r} has the signature {signature}; expected it to be callable as "
                         f"({', '.join(parameters)})") from None
    return obj
