"""`make lint` as part of the test suite: the package, the tests and every notebook pass ruff."""
import subprocess
import sys

from common import config


def test_ruff_finds_nothing():
    root = config.repo_root()
    targets = ["common", "tests", *sorted(str(p.relative_to(root)) for p in root.glob("chapter_*/*.ipynb"))]
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", *targets],
                            capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, f"ruff found problems (run `make lint`):\n{result.stdout}{result.stderr}"
