from common import notebook

SCRIPT = '''# %% [markdown]
# # A title
#
# What it teaches.

# %%
x = 1

# %%
# NBVAL_CHECK_OUTPUT
print(x)
'''


def test_build_inserts_badge_and_setup_cell(tmp_path):
    path = notebook.ROOT / "chapter_preliminaries" / "example.ipynb"
    nb = notebook.parse_script(SCRIPT)
    notebook.apply_header(nb, path)
    notebook.clean(nb)
    assert nb.cells[0].source.startswith("# A title\n\n[![Open In Colab]")
    assert "chapter_preliminaries/example.ipynb" in nb.cells[0].source
    assert nb.cells[1].source == notebook.SETUP_SOURCE
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code", "code"]
    notebook.apply_header(nb, path)  # idempotent: no second badge or setup cell
    assert len(nb.cells) == 4 and nb.cells[0].source.count("Open In Colab") == 1


def test_clean_keeps_only_checked_outputs():
    import nbformat

    nb = notebook.parse_script(SCRIPT)
    for cell in nb.cells[1:]:
        cell.execution_count = 3
        cell.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    notebook.clean(nb)
    assert nb.cells[1].outputs == [] and nb.cells[2].outputs[0].text == "1\n"
    assert (nb.cells[1].execution_count, nb.cells[2].execution_count) == (None, 1)
