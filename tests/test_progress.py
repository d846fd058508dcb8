import io
import time

import pytest

from common import progress
from common.progress import ESTIMATE_LINE, EstimateReached, ProgressBar


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_captured_output_gets_only_the_final_summary():
    stream = io.StringIO()
    bar = ProgressBar(4, unit="batch", stream=stream, min_interval=0)
    for _ in range(4):
        bar.update()
    bar.set_postfix(loss="0.512")
    bar.close()
    bar.close()  # closing twice writes nothing more
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("training: 4/4 batches in ") and lines[0].endswith(", loss 0.512")


def test_terminal_bar_is_redrawn_in_place_and_ends_with_a_newline():
    stream = FakeTerminal()
    bar = ProgressBar(2, unit="epoch", stream=stream, min_interval=0)
    bar.update()
    assert "█" * 10 + "·" * 10 in stream.getvalue() and "1/2 epochs" in stream.getvalue()
    bar.update()
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n")
    summary = text.rsplit("\r", 1)[1]
    assert summary.startswith("training: 2/2 epochs in ")
    assert len(summary.rstrip("\n")) >= len(text.split("\r")[2]), "the summary covers the longer bar"


@pytest.mark.parametrize("total", [0, -3, 2.5, "10"])
def test_bad_totals_are_refused(total):
    with pytest.raises(ValueError, match="positive whole number"):
        ProgressBar(total, unit="batch")


def test_estimate_mode_times_steps_after_a_warm_up_one_then_stops_the_loop(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_ESTIMATE_STEPS", "3")
    monkeypatch.setattr(progress, "ESTIMATE_MIN_SECONDS", 0.0)
    bar = ProgressBar(100, unit="batch", stream=io.StringIO())
    for _ in range(3):  # the warm-up step and two timed ones
        bar.update()
    assert capsys.readouterr().out == ""
    with pytest.raises(EstimateReached, match="timed 3 batches"):
        bar.update()
    match = ESTIMATE_LINE.fullmatch(capsys.readouterr().out.strip())
    assert match["desc"] == "training" and match["total"] == "100"
    assert float(match["left"]) == pytest.approx(96 * float(match["seconds"]), rel=1e-3)


def test_estimate_mode_lets_a_short_loop_finish(monkeypatch):
    monkeypatch.setenv("COURSE_ESTIMATE_STEPS", "3")
    bar = ProgressBar(4, unit="epoch", stream=io.StringIO())
    for _ in range(4):  # its last step would be the one that stops it: there is nothing left to estimate
        bar.update()
    bar.close()


@pytest.mark.parametrize("value", ["0", "five", "-2"])
def test_estimate_mode_refuses_what_is_not_a_number_of_steps(monkeypatch, value):
    monkeypatch.setenv("COURSE_ESTIMATE_STEPS", value)
    with pytest.raises(ValueError, match="COURSE_ESTIMATE_STEPS"):
        ProgressBar(10, unit="batch")


def test_estimate_mode_times_at_least_its_minimum_window(monkeypatch):
    monkeypatch.setenv("COURSE_ESTIMATE_STEPS", "1")
    monkeypatch.setattr(progress, "ESTIMATE_MIN_SECONDS", 0.2)
    bar = ProgressBar(10**9, unit="batch", stream=io.StringIO())
    start = time.perf_counter()
    with pytest.raises(EstimateReached):
        while True:
            bar.update()
    assert time.perf_counter() - start >= 0.2 and bar.count > 2
