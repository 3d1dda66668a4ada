"""A named registry of pure functions: how every variant in ``veripo.algos`` is chosen from config.

verl's ``core_algos.py`` does the same with ``register_adv_est`` / ``register_policy_loss``; one small helper
here keeps the four registries (advantages, policy losses, loss aggregation, KL estimators, DPO losses) alike
and makes an unknown name fail with the list of known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Maps names (and aliases) to functions of one kind, e.g. ``Registry("advantage estimator")``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._functions: dict[str, F] = {}

    def register(self, name: str, *aliases: str) -> Callable[[F], F]:
        """Decorator: ``@ADVANTAGES.register("grpo")`` files the function under its name and aliases."""

        def add(function: F) -> F:
            for key in (name, *aliases):
                if key in self._functions:
                    raise ValueError(f"{self.kind} {key!r} is already registered")
                self._functions[key] = function
            return function

        return add

    def get(self, name: str) -> F:
        """The function registered as ``name``; a ``KeyError`` names the known choices otherwise."""
        try:
            return self._functions[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; expected one of {sorted(self._functions)}") from None

    def names(self) -> list[str]:
        return sorted(self._functions)

    def __contains__(self, name: object) -> bool:
        return name in self._functions
