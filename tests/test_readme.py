"""The README's Python snippet, run as written from the repository root: no errors, no warnings."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_python_snippet_runs_as_written():
    section = (REPO / "README.md").read_text().split("## Use it from Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "block (16, " in run.stdout and "last block" in run.stdout
    assert "warn" not in run.stderr.lower(), run.stderr
