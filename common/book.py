"""``make book``: notebooks executed in full mode, and ``RESULTS.md`` generated from them.

Every notebook states its headline result with :func:`common.results.check_result`, which asserts
it against the notebook's threshold and prints one line, ``result: NAME = VALUE (asserted OP
THRESHOLD; d2l: ...)``. ``python -m common.book [--force] [--seeds 0,1,2] [NOTEBOOK ...]`` executes
the notebooks named (all by default) with ``COURSE_SMOKE=0`` and each seed (``COURSE_SEED``; seed 0
only by default) into ``build/book/``, one at a time, printing each one's time and result as it
goes. An executed copy records the commit, the seed, the source notebook's digest, the device and
the wall time in its metadata; a notebook already executed from the same source at the same
commit with the same seed is not run again unless ``--force`` is given. Then ``RESULTS.md`` is
rewritten from the executed copies: a notebook executed now gets a new row, every other row is
kept as the last run wrote it. The table is never edited by hand.

``--estimate K`` estimates full mode's time instead of running it, for the notebooks whose full
mode is a GPU job: each notebook runs in full mode with ``COURSE_ESTIMATE_STEPS=K`` into
``build/book/estimate/``, so that every training loop's progress bar times K steps (and at least
10 s of them) after a warm-up one, prints what the whole loop would take and stops it.
:func:`common.train.train_classifier` then times one epoch's evaluations too (K batches of them)
and returns, so the notebook's later loops run and are timed as well; a notebook's own loop stops its notebook there
(the cells after it fail, as expected). The estimate is the run's wall time plus the time left in
every loop timed; the evaluations inside a notebook's own loops are not in it. A notebook that has
a full-mode row keeps it.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .progress import ESTIMATE_LINE
from .results import RESULT_LINE

ROOT = Path(__file__).resolve().parent.parent
BOOK_DIR = ROOT / "build" / "book"
RESULTS_FILE = ROOT / "RESULTS.md"

# Notebooks whose full mode is a GPU job (20 minutes to a day on a 2-core CPU; RESULTS.md estimates each):
# `make book` skips them on a CPU unless --include-gpu, and their rows say so until one runs them.
NEEDS_GPU = frozenset(
    [f"chapter_convolutional-modern/{name}.ipynb"
     for name in ("alexnet", "vgg", "nin", "googlenet", "resnet", "densenet", "separable-conv")]
    + ["chapter_attention-mechanisms/vision-transformer.ipynb"]
    + [f"chapter_computer-vision/{name}.ipynb"
       for name in ("image-augmentation", "kaggle-cifar10", "fcn", "fine-tuning", "neural-style", "deepdream")])


# ---------------------------------------------------------------------------------------------
# Executing notebooks
# ---------------------------------------------------------------------------------------------

def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def device_name() -> str:
    """The accelerator full mode runs on, as a learner would say it."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return f"Apple MPS ({platform.machine()})"
    return f"CPU, {os.cpu_count()} cores ({platform.machine()})"


def executed_path(notebook: Path, seed: int = 0) -> Path:
    """``build/book/<chapter>/<name>.ipynb`` for seed 0, ``build/book/seed-<k>/<chapter>/<name>.ipynb`` else."""
    relative = notebook.resolve().relative_to(ROOT)
    return BOOK_DIR / relative if seed == 0 else BOOK_DIR / f"seed-{seed}" / relative


def is_up_to_date(notebook: Path, commit: str, seed: int = 0) -> bool:
    """Whether ``build/book`` holds a run of this very notebook source at this commit with this seed."""
    return _is_current(executed_path(notebook, seed), notebook, commit)


def _is_current(target: Path, notebook: Path, commit: str) -> bool:
    import nbformat

    if not target.exists():
        return False
    record = nbformat.read(target, as_version=4).metadata.get("course_book", {})
    return record.get("commit") == commit and record.get("source_sha1") == _digest(notebook)


def _run(notebook: Path, target: Path, env: dict[str, str], allow_errors: bool = False):
    """Execute ``notebook`` with ``env`` added to the kernel's environment (the kernel's only) and
    write it to ``target``; return the executed notebook, its wall time and the error that stopped it."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=None, kernel_name="python3", allow_errors=allow_errors,
                            resources={"metadata": {"path": str(notebook.parent)}})
    start = time.perf_counter()
    error = ""
    try:
        client.execute(env={**os.environ, **env})
    except CellExecutionError as err:
        error = _plain(str(err)).strip().splitlines()[-1][:300]
    return nb, round(time.perf_counter() - start), error


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # no terminal colours


def _save(nb, record: dict, target: Path) -> dict:
    import nbformat

    nb.metadata["course_book"] = record
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    nbformat.write(nb, tmp)
    os.replace(tmp, target)  # a half-written copy never counts as executed
    return record


def execute(notebook: Path, commit: str, seed: int = 0) -> dict:
    """Run ``notebook`` in full mode with ``seed`` into ``build/book/``; return its record (also in its metadata).

    The seed reaches the notebook as ``COURSE_SEED``, which its setup cell (``common.setup()``) uses.
    """
    target = executed_path(notebook, seed)
    nb, seconds, error = _run(notebook, target, {"COURSE_SMOKE": "0", "COURSE_SEED": str(seed)})
    record = {"commit": commit, "seed": seed, "source_sha1": _digest(notebook), "device": device_name(),
              "seconds": seconds, "status": "failed" if error else "passed", "error": error}
    return _save(nb, record, target)


def estimate_path(notebook: Path) -> Path:
    """``build/book/estimate/<chapter>/<name>.ipynb``."""
    return BOOK_DIR / "estimate" / notebook.resolve().relative_to(ROOT)


def estimate(notebook: Path, commit: str, steps: int) -> dict:
    """Estimate the full-mode time of ``notebook`` from ``steps`` timed steps per training loop
    (see the module's docstring); return its record, also in the metadata of its copy in
    ``build/book/estimate/``."""
    target = estimate_path(notebook)
    nb, seconds, _ = _run(notebook, target, {"COURSE_SMOKE": "0", "COURSE_SEED": "0",
                                              "COURSE_ESTIMATE_STEPS": str(steps)}, allow_errors=True)
    texts = [output.get("text", "") for cell in nb.cells if cell.cell_type == "code"
             for output in cell.get("outputs", []) if output.get("name") == "stdout"]
    loops = [{"desc": m["desc"], "steps": int(m["total"]), "seconds_per_step": float(m["seconds"]),
              "seconds_left": float(m["left"])} for text in texts for m in ESTIMATE_LINE.finditer(text)]
    errors = [f"{output['ename']}: {_plain(output.get('evalue', ''))}"[:300] for cell in nb.cells
              if cell.cell_type == "code" for output in cell.get("outputs", [])
              if output.get("output_type") == "error" and output.get("ename") != "EstimateReached"]
    record = {"commit": commit, "seed": 0, "source_sha1": _digest(notebook), "device": device_name(),
              "seconds": seconds, "status": "estimated" if loops else "failed", "steps": steps,
              "loops": loops, "estimated_seconds": round(seconds + sum(loop["seconds_left"] for loop in loops)),
              "error": "" if loops else (errors[0] if errors else "no training loop with a progress bar ran")}
    return _save(nb, record, target)


def is_estimated(notebook: Path, commit: str) -> bool:
    """Whether ``build/book/estimate`` holds an estimate of this very notebook source at this commit."""
    return _is_current(estimate_path(notebook), notebook, commit)


# ---------------------------------------------------------------------------------------------
# RESULTS.md
# ---------------------------------------------------------------------------------------------

@dataclass
class Row:
    notebook: str  # relative path, e.g. chapter_convolutional-modern/lenet.ipynb
    result: str
    asserted: str
    d2l: str
    device: str
    time: str
    commit: str

    def markdown(self) -> str:
        cells = [f"[{self.notebook}]({self.notebook})", self.result, self.asserted, self.d2l, self.device,
                 self.time, self.commit]
        return "| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |"

    def is_estimate(self) -> bool:
        """Whether this row holds an estimate (``--estimate``), which a full-mode run replaces."""
        return self.time.endswith("(estimated)")


HEADER = ["notebook", "result", "asserted", "d2l", "device", "wall time", "commit"]


def _minutes(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    return f"{seconds / 60:.0f} min" if seconds < 2 * 3600 else f"{seconds / 3600:.2g} h"


def _read_executed(path: Path) -> tuple[dict, list[re.Match]]:
    """An executed copy's ``course_book`` record and the ``result:`` lines its cells printed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    texts = [output.get("text", "") for cell in nb.cells if cell.cell_type == "code"
             for output in cell.get("outputs", []) if output.get("name") == "stdout"]
    return nb.metadata.get("course_book", {}), [m for text in texts for m in RESULT_LINE.finditer(text)]


def _span(values: list[str]) -> str:
    numbers = sorted(float(v) for v in values)
    return f"{numbers[0]:.4g}" if numbers[0] == numbers[-1] else f"{numbers[0]:.4g}-{numbers[-1]:.4g}"


def row_from_executed(paths: list[Path], notebook: str) -> Row:
    """The table row of one notebook from its executed copies, one per seed (the first one leads).

    The result is the first copy's ``result:`` figures; with several seeds each figure is followed
    by its range over the seeds that passed, and a failed seed is named.
    """
    runs = [_read_executed(path) for path in paths]
    record, found = runs[0]
    seeds = [run_record.get("seed", 0) for run_record, _ in runs]
    failed = [(seed, r) for seed, (r, _) in zip(seeds, runs) if r.get("status") == "failed"]
    passed = [(seed, f) for seed, (r, f) in zip(seeds, runs) if r.get("status") != "failed"]
    if record.get("status") == "failed" or not passed:
        result, asserted = f"FAILED with seed {seeds[0]}: {record.get('error', '')}", ""
    elif found:
        parts = []
        for i, m in enumerate(found):
            part = f"{m['name']} {m['value']}"
            values = [f[i]["value"] for _, f in passed if len(f) > i]
            if len(passed) > 1:
                part += f" (seeds {', '.join(str(seed) for seed, _ in passed)}: {_span(values)})"
            parts.append(part)
        result = "; ".join(parts)
        asserted = "; ".join(f"{m['op']} {m['threshold']}" for m in found)
    else:
        result, asserted = "passed (no headline result stated)", ""
    if failed and passed and record.get("status") != "failed":
        result += "; " + "; ".join(f"FAILED with seed {seed}: {r.get('error', '')}" for seed, r in failed)
    d2l = "; ".join(m["d2l"] for m in found if m["d2l"]) or "—"
    commits = ", ".join(dict.fromkeys(r.get("commit", "?") for r, _ in runs))
    return Row(notebook, result, asserted, d2l, record.get("device", "?"), _minutes(record.get("seconds", 0)),
               commits)


def row_from_estimate(path: Path, notebook: str) -> Row:
    """The table row of a notebook whose full-mode time was estimated (``--estimate``), not run."""
    import nbformat

    record = nbformat.read(path, as_version=4).metadata.get("course_book", {})
    device, commit = record.get("device", "?"), record.get("commit", "?")
    if record.get("status") != "estimated":
        return Row(notebook, f"needs a GPU; estimating its time failed: {record.get('error', '')}", "", "—", device,
                   "", commit)
    result = (f"needs a GPU: full mode not run; its time estimated from {record['steps']} timed steps of each "
              f"loop: {_loop_times(record['loops'])}")
    return Row(notebook, result, "", "—", device, f"about {_minutes(record['estimated_seconds'])} (estimated)",
               commit)


def _loop_times(loops: list[dict]) -> str:
    """``ViT 2 h, CNN 33 h``: each loop's whole time, in the order they ran; the evaluations that
    :func:`common.train.train_classifier` timed (``X, evaluations``) are added to their loop ``X``."""
    named: list[list] = []  # [desc, seconds]
    for loop in loops:
        seconds = loop["steps"] * loop["seconds_per_step"]
        if named and loop["desc"] == f"{named[-1][0]}, evaluations":
            named[-1][1] += seconds
        else:
            named.append([loop["desc"], seconds])
    return ", ".join(f"{desc} {_minutes(round(seconds))}" for desc, seconds in named)


def estimated_copies() -> dict[str, Path]:
    """Every estimate in build/book/estimate, by notebook (``chapter_x/name.ipynb``)."""
    folder = BOOK_DIR / "estimate"
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.glob("chapter_*/*.ipynb"))}


def executed_copies() -> dict[str, list[Path]]:
    """Every executed copy in build/book, by notebook (``chapter_x/name.ipynb``), seed 0 first."""
    copies: dict[str, list[Path]] = {}
    folders = [BOOK_DIR] + sorted(BOOK_DIR.glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))
    for folder in folders:
        for path in sorted(folder.glob("chapter_*/*.ipynb")):
            copies.setdefault(path.relative_to(folder).as_posix(), []).append(path)
    return copies


def _rows_in(results_file: Path) -> dict[str, Row]:
    """The rows of an existing RESULTS.md, by notebook (the format :meth:`Row.markdown` writes)."""
    rows = {}
    if not results_file.exists():
        return rows
    for line in results_file.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        link = re.fullmatch(r"\[(.+?)\]\(.+?\)", cells[0]) if len(cells) == len(HEADER) else None
        if link:
            rows[link[1]] = Row(link[1], *cells[1:])
    return rows


def _why_no_result(notebook: Path, name: str) -> str:
    """The result cell of a notebook that has no executed copy."""
    if name in NEEDS_GPU:
        return "needs a GPU: not run yet (`make book BOOK_FLAGS=\"--estimate 5\"` estimates its time)"
    if "check_result(" not in notebook.read_text(encoding="utf-8"):
        return "no headline result (checks only)"
    return "not run in full mode yet"


def write_results(notebooks: list[Path], results_file: Path | None = None) -> None:
    """Rewrite RESULTS.md: rows from build/book for the executed notebooks, earlier rows for the rest."""
    results_file = RESULTS_FILE if results_file is None else results_file
    rows = _rows_in(results_file)
    executed = executed_copies()
    for notebook, paths in executed.items():
        rows[notebook] = row_from_executed(paths, notebook)
    for notebook, path in estimated_copies().items():
        earlier = rows.get(notebook)
        if notebook not in executed and (earlier is None or not earlier.commit or earlier.is_estimate()):
            rows[notebook] = row_from_estimate(path, notebook)
    lines = ["# What full mode reaches",
             "",
             "Generated by `make book` (`python -m common.book`) from notebooks executed in full mode",
             "(`COURSE_SMOKE=0`); never edited by hand. `result` is each notebook's headline figure as",
             "its `check_result` line printed it with seed 0, followed by its range over the seeds run",
             "(`make book BOOK_FLAGS=\"--seeds 0,1,2\"`); `asserted` is the threshold it must beat, `d2l` the",
             "figure d2l publishes for the same experiment. Wall times are for the whole notebook (seed 0) on",
             "the device named. A notebook with no `check_result` line says so: its checks run in smoke mode",
             "in every `make test`. A notebook whose full mode is a GPU job says so; its wall time on the CPU",
             "named is an estimate (`make book BOOK_FLAGS=\"--estimate 5\"`) from a few timed steps of each",
             "training loop, not a run.",
             "",
             "| " + " | ".join(HEADER) + " |",
             "|" + "---|" * len(HEADER)]
    for notebook in notebooks:
        name = notebook.resolve().relative_to(ROOT).as_posix()
        if name not in rows or not rows[name].commit:  # no run yet: say why, from today's sources
            rows[name] = Row(name, _why_no_result(notebook, name), "", "—", "", "", "")
        lines.append(rows[name].markdown())
    tmp = results_file.with_suffix(".part")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, results_file)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes whole numbers separated by commas, e.g. 0,1,2; got {text!r}")
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds must be different numbers >= 0, got {text!r}")
    return seeds


def _steps(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--estimate takes a number of steps to time, e.g. 5; got {text!r}")
    return int(text)


def _estimate_one(notebook: Path, commit: str, steps: int, force: bool) -> bool:
    """Estimate one notebook (unless already estimated at this commit); return whether it failed."""
    if not force and is_estimated(notebook, commit):
        print(f"{notebook}: already estimated at {commit} (--force estimates it again)", flush=True)
        return False
    print(f"{notebook}: estimating full mode's time from {steps} timed steps per training loop ...", flush=True)
    record = estimate(notebook, commit, steps)
    row = row_from_estimate(estimate_path(notebook), notebook.resolve().relative_to(ROOT).as_posix())
    print(f"{notebook}: {row.time or row.result} ({record['seconds']} s to estimate)", flush=True)
    return record["status"] == "failed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to execute (default: all)")
    parser.add_argument("--force", action="store_true", help="run again those already run at this commit")
    parser.add_argument("--seeds", type=_seeds, default=[0], help="seeds to run each notebook with, e.g. 0,1,2")
    parser.add_argument("--include-gpu", action="store_true",
                        help="also run the notebooks whose full mode is a GPU job when no GPU is here")
    parser.add_argument("--estimate", type=_steps, metavar="K",
                        help="do not run full mode: estimate its time from K timed steps of each training loop "
                             "(of the notebooks named, else of those whose full mode needs a GPU)")
    args = parser.parse_args(argv)
    everything = sorted(ROOT.glob("chapter_*/*.ipynb"))
    gpu_jobs = [p for p in everything if p.relative_to(ROOT).as_posix() in NEEDS_GPU]
    chosen = args.notebooks or (gpu_jobs if args.estimate is not None else everything)
    wrong = [str(p) for p in chosen if not p.is_file() or p.suffix != ".ipynb"
             or p.resolve().parent.parent != ROOT or not p.resolve().parent.name.startswith("chapter_")]
    if wrong:
        parser.error(f"not a course notebook: {', '.join(wrong)} (give paths like chapter_x/name.ipynb)")
    commit = _git_commit()
    accelerated = not device_name().startswith("CPU")
    failed = 0
    for notebook in chosen:
        name = notebook.resolve().relative_to(ROOT).as_posix()
        if args.estimate is not None:
            failed += _estimate_one(notebook, commit, args.estimate, args.force)
            continue
        if name in NEEDS_GPU and not accelerated and not args.include_gpu:
            print(f"{notebook}: skipped, its full mode needs a GPU (RESULTS.md estimates its time on a CPU); "
                  "--include-gpu runs it on this CPU anyway", flush=True)
            continue
        for seed in args.seeds:
            if not args.force and is_up_to_date(notebook, commit, seed):
                print(f"{notebook}, seed {seed}: already executed at {commit} (--force runs it again)", flush=True)
                continue
            print(f"{notebook}, seed {seed}: running in full mode ...", flush=True)
            record = execute(notebook, commit, seed)
            failed += record["status"] == "failed"
            row = row_from_executed([executed_path(notebook, seed)], notebook)
            print(f"{notebook}, seed {seed}: {record['status']} in {_minutes(record['seconds'])}: {row.result}",
                  flush=True)
    write_results(everything)
    print(f"wrote {RESULTS_FILE.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
