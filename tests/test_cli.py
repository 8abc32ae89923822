import subprocess
import sys

from portrait_rt.cli import SUBCOMMANDS


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "portrait_rt", "--help"], capture_output=True, text=True, check=True)
    for name in ("generate", "synth", "train", "eval", "bench", "prepare", "export"):
        assert name in out.stdout and name in SUBCOMMANDS
