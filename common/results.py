"""A notebook's headline result: asserted against its threshold and printed in one line.

The line, ``result: NAME = VALUE (asserted OP THRESHOLD; d2l: ...)``, is what ``make book``
(:mod:`common.book`) collects from notebooks executed in full mode into ``RESULTS.md``.
"""
from __future__ import annotations

import re

from .checks import check_number

RESULT_LINE = re.compile(r"^result: (?P<name>.+?) = (?P<value>\S+) \(asserted (?P<op>[<>]) (?P<threshold>\S+?)"
                         r"(?:; d2l: (?P<d2l>.+))?\)$", flags=re.MULTILINE)


def check_result(name: str, value: float, *, above: float | None = None, below: float | None = None,
                 d2l: str | float | None = None) -> None:
    """Assert a notebook's headline result, ``value > above`` or ``value < below``, and print it.

    The printed line is what ``make book`` collects into ``RESULTS.md``; ``d2l`` is the figure
    that d2l publishes for the same experiment, where there is one. It returns nothing, so that a
    notebook cell ending with it shows only the line.
    """
    if (above is None) == (below is None):
        raise ValueError("check_result needs exactly one threshold: above=... (higher is better) "
                         "or below=... (lower is better).")
    value = float(value)  # a one-element tensor or NumPy number is fine; NaN fails the comparison below
    threshold = check_number("above" if below is None else "below", above if below is None else below)
    passed = value > threshold if below is None else value < threshold
    op = ">" if below is None else "<"
    line = f"result: {name} = {value:.4g} (asserted {op} {threshold:.4g}" + ("" if d2l is None else f"; d2l: {d2l}")
    print(line + ")")
    assert passed, f"{name} = {value:.4g}, expected {op} {threshold:.4g}"
