"""Argument checks shared by the public functions of ``common``, one helper per kind of check.

Each raises one clear error that says the value received, what was expected and what to do,
so that a wrong argument fails at the call that was given it, not deep inside torch or NumPy.
"""
from __future__ import annotations

import math
import numbers

import torch


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int``, refusing floats, strings and bools; within the bounds given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = f" without quotes: {name}={value.strip()}" if isinstance(value, str) and value.strip().isdigit() else ""
        raise TypeError(f"{name} must be a whole number (int), got {value!r} ({type(value).__name__}). "
                        f"Pass an int{hint or ', e.g. ' + name + '=' + str(_example(value, minimum))}.")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {_bounds(minimum, maximum)}, got {value}.")
    return value


def check_number(name: str, value, minimum: float | None = None) -> float:
    """``value`` as a finite ``float`` (ints accepted, bools and strings refused), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}). "
                        "Pass an int or a float, without quotes.")
    value = float(value)
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise ValueError(f"{name} must be a finite number{'' if minimum is None else f' >= {minimum}'}, got {value}.")
    return value


def check_float_tensor(name: str, value, what: str, todo: str | None = None) -> torch.Tensor:
    """``value`` must be a floating-point tensor of ``what``; ``todo`` says how to convert one."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of {what}, got {type(value).__name__}.")
    if not value.is_floating_point():
        raise TypeError(f"{name} must hold floating-point {what}, got dtype {value.dtype}. "
                        f"{todo or f'Convert it first, e.g. {name}.float().'}")
    return value


def _bounds(minimum, maximum) -> str:
    if (minimum, maximum) == (1, None):
        return "a positive integer"
    if minimum is not None and maximum is not None:
        return f"between {minimum} and {maximum}"
    return f"at least {minimum}" if minimum is not None else f"at most {maximum}"


def _example(value, minimum) -> int:
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return max(round(value), minimum if minimum is not None else round(value))
    return minimum if minimum is not None else 1
