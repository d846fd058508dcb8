"""The benchmark's own logic: its summary arithmetic, and one real (short) run of each course side."""
import json
import subprocess
import sys

import pytest
import torch

from common import bench, config


def test_summary_ratios_are_medians_of_per_repeat_ratios():
    runs = [{"d2l": (100.0, 0.7), "course": (300.0, 0.71), "bare": (400.0, 0.72)},
            {"d2l": (50.0, 0.8), "course": (200.0, 0.79), "bare": (250.0, 0.78)},  # a slow moment
            {"d2l": (100.0, 0.9), "course": (250.0, 0.9), "bare": (300.0, 0.9)}]
    summary = bench.summarize(runs)
    assert summary["d2l"] == (100.0, 0.8)
    assert summary["course"] == (250.0, 0.79)
    assert summary["ratio"] == 3.0  # per repeat: 3, 4, 2.5 (the ratio of medians would be 2.5)
    assert summary["of_bare"] == pytest.approx(0.8)  # per repeat: 0.75, 0.8, 0.833


@pytest.mark.parametrize("side", ["course", "bare"])
def test_one_run_trains_softmax_regression(side):
    command = [sys.executable, "-m", "common.bench", "--run", side, "--models", "softmax", "--epochs", "1"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=config.repo_root(), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["examples_per_sec"] > 0
    assert measured["test_acc"] > 0.7  # one epoch of softmax regression: about 0.79; chance is 0.1


def test_unknown_model_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="softmax, mlp or lenet"):
        bench.make_model("resnet")


def test_profile_shares_cover_all_the_time():
    shares = bench.profile_bare("lenet", torch.device("cpu"), batches=3)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["convolution"] > 0.2 and shares["pooling"] > 0  # LeNet's time is mostly its convolutions
