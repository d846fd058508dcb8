"""Hooks for the notebooks that nbval executes.

* Smoke-run report: the wall time of every notebook, written to build/smoke-times.txt. The times
  are a report, never a test: nothing fails because a notebook was slow.
* Cells run as Jupyter runs them: nbval sends each cell with ``store_history=False``, and IPython 9
  then shows the value of a statement that ends in ``;``, which Jupyter hides. We send cells with
  ``store_history=True``, so the test run shows what a learner sees.
* Output hygiene: a cell whose executed output shows the repr of a matplotlib object
  (``<Figure size ...>``, ``<Axes: ...>``, ``[<matplotlib.lines.Line2D ...>]``) fails; end the
  plotting statement with ``;`` or assign its result.
* A kernel that does not come up is started once more (see ``_start_kernel_twice``).
"""
import re
from collections import defaultdict
from pathlib import Path

import pytest

MATPLOTLIB_REPR = re.compile(r"^\[?<(Figure|Axes|matplotlib)\b", re.MULTILINE)

_seconds = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    slowest = sorted(_seconds.items(), key=lambda item: -item[1])
    total = sum(_seconds.values())
    out = Path(__file__).parent / "build" / "smoke-times.txt"
    out.parent.mkdir(exist_ok=True)
    lines = [f"{seconds:8.1f} s  {path}" for path, seconds in slowest]
    out.write_text(f"{total:8.1f} s  total over {len(slowest)} notebooks (summed across workers)\n"
                   + "\n".join(lines) + "\n", encoding="utf-8")
    terminalreporter.write_sep("-", f"slowest notebooks (all {len(slowest)} in {out.relative_to(out.parent.parent)})")
    for line in lines[:10]:
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"{total:8.1f} s  summed over all notebooks")


def _execute_like_jupyter(self, cell_input, allow_stdin=None):
    return self.kc.execute(cell_input, store_history=True, allow_stdin=allow_stdin, stop_on_error=False)


def _start_kernel_twice(start):
    """nbval's kernel start, tried a second time when the first kernel does not answer.

    jupyter_client picks free TCP ports and leaves them for the kernel to bind; another process
    can take one in between (the data-parallel notebooks start several processes that open many
    sockets), and that kernel never answers. A CI-like run once failed this way ("Kernel didn't
    respond in 60 seconds" before the first cell of a notebook that passes on its own). A second
    kernel gets new ports; a notebook that really cannot start fails as before.
    """
    def start_new_kernel(*args, **kwargs):
        try:
            return start(*args, **kwargs)
        except RuntimeError as err:  # nbval has shut the unresponsive kernel down
            print(f"\nThe kernel did not start ({err}); starting another.")
            return start(*args, **kwargs)
    return start_new_kernel


def pytest_configure(config):
    try:
        from nbval import kernel
    except ImportError:  # nbval not installed: no notebooks are executed
        return
    kernel.RunningKernel.execute_cell_input = _execute_like_jupyter
    kernel.start_new_kernel = _start_kernel_twice(kernel.start_new_kernel)


def matplotlib_reprs(outputs) -> list[str]:
    """The text outputs among ``outputs`` (nbformat dicts) that print a matplotlib object."""
    texts = []
    for out in outputs:
        if out.get("output_type") == "stream":
            texts.append(out.get("text", ""))
        elif not any(mime.startswith("image/") for mime in out.get("data", {})):
            texts.append(out.get("data", {}).get("text/plain", ""))  # a figure's own fallback text is fine
    return [text for text in texts if MATPLOTLIB_REPR.search(text)]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    outputs = getattr(item, "test_outputs", None)  # set by nbval's cells once executed
    if call.when == "call" and report.passed and outputs:
        found = matplotlib_reprs(outputs)
        if found:
            report.outcome = "failed"
            report.longrepr = (f"{item.nodeid}: the cell prints {found[0].strip()[:80]!r}; end the "
                               "plotting statement with ';' or assign its result.")
