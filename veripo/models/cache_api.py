"""Passing a KV cache to a transformers model across 5.x: the keyword became ``cache`` (and the output field
``.cache``) where earlier 5.x releases call both ``past_key_values``, which newer releases still accept with
a FutureWarning on every run. These helpers use whichever name the installed release takes."""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=None)
def _cache_keyword(forward_owner: type) -> str:
    return "cache" if "cache" in inspect.signature(forward_owner.forward).parameters else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model(**..., **cache_kwargs(model, cache))``."""
    return {_cache_keyword(type(model)): cache}


def output_cache(output: Any) -> Any:
    """The cache a forward returned (``output.cache`` or ``output.past_key_values``)."""
    return output["cache"] if "cache" in output else output["past_key_values"]
