"""`python -m portrait_rt <command> ...`: one CLI, each sub-command implemented by the module that owns the work.

A sub-command's module defines `add_cli_arguments(parser)` and `cli_main(args) -> int | None`; it is imported only
when that command runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("portrait_rt.generate", "reference images + speech audio -> talking-portrait mp4"),
    "synth": ("portrait_rt.data.synthetic", "render the synthetic talking-portrait corpus (mp4 + wav + metadata)"),
    "prepare": ("portrait_rt.data.prepare", "turn a folder of your own talking videos into training shards"),
    "train": ("portrait_rt.training.cli", "train the VAE or the DiT with accelerate"),
    "export": ("portrait_rt.training.export", "write a complete pipeline folder from trained checkpoints"),
    "eval": ("portrait_rt.eval.cli", "offline metrics: lip-sync, reconstruction, drift"),
    "bench": ("portrait_rt.bench", "streaming speed benchmark (JSON)"),
}


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
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        _top_parser().parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_ = SUBCOMMANDS[name]
    module = import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m portrait_rt {name}", description=help_)
    module.add_cli_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.cli_main(args) or 0)
