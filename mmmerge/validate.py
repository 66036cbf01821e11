"""Checks of numbers and dtypes the API takes, shared by its functions: a NaN learning rate, an infinite weight
or an integer output dtype would otherwise run to the end and write NaN or all-zero weights without a word."""

from __future__ import annotations

import math

import torch

from .errors import RecipeError


def finite_number(name: str, value, *, low: float | None = None, low_open: bool = False):
    """`value` if it is a finite number (above `low`, or at least `low`); RecipeError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecipeError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise RecipeError(f"{name} must be {'above' if low_open else 'at least'} {low:g}, got {value!r}")
    return value


def integer(name: str, value, *, low: int | None = None):
    """`value` if it is an integer (at least `low`); RecipeError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecipeError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise RecipeError(f"{name} must be at least {low}, got {value!r}")
    return value


def floating_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """`dtype` if it is a floating-point dtype: casting weights to an integer dtype rounds them to zero."""
    if not dtype.is_floating_point:
        raise RecipeError(f"{name} {str(dtype).removeprefix('torch.')} is not a floating-point dtype; weights cast to "
                          "it would be rounded to integers (use float16, bfloat16 or float32)")
    return dtype


SIZE_UNITS = {"k": 1000, "m": 1000**2, "g": 1000**3, "b": 1000**3}  # "5B" = 5 billion, as mergekit reads it


def byte_size(name: str, value) -> int:
    """A size in bytes: a positive integer, or a number with K, M, G or B (billion, as mergekit's
    --out-shard-size) after it ("500M", "2G", "5B"); RecipeError naming `name` otherwise."""
    if isinstance(value, str):
        text = value.strip().lower()
        unit = SIZE_UNITS.get(text[-1:], 1)
        number = text[:-1] if text[-1:] in SIZE_UNITS else text
        if not number.isdigit():
            raise RecipeError(f"{name} must be a number of bytes, optionally with K, M, G or B after it "
                              f"(e.g. 2G), got {value!r}")
        value = int(number) * unit
    return integer(name, value, low=1)
