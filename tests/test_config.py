import subprocess
import sys
from pathlib import Path

import pytest
import torch

import common


@pytest.mark.parametrize("value, smoke", [("1", True), ("true", True), ("0", False), ("", False)])
def test_pick_follows_course_smoke(monkeypatch, value, smoke):
    monkeypatch.setenv("COURSE_SMOKE", value)
    assert common.is_smoke() is smoke
    assert common.pick(full=10, smoke=1) == (1 if smoke else 10)


def test_unclear_course_smoke_is_an_error(monkeypatch):
    monkeypatch.setenv("COURSE_SMOKE", "maybe")
    with pytest.raises(ValueError, match="COURSE_SMOKE"):
        common.is_smoke()


def test_seeding_repeats_random_draws():
    common.seed_everything(3)
    a = torch.rand(5)
    common.seed_everything(3)
    assert torch.equal(a, torch.rand(5))


def test_device_choice_matches_what_exists():
    dev = common.device()
    if torch.cuda.is_available():
        assert dev.type == "cuda"
    elif torch.backends.mps.is_available():
        assert dev.type == "mps"
    else:
        assert dev == torch.device("cpu")
    assert dev in common.all_devices() or dev.type == "cuda"
    assert len(common.all_devices()) == max(torch.cuda.device_count(), 1)


def test_repo_root_is_the_checkout():
    root = common.repo_root()
    assert root is not None and (root / "common" / "__init__.py").exists()


# Buffers of 64 MiB: above glibc's 32 MiB ceiling for its adaptive mmap threshold, so by default
# every one is mapped fresh and faulted in page by page. (Smaller buffers make the default case
# depend on the allocation history: glibc sometimes keeps them, sometimes not.) Faults are
# counted after a warm-up, when a process that keeps freed memory has nothing left to fault in.
FAULT_COUNTER = """
import resource, sys, torch
from common import config
applied = config.keep_freed_memory() if sys.argv[1] == "keep" else False
x = torch.randn(16 * 2**20)
def work(steps):
    for _ in range(steps):
        y = torch.sigmoid(x) * 2  # fresh buffers, freed at the next step
work(3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
work(10)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="a glibc allocator setting")
def test_keeping_freed_memory_saves_page_faults():
    def run(mode):
        out = subprocess.run([sys.executable, "-c", FAULT_COUNTER, mode], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent.parent).stdout.split()
        return out[0] == "True", int(out[1])

    (_, default_faults), (applied, kept_faults) = run("default"), run("keep")
    if not applied:
        pytest.skip("not glibc")
    assert kept_faults < default_faults / 2, (kept_faults, default_faults)


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (2**32, ValueError), (1.5, TypeError), ("0", TypeError)])
def test_seed_everything_refuses_seeds_numpy_cannot_take(seed, error):
    with pytest.raises(error, match="seed"):
        common.seed_everything(seed)


@pytest.mark.parametrize("bad, message", [
    ("gpu", "Unknown device 'gpu'"),
    ("cuda:99", "asks for (CUDA|GPU 99)"),
    ("cuda:first", "Unknown device 'cuda:first'"),
])
def test_resolve_device_explains_unusable_devices(bad, message):
    from common.config import resolve_device

    with pytest.raises(ValueError, match=message):
        resolve_device(bad)
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(None) == common.device()


def test_run_seed_reads_course_seed(monkeypatch):
    monkeypatch.delenv("COURSE_SEED", raising=False)
    assert common.run_seed() == 0
    monkeypatch.setenv("COURSE_SEED", "2")
    assert common.run_seed() == 2
    monkeypatch.setenv("COURSE_SEED", "two")
    with pytest.raises(ValueError, match="COURSE_SEED='two'"):
        common.run_seed()


def test_setup_seeds_with_course_seed(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_SEED", "5")
    common.setup()
    first = torch.rand(3)
    common.seed_everything(5)
    assert torch.equal(first, torch.rand(3))
    assert "seed 5;" in capsys.readouterr().out


def test_fixed_seed_repeats_the_block_and_gives_the_stream_back():
    common.seed_everything(1)
    with common.fixed_seed(0):
        inside = torch.rand(2)
    after = torch.rand(2)
    common.seed_everything(1)
    expected_after = torch.rand(2)  # what the stream gives without the block
    with common.fixed_seed(0):
        assert torch.equal(torch.rand(2), inside)
    assert torch.equal(after, expected_after)


def test_synchronize_waits_on_the_device_it_is_given(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda dev=None: calls.append(("cuda", dev)))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append(("mps", None)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    common.synchronize("cpu")
    assert calls == []  # nothing queued on a CPU
    common.synchronize("cuda:1")
    common.synchronize("mps")
    assert calls == [("cuda", torch.device("cuda:1")), ("mps", None)]
    with pytest.raises(ValueError, match="Unknown device"):
        common.synchronize("tpu")
