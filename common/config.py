"""Run mode (full or smoke), seeding and device choice.

The whole course runs in one of two modes with the same code:

* **full** (default): the real hyper-parameters, as a learner on a GPU runs them;
* **smoke** (``COURSE_SMOKE=1``, set by ``make test`` and CI): smaller sizes, so the
  whole course executes on a laptop CPU in minutes.

Notebooks read their sizes through :func:`pick`, so the learner sees both values.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import random
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from .checks import check_int

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def is_smoke() -> bool:
    """True when ``COURSE_SMOKE`` asks for the small, fast run mode."""
    value = os.environ.get("COURSE_SMOKE", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"COURSE_SMOKE={value!r} is not understood: use 1 (smoke mode) or 0 (full mode).")


def pick(full: T, smoke: T) -> T:
    """Return ``smoke`` in smoke mode and ``full`` otherwise (sizes only, never logic)."""
    return smoke if is_smoke() else full


def run_seed() -> int:
    """The seed of this run: ``COURSE_SEED`` if set (``make book`` sets it to run a notebook with
    several seeds), else 0."""
    value = os.environ.get("COURSE_SEED", "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise ValueError(f"COURSE_SEED={value!r} is not a seed: use a whole number such as 0, 1 or 2.")
    return check_int("COURSE_SEED", int(value), minimum=0, maximum=2**32 - 1)


def estimate_steps() -> int | None:
    """``COURSE_ESTIMATE_STEPS`` if set, else None: in this mode (``make book`` with ``--estimate``) every
    progress bar times that many steps (and at least 10 s of them) after a warm-up step, prints what
    the rest of its loop would take and stops the loop, so that a long full-mode run is estimated in
    minutes."""
    value = os.environ.get("COURSE_ESTIMATE_STEPS", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"COURSE_ESTIMATE_STEPS={value!r} is not a number of steps: use a whole number such as 5, "
                         "or unset it to train normally.")
    return int(value)


@contextlib.contextmanager
def fixed_seed(seed: int = 0):
    """Seed torch for the block, then give back the random stream as it was before the block.

    For checks: their random inputs are the same in every run, while the training that follows
    still draws from the run's own seed (``setup``), so that runs with other seeds differ.
    """
    seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so that runs repeat; ``seed`` in [0, 2**32 - 1]."""
    seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)  # NumPy's range
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators


def device() -> torch.device:
    """The best available device: the first CUDA GPU, else Apple MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda:0")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(value: torch.device | str | None = None) -> torch.device:
    """The device ``value`` names, checked to exist here; ``None`` gives the best one, :func:`device`."""
    if value is None:
        return device()
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {value!r}: use 'cpu', 'cuda', 'cuda:0', 'mps' or a torch.device "
                         f"(or None for the best one here, {device()}).") from None
    missing = None
    if dev.type == "cuda" and not torch.cuda.is_available():
        missing = "CUDA, but torch.cuda.is_available() is False here"
    elif dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        missing = f"GPU {dev.index}, but there are {torch.cuda.device_count()} here (0 to {torch.cuda.device_count() - 1})"
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        missing = "Apple MPS, but torch.backends.mps.is_available() is False here"
    if missing:
        raise ValueError(f"device={value!r} asks for {missing}. Pass None (the best device here, {device()}) or 'cpu'.")
    return dev


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait until every operation queued on ``device`` (``None``: :func:`device`) has finished.

    CUDA and MPS run kernels asynchronously: a call returns once the kernel is queued, so a clock
    read right after it measures the queueing, not the work. On the CPU there is nothing to wait for.
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def all_devices() -> list[torch.device]:
    """Every CUDA GPU, or ``[device()]`` when there is none."""
    count = torch.cuda.device_count()
    return [torch.device(f"cuda:{i}") for i in range(count)] if count else [device()]


def keep_freed_memory() -> bool:
    """On Linux with glibc, let the process reuse freed memory instead of returning it to the OS.

    Training allocates and frees the same large activation buffers in every minibatch. By
    default glibc often serves them from fresh pages (mmap, or a heap top it trims on free) and
    gives them back, so the batches pay page faults: 3 million in two LeNet epochs on the
    2-core CI machine, about a third of the CPU time.
    Raising the mmap and trim thresholds to 1 GiB makes freed buffers reusable. Returns whether
    the setting was applied (False on other systems, where nothing changes).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers from <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def repo_root() -> Path | None:
    """The course checkout that holds this package, or None when installed (e.g. on Colab)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").exists() and (root / "chapter_preliminaries").is_dir() else None


def setup(seed: int | None = None) -> torch.device:
    """What the shared setup cell of every notebook calls: seed, configure plots, pick the device.

    ``seed`` defaults to :func:`run_seed` (``COURSE_SEED``, else 0).
    """
    seed = run_seed() if seed is None else seed
    seed_everything(seed)
    keep_freed_memory()
    from . import plot  # imported here so that config stays importable without matplotlib

    plot.use_svg_display()
    dev = device()
    print(f"run mode: {'smoke' if is_smoke() else 'full'}; seed {seed}; device: {dev}; torch {torch.__version__}")
    return dev
