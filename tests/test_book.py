import os
import re

import nbformat
import pytest

from common import book, results


def test_check_result_prints_the_line_that_the_book_collects(capsys):
    results.check_result("test accuracy", 0.8123, above=0.73, d2l=0.82)
    line = capsys.readouterr().out.strip()
    assert line == "result: test accuracy = 0.8123 (asserted > 0.73; d2l: 0.82)"
    match = results.RESULT_LINE.fullmatch(line)
    assert (match["name"], match["value"], match["op"], match["threshold"], match["d2l"]) == (
        "test accuracy", "0.8123", ">", "0.73", "0.82")
    results.check_result("perplexity", 1.2, below=1.5)
    assert results.RESULT_LINE.fullmatch(capsys.readouterr().out.strip())["d2l"] is None


def test_check_result_fails_on_a_result_on_the_wrong_side():
    with pytest.raises(AssertionError, match=r"perplexity = 3.65, expected < 1.5"):
        results.check_result("perplexity", 3.65, below=1.5)
    with pytest.raises(AssertionError):
        results.check_result("accuracy", float("nan"), above=0.5)


def test_check_result_needs_exactly_one_threshold():
    with pytest.raises(ValueError, match="exactly one threshold"):
        results.check_result("accuracy", 0.9)
    with pytest.raises(ValueError, match="exactly one threshold"):
        results.check_result("accuracy", 0.9, above=0.5, below=1.0)


def _notebook(folder, name, source):
    path = folder / "chapter_demo" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)],
                                            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                     "language": "python"}}), path)
    return path


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    monkeypatch.setattr(book, "ROOT", tmp_path)
    monkeypatch.setattr(book, "BOOK_DIR", tmp_path / "build" / "book")
    monkeypatch.setattr(book, "NEEDS_GPU", frozenset(["chapter_demo/big.ipynb"]))
    return tmp_path


def test_execute_records_results_and_skips_what_ran_at_this_commit(fake_repo, monkeypatch):
    monkeypatch.setenv("COURSE_SMOKE", "1")
    good = _notebook(fake_repo, "good.ipynb", 'import os\nprint("mode", os.environ["COURSE_SMOKE"])\n'
                                              'print("result: accuracy = 0.91 (asserted > 0.8; d2l: 0.9)")')
    bad = _notebook(fake_repo, "bad.ipynb", 'assert 1 + 1 == 3, "arithmetic is broken"')
    assert not book.is_up_to_date(good, "abc123")
    assert book.execute(good, "abc123")["status"] == "passed"
    assert book.execute(bad, "abc123")["status"] == "failed"
    assert book.is_up_to_date(good, "abc123") and not book.is_up_to_date(good, "def456")
    executed = nbformat.read(book.executed_path(good), as_version=4)
    assert "mode 0" in executed.cells[0].outputs[0]["text"]  # full mode in the kernel,
    assert os.environ["COURSE_SMOKE"] == "1"  # and nothing changed here

    row = book.row_from_executed([book.executed_path(good)], "chapter_demo/good.ipynb")
    assert (row.result, row.asserted, row.d2l, row.commit) == ("accuracy 0.91", "> 0.8", "0.9", "abc123")
    assert "arithmetic is broken" in book.row_from_executed([book.executed_path(bad)], "chapter_demo/bad.ipynb").result

    good.write_text(good.read_text().replace("0.91", "0.92"))  # an edited notebook runs again
    assert not book.is_up_to_date(good, "abc123")


def test_results_table_keeps_earlier_rows_and_says_what_was_not_run(fake_repo):
    results = fake_repo / "RESULTS.md"
    earlier = book.Row("chapter_demo/old.ipynb", "accuracy 0.8", "> 0.7", "0.81", "CPU, 2 cores (x86_64)", "5 min",
                       "0ld")
    stale = book.Row("chapter_demo/big.ipynb", "not run in full mode yet", "", "—", "", "", "")  # before NEEDS_GPU said
    results.write_text("| " + " | ".join(book.HEADER) + " |\n|---|\n" + earlier.markdown() + "\n"
                       + stale.markdown() + "\n")
    new = _notebook(fake_repo, "new.ipynb", 'print("result: loss = 0.1 (asserted < 0.5)")')
    book.execute(new, "n3w")
    _notebook(fake_repo, "todo.ipynb", 'import common\ncommon.check_result("loss", 0.1, below=0.5)')
    _notebook(fake_repo, "checks.ipynb", "assert 1 + 1 == 2")
    names = ("big.ipynb", "checks.ipynb", "new.ipynb", "old.ipynb", "todo.ipynb")
    book.write_results([fake_repo / "chapter_demo" / name for name in names], results)
    rows = book._rows_in(results)
    assert list(rows) == [f"chapter_demo/{name}" for name in names]
    assert rows["chapter_demo/old.ipynb"] == earlier
    assert (rows["chapter_demo/new.ipynb"].result, rows["chapter_demo/new.ipynb"].commit) == ("loss 0.1", "n3w")
    assert rows["chapter_demo/big.ipynb"].result.startswith("needs a GPU: not run yet")
    assert rows["chapter_demo/todo.ipynb"].result == "not run in full mode yet"
    assert rows["chapter_demo/checks.ipynb"].result == "no headline result (checks only)"


def test_seeds_reach_the_notebook_and_the_row_gives_their_range(fake_repo):
    source = ('import common\nseed = common.run_seed()\n'
              'print(f"result: accuracy = {0.9 + seed / 100} (asserted > 0.8)")\nassert seed != 3, "unlucky seed"')
    notebook = _notebook(fake_repo, "seeded.ipynb", source)
    for seed in (0, 2, 3):
        book.execute(notebook, "abc123", seed)
    assert book.executed_path(notebook, 2) == fake_repo / "build" / "book" / "seed-2" / "chapter_demo" / "seeded.ipynb"
    assert book.is_up_to_date(notebook, "abc123", 2) and not book.is_up_to_date(notebook, "abc123", 1)
    copies = book.executed_copies()["chapter_demo/seeded.ipynb"]
    assert copies[0] == book.executed_path(notebook, 0)
    row = book.row_from_executed(copies, "chapter_demo/seeded.ipynb")
    assert row.result == "accuracy 0.9 (seeds 0, 2: 0.9-0.92); FAILED with seed 3: AssertionError: unlucky seed"
    assert row.asserted == "> 0.8"


def test_seeds_option_refuses_what_is_not_a_list_of_seeds():
    with pytest.raises(SystemExit):
        book.main(["--seeds", "0,one"])
    with pytest.raises(SystemExit):
        book.main(["--seeds", "1,1"])


def test_gpu_notebooks_are_skipped_on_a_cpu_unless_asked(fake_repo, monkeypatch, capsys):
    big = _notebook(fake_repo, "big.ipynb", 'print("result: accuracy = 0.9 (asserted > 0.8)")')
    monkeypatch.setattr(book, "device_name", lambda: "CPU, 2 cores (x86_64)")
    monkeypatch.setattr(book, "RESULTS_FILE", fake_repo / "RESULTS.md")
    monkeypatch.chdir(fake_repo)
    assert book.main([str(big)]) == 0
    assert "skipped, its full mode needs a GPU" in capsys.readouterr().out
    assert not book.executed_path(big).exists()


def test_estimate_times_each_training_loop_and_gives_the_row_a_time_not_a_result(fake_repo, monkeypatch):
    loop = ("from common import progress\n"
            "progress.ESTIMATE_MIN_SECONDS = 0.0  # the test's loops take no time\n"
            "from common.progress import ProgressBar\n"
            "bar = ProgressBar({total}, unit='batch', desc='{desc}')\n"
            "for step in range({total}):\n"
            "    bar.update()\n"
            "history = 'trained'\n")
    big = fake_repo / "chapter_demo" / "big.ipynb"
    big.parent.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(loop.format(total=1000, desc="long loop")),
               nbformat.v4.new_code_cell("print(history)"),  # fails: the loop above was stopped
               nbformat.v4.new_code_cell(loop.format(total=50, desc="short loop"))],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), big)
    record = book.estimate(big, "abc123", steps=3)
    assert record["status"] == "estimated" and [loop["desc"] for loop in record["loops"]] == ["long loop", "short loop"]
    assert [loop["steps"] for loop in record["loops"]] == [1000, 50]
    assert record["estimated_seconds"] >= record["seconds"]
    assert book.is_estimated(big, "abc123") and not book.is_estimated(big, "def456")
    assert not book.executed_path(big).exists(), "an estimate is not a full-mode run"
    results = fake_repo / "RESULTS.md"
    book.write_results([big], results)
    row = book._rows_in(results)["chapter_demo/big.ipynb"]
    assert row.is_estimate() and row.commit == "abc123"
    assert re.search(r"estimated from 3 timed steps of each loop: long loop \d+ s, short loop \d+ s$", row.result)
    book.write_results([big], results)  # the estimate row is kept, like a run's
    assert book._rows_in(results)["chapter_demo/big.ipynb"] == row


def test_an_estimate_without_a_progress_bar_fails_and_a_run_replaces_an_estimate(fake_repo, monkeypatch):
    monkeypatch.setenv("COURSE_SMOKE", "1")
    plain = _notebook(fake_repo, "plain.ipynb", 'print("result: accuracy = 0.9 (asserted > 0.8)")')
    record = book.estimate(plain, "abc123", steps=3)
    assert record["status"] == "failed" and "no training loop" in record["error"]
    results = fake_repo / "RESULTS.md"
    book.write_results([plain], results)
    assert "estimating its time failed" in book._rows_in(results)["chapter_demo/plain.ipynb"].result
    book.execute(plain, "abc123")
    book.write_results([plain], results)
    assert book._rows_in(results)["chapter_demo/plain.ipynb"].result == "accuracy 0.9"


def test_estimate_option_refuses_what_is_not_a_number_of_steps():
    with pytest.raises(SystemExit):
        book.main(["--estimate", "0"])


def test_an_estimate_row_adds_each_loops_evaluations_to_it_and_keeps_loops_of_one_name_apart():
    loops = [{"desc": "training", "steps": 100, "seconds_per_step": 30.0},
             {"desc": "training, evaluations", "steps": 10, "seconds_per_step": 60.0},
             {"desc": "training", "steps": 100, "seconds_per_step": 1.0}]
    assert book._loop_times(loops) == "training 60 min, training 100 s"
