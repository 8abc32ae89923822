"""`python -m portrait_rt <command> ...`: one CLI, each sub-command implemented by the module that owns the work.

A sub-command's module defines `add_cli_arguments(parser)` and `cli_main(args) -> int | None`; it is imported only
when that command runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import copy
import sys
from importlib import import_module

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("portrait_rt.generate", "reference images + speech audio -> talking-portrait mp4"),
    "synth": ("portrait_rt.data.synthetic", "render the synthetic talking-portrait corpus (mp4 + wav + metadata)"),
    "prepare": ("portrait_rt.data.prepare", "turn a folder of your own talking videos into training shards"),
    "train": ("portrait_rt.training.cli", "train the VAE or the DiT with accelerate"),
    "export": ("portrait_rt.training.export", "write a complete pipeline folder from trained checkpoints"),
    "eval": ("portrait_rt.eval.cli", "offline metrics: lip-sync, reconstruction, drift; a model's report"),
    "bench": ("portrait_rt.bench", "streaming speed benchmark (JSON)"),
    "serve": ("portrait_rt.serving.ray_app", "live sessions on a Ray Serve cluster (the Space's live WebSocket)"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, an option without help text included (argparse would print no
    line for it), except where there is none to show (None, False, required)."""

    def add_argument(self, action: argparse.Action) -> None:
        if action.help is None and action.default not in (None, False, argparse.SUPPRESS):
            action = copy.copy(action)
            action.help = "default: %(default)s"
        super().add_argument(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """A parser with `HelpFormatter`; its sub-parsers (the steps of `train`) are of this class too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m portrait_rt",
        description="portrait-rt: real-time streaming audio-driven talking-portrait video.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items())
        + "\n\nRun `python -m portrait_rt <command> --help` for a command's options.",
    )
    parser.add_argument(
        "command", choices=list(SUBCOMMANDS), metavar="command", help="one of: " + ", ".join(SUBCOMMANDS)
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; exit status 2, with one line on stderr, for what the user can fix (argparse's rule).

    What the user can fix: a bad option (argparse), a value a function refuses (`ValueError`), a file that is missing
    or unreadable (`OSError`), a package that is not installed (`ImportError`). Anything else is a bug and keeps its
    traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        _top_parser().print_help(sys.stderr)
        return 2
    if argv[0] not in SUBCOMMANDS:
        _top_parser().parse_args(argv[:1])  # --help exits 0; an unknown command exits 2
    name, rest = argv[0], argv[1:]
    module_name, help_ = SUBCOMMANDS[name]
    parser = ArgumentParser(prog=f"python -m portrait_rt {name}", description=help_)
    try:
        module = import_module(module_name)
        module.add_cli_arguments(parser)
        args = parser.parse_args(rest)
        return int(module.cli_main(args) or 0)
    except (ValueError, OSError, ImportError) as error:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(error).split())}\n")
