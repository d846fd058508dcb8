"""Smoke-run report: the wall time of every notebook, written to build/smoke-times.txt.

The times are a report, never a test: nothing fails because a notebook was slow.
"""
from collections import defaultdict
from pathlib import Path

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
