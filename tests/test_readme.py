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


def test_load_pipeline_snippet_runs_on_this_machine():
    """The `load_pipeline` snippet (device and dtype spelled out) runs as written on a CPU-only machine too."""
    section = (REPO / "README.md").read_text().split("Loading for every entry point", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'device="cuda"' in code and 'device="cpu"' in code  # it says what to pass on a machine without a GPU
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr


def test_outputs_of_the_documented_commands_are_ignored_by_git():
    """What `generate`, `synth` and `eval` write by default or as the README shows, from the root, stays out of git."""
    outputs = ["out.mp4", "speech.wav", "corpus/clip_0000.mp4", "report/report.json", "TEMP_MPY_wvf_snd.mp4"]
    ignored = subprocess.run(["git", "check-ignore", *outputs], cwd=REPO, capture_output=True, text=True)
    assert sorted(ignored.stdout.split()) == sorted(outputs)
    tracked_but_ignored = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
    )
    assert tracked_but_ignored.stdout == ""  # no committed file falls under the new rules
