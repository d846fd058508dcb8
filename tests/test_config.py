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
