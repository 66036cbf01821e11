"""One check of a set of tensors against the names and shapes something implies (a config, a class built from
it, a reference model): every reader, writer and planner that compares "expected vs actual" calls it, so
each such error reads the same way."""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import ShapeMismatchError

__all__ = ["check_tensors"]


def _shape(value: Any) -> tuple[int, ...]:
    """A shape given as itself or as anything with a `.shape` (a tensor, a LazyTensor)."""
    return tuple(getattr(value, "shape", value))


def check_tensors(expected: Mapping[str, Any], got: Mapping[str, Any], where: str, *,
                  optional: Mapping[str, Any] | None = None, allow_unexpected: bool = False,
                  expected_from: str = "the configured model", got_from: str = "the weights") -> None:
    """Raise one `ShapeMismatchError` unless `got` holds every name of `expected` with its shape.

    Values are shapes or anything with a `.shape`. `optional` names (tied duplicates) may be absent, but
    when present must have their shape; a name in neither is an error unless `allow_unexpected` (the caller
    keeps such tensors aside). The message is one line: `where` (a file or component), the first missing,
    wrongly shaped or unexpected tensor, `expected_from` / `got_from` (what implies the names, what holds
    the tensors), and how many of each kind there are.
    """
    optional = optional or {}
    missing = [n for n in expected if n not in got]
    wrong = [n for n, s in {**expected, **optional}.items() if n in got and _shape(got[n]) != _shape(s)]
    unexpected = [] if allow_unexpected else [n for n in got if n not in expected and n not in optional]
    if not (missing or wrong or unexpected):
        return
    counts = [f"{len(missing)} of {len(expected)} missing"] if missing else []
    counts += [f"{len(wrong)} wrongly shaped"] if wrong else []
    counts += [f"{len(unexpected)} unexpected"] if unexpected else []
    if missing:
        n = missing[0]
        first = f"tensor {n} is missing from {got_from} ({expected_from} has it with shape {_shape(expected[n])})"
    elif wrong:
        n = wrong[0]
        first = (f"tensor {n} has shape {_shape(got[n])} in {got_from} "
                 f"but {_shape({**expected, **optional}[n])} in {expected_from}")
    else:
        first = f"tensor {unexpected[0]} is in {got_from} but not in {expected_from}"
    raise ShapeMismatchError(f"{where}: {first}; {', '.join(counts)}")
