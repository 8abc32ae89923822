import argparse
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

from portrait_rt.cli import SUBCOMMANDS, ArgumentParser


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "portrait_rt", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_subcommands():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in ("generate", "synth", "train", "eval", "bench", "prepare", "export"):
        assert name in out.stdout and name in SUBCOMMANDS


def test_no_arguments_prints_help_and_fails():
    out = run_cli()
    assert out.returncode == 2 and "generate" in out.stderr and out.stdout == ""


def test_user_errors_are_one_line_with_exit_status_2():
    out = run_cli("eval", "--video", "no-such-video.mp4", "--out", "report")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "python -m portrait_rt eval: error: Video file 'no-such-video.mp4' does not exist."
    ]


def _parsers(parser: argparse.ArgumentParser, name: str):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_help_shows_every_default(command):
    """Each option with a default says it in --help, the steps of `train` included; none says "default: None"."""
    parser = ArgumentParser(prog=command)
    import_module(SUBCOMMANDS[command][0]).add_cli_arguments(parser)
    for name, sub in _parsers(parser, command):
        text = " ".join(sub.format_help().split()).replace("- ", "-")  # argparse wraps lines after hyphens too
        assert "(default: None)" not in text
        for action in sub._actions:
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                shown = " ".join(f"default: {action.default}".split())
                assert shown in text, f"`{name} --help` hides the default of {action.option_strings[0]}"


def test_installed_command_runs_from_any_folder(tmp_path):
    """`portrait-rt` and `python -m portrait_rt` outside the checkout: what `bash scripts/setup.sh` installs."""
    script = Path(sys.executable).parent / "portrait-rt"
    if not script.is_file():
        pytest.skip("portrait-rt is not installed in this Python (`bash scripts/setup.sh` installs it into .venv)")
    for command in ([str(script)], [sys.executable, "-m", "portrait_rt"]):
        out = subprocess.run([*command, "generate", "--help"], capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0 and "--ref" in out.stdout, out.stderr


def test_app_help_shows_every_default():
    """`python app.py --help` uses the CLI's formatter: --port and --host say their defaults (they said nothing)."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "app.py", "--help"], capture_output=True, text=True, cwd=root)
    text = " ".join(out.stdout.split())
    assert out.returncode == 0, out.stderr
    assert "($GRADIO_SERVER_PORT) (default: 7860)" in text and "($GRADIO_SERVER_NAME) (default: 127.0.0.1)" in text
    assert "an error (pass preset:tiny" not in text and "preset:tiny (random weights)" in text  # the app falls back


def test_generates_options_without_a_value_say_what_they_default_to():
    """An option whose default is None (the model's block size, half the cores, ...) says what that means."""
    parser = ArgumentParser(prog="generate")
    import_module(SUBCOMMANDS["generate"][0]).add_cli_arguments(parser)
    for action in parser._actions:
        if action.option_strings and action.default is None and not action.required:
            assert "default" in (action.help or ""), f"generate --help: {action.option_strings[0]} says no default"
