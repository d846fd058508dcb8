import pytest

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


def test_a_rebuilt_notebook_keeps_its_cell_ids():
    first, second = notebook.parse_script(SCRIPT), notebook.parse_script(SCRIPT + "\n# %%\ny = 2\n")
    notebook.keep_cell_ids(second, first)
    assert [c.id for c in second.cells[:3]] == [c.id for c in first.cells]
    assert len({c.id for c in second.cells}) == 4  # the new cell keeps its own, different id


def test_clean_keeps_only_checked_outputs():
    import nbformat

    nb = notebook.parse_script(SCRIPT)
    for cell in nb.cells[1:]:
        cell.execution_count = 3
        cell.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    notebook.clean(nb)
    assert nb.cells[1].outputs == [] and nb.cells[2].outputs[0].text == "1\n"
    assert (nb.cells[1].execution_count, nb.cells[2].execution_count) == (None, 1)


def _run_colab_install(monkeypatch):
    """Execute the setup cell's Colab branch (only that part) as if on Colab."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    colab_part = notebook.SETUP_SOURCE.split("\nfor folder in")[0]
    exec(compile(colab_part, "setup-cell", "exec"), {})


def test_release_tag_is_the_version_in_pyproject():
    import tomllib

    with open(notebook.ROOT / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert notebook.REF == f"v{version}"
    assert "@{ref}" in notebook.SETUP_SOURCE and f'"COURSE_REF", "v{version}"' in notebook.SETUP_SOURCE
    assert f"/blob/v{version}/" in notebook.badge("chapter_x/y.ipynb")


def test_colab_install_uses_the_environment_and_never_prompts(monkeypatch):
    import subprocess

    calls = []

    def fake_run(args, **kwargs):
        calls.append((args, kwargs))
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.delenv("COURSE_REPOSITORY", raising=False)
    monkeypatch.delenv("COURSE_REF", raising=False)
    _run_colab_install(monkeypatch)
    assert calls[-1][0][-1] == f"git+https://github.com/{notebook.REPOSITORY}@{notebook.REF}"
    monkeypatch.setenv("COURSE_REPOSITORY", "https://gitlab.example.org/me/course.git")
    monkeypatch.setenv("COURSE_REF", "main")
    _run_colab_install(monkeypatch)
    args, kwargs = calls[-1]
    assert args[-1] == "git+https://gitlab.example.org/me/course.git@main"
    assert kwargs["env"]["GIT_TERMINAL_PROMPT"] == "0" and "check" not in kwargs


def test_colab_install_failure_says_what_was_tried_and_what_to_change(monkeypatch, tmp_path):
    # A real pip run against a repository that does not exist: it fails fast, offline, without a prompt.
    missing = (tmp_path / "no-such-repo").as_uri()
    monkeypatch.setenv("COURSE_REPOSITORY", missing)
    monkeypatch.setenv("COURSE_REF", "v9.9.9")
    with pytest.raises(SystemExit) as failure:
        _run_colab_install(monkeypatch)
    message = str(failure.value)
    assert f"from {missing} at v9.9.9" in message
    assert "git" in message.lower()  # pip's own reason, passed on
    assert "COURSE_REPOSITORY" in message and "COURSE_REF" in message
    assert "Traceback" not in message
