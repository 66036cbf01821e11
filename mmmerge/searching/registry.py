"""Search parts found by name, as merge methods are: each objective and sampler is one function, registered where
it is written, so adding one is one function in one file. An unknown name is one line offering the nearest one."""

from __future__ import annotations

import difflib
from typing import Callable, Iterator

from ..errors import RecipeError


class Registry:
    """Functions of one kind (`objective`, `sampler`) by the name a spec gives them."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        """Decorator: `fn` is what `name` means in a spec."""

        def add(fn: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = fn
            return fn

        return add

    def find(self, name: str) -> Callable:
        """The function registered as `name`; else RecipeError naming the known ones (and the nearest)."""
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(str(name), list(self._entries), n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise RecipeError(f"unknown {self.kind} {name!r}; {hint}known: {', '.join(sorted(self._entries))}")

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))
