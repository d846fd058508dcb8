"""Notebook hygiene: every notebook is valid, clean, and starts with the shared header."""
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from common import notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = notebook.all_notebooks()
CHAPTERS = sorted(p for p in ROOT.glob("chapter_*") if p.is_dir())
ids = [p.relative_to(ROOT).as_posix() for p in NOTEBOOKS]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) > 0


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_valid_nbformat_4_with_python3_kernel(path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_header_is_the_shared_template(path):
    nb = nbformat.read(path, as_version=4)
    title = nb.cells[0]
    assert title.cell_type == "markdown" and title.source.startswith("# "), "first cell: '# Title'"
    assert notebook.badge(path.relative_to(ROOT).as_posix()) in title.source, "Colab badge missing or stale: make headers"
    assert nb.cells[1].source == notebook.SETUP_SOURCE, "setup cell differs from the template: make headers"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if notebook.CHECK_MARK in cell.source:
            assert cell.outputs, f"cell {i} is checked by nbval but has no stored output: python -m common.notebook fill"
            assert cell.execution_count == 1, f"cell {i}: checked cells are stored with count 1: python -m common.notebook strip"
        else:
            assert not cell.outputs, f"cell {i} has outputs: python -m common.notebook strip"
            assert cell.execution_count is None, f"cell {i} has an execution count: python -m common.notebook strip"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_chapter_readme_lists_every_notebook(chapter):
    readme = chapter / "README.md"
    assert readme.exists(), f"{chapter.name} has no README.md"
    text = readme.read_text(encoding="utf-8")
    for nb in chapter.glob("*.ipynb"):
        assert nb.name in text, f"{readme} does not list {nb.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_markdown_code_fences_are_closed(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            fences = [line for line in cell.source.splitlines() if line.lstrip().startswith("```")]
            assert len(fences) % 2 == 0, f"markdown cell {i} has an unclosed code fence: {fences}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_no_markdown_headings_hidden_in_code_cells(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            headings = [line for line in cell.source.splitlines() if line.startswith("# #")]
            assert not headings, f"code cell {i} holds a markdown heading as a comment: {headings[0]!r}"



def test_executed_cells_may_not_show_matplotlib_reprs(tmp_path):
    # The repository's conftest.py, loaded as a plugin, runs a small notebook through nbval: a
    # plot call ending in ';' stays silent, one without it (or a bare Axes) fails its cell.
    # The kernel's own inline backend: switching to Agg inside a kernel fails with matplotlib 3.7
    # under IPython 9 (pyplot imports IPython's removed backend2gui).
    cells = ["import matplotlib.pyplot as plt",
             "plt.plot([1, 2]);", "plt.plot([1, 2])", "fig, ax = plt.subplots()\nax", "x = 1\nx"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "probe.ipynb")
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q",
                          "--nbval-lax", "--rootdir", str(tmp_path), str(tmp_path / "probe.ipynb")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    failed = sorted(line.split("::")[1].split(" - ")[0] for line in run.stdout.splitlines()
                    if line.startswith("FAILED"))
    assert failed == ["Cell 2", "Cell 3"], run.stdout[-3000:]
