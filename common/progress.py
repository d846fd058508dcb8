"""A one-line progress bar for training loops, in Jupyter, in a terminal and in executed notebooks.

While a loop runs, the line is redrawn in place (an updated display in Jupyter, a carriage
return in a terminal). When it closes, a final summary stays behind (``training: 48/48 batches in
3.2 s, loss 0.512``), so an executed notebook shows that training ran and how long it took,
instead of a stale ``0%`` bar. It needs no widgets and no extra package.

In estimate mode (``COURSE_ESTIMATE_STEPS=k``, set by ``make book`` with ``--estimate``) a bar times
at least ``k`` steps, and at least 10 seconds of them, after its first one (the warm-up: memory
allocation, kernel selection), prints an ``estimate:`` line with the time per step and the time its
whole loop would still take, and raises :class:`EstimateReached`, which ends the loop.
:func:`common.train.train_classifier` catches it, times one epoch's evaluations as well (from
``k`` batches) and returns what it trained so far, so that a notebook's later training loops run
and are timed too (a model trained this way is never cached). This is how the book estimates a
full-mode run that would take hours on a CPU.
"""
from __future__ import annotations

import re
import sys
import time

from .config import estimate_steps
from .plot import in_notebook

ESTIMATE_LINE = re.compile(r"^estimate: (?P<desc>.+?): (?P<total>\d+) steps at (?P<seconds>\S+) s per step, "
                           r"(?P<left>\S+) s left to run$", re.MULTILINE)


ESTIMATE_MIN_SECONDS = 10.0  # a shorter window is at the mercy of whatever else the machine does


class EstimateReached(Exception):
    """Estimate mode: a progress bar has timed its steps and stops its loop here."""


def print_estimate(desc: str, total: int, per_step: float, done: int) -> None:
    """Print the ``estimate:`` line of a loop of ``total`` steps, ``done`` of them run (estimate mode)."""
    print(f"estimate: {desc}: {total} steps at {per_step:.4g} s per step, "
          f"{per_step * (total - done):.4g} s left to run")


class ProgressBar:
    """Counts ``update()`` calls towards ``total``; ``set_postfix(name=value)`` adds metrics."""

    WIDTH = 20  # characters of the bar itself

    def __init__(self, total: int, unit: str, desc: str = "training", min_interval: float = 0.5,
                 stream=None):
        if not isinstance(total, int) or total < 1:
            raise ValueError(f"ProgressBar needs a positive whole number of steps, got total={total!r}.")
        self.total, self.unit, self.desc = total, unit, desc
        self.count, self.postfix = 0, ""
        self.min_interval = min_interval
        self.stream = stream or sys.stderr
        self.start = self.last_draw = time.perf_counter()
        self.notebook = in_notebook()
        self.handle = None
        self.width = 0  # length of the line last written to a terminal
        self.closed = False
        self.estimate_steps = estimate_steps()
        self.timed_from: tuple[int, float] | None = None  # (count, time) after the warm-up step

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        if self.estimate_steps is not None:
            self._estimate(now)
        if now - self.last_draw >= self.min_interval:
            self.last_draw = now
            self._show(self.line())

    def _estimate(self, now: float) -> None:
        if self.timed_from is None:
            self.timed_from = (self.count, now)
            return
        start_count, start_time = self.timed_from
        timed = self.count - start_count
        if timed < self.estimate_steps or now - start_time < ESTIMATE_MIN_SECONDS or self.count >= self.total:
            return
        print_estimate(self.desc, self.total, (now - start_time) / timed, self.count)
        raise EstimateReached(f"COURSE_ESTIMATE_STEPS={self.estimate_steps}: {self.desc} timed {timed} "
                              f"{_plural(self.unit)} after a warm-up one and stops here.")

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in values.items())

    def line(self) -> str:
        """The text of the bar now: while running, a bar and a count; once closed, a summary."""
        elapsed = time.perf_counter() - self.start
        extra = f", {self.postfix}" if self.postfix else ""
        units = self.unit if self.total == 1 else _plural(self.unit)
        if self.closed:
            return f"{self.desc}: {self.count}/{self.total} {units} in {elapsed:.1f} s{extra}"
        filled = round(self.WIDTH * min(self.count / self.total, 1.0))
        bar = "█" * filled + "·" * (self.WIDTH - filled)
        return f"{self.desc} {bar} {self.count}/{self.total} {units}, {elapsed:.1f} s{extra}"

    def close(self) -> None:
        """Replace the bar by its final summary line."""
        if self.closed:
            return
        self.closed = True
        self._show(self.line(), final=True)

    def _show(self, text: str, final: bool = False) -> None:
        if self.notebook:
            from IPython.display import display

            content = {"text/plain": text}
            if self.handle is None:
                self.handle = display(content, raw=True, display_id=True)
            else:
                self.handle.update(content, raw=True)
        elif self.stream.isatty():  # pad, so that a shorter line covers a longer one
            self.stream.write("\r" + text.ljust(self.width) + ("\n" if final else ""))
            self.width = len(text)
            self.stream.flush()
        elif final:  # logs and captured output get only the summary
            self.stream.write(text + "\n")


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "x", "tch", "sh")) else "s")
