import io

import pytest

from common.progress import ProgressBar


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
