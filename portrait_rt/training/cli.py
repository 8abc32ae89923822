"""`python -m portrait_rt train vae|latents|dit ...`: the three training steps, in order.

    python -m portrait_rt train vae --data data/corpus128 --output-dir runs/vae --stages 5x8:1200,17x4:400
    python -m portrait_rt train latents --vae runs/vae/vae --data data/corpus128 --output runs/latents.pt
    python -m portrait_rt train dit --latents runs/latents.pt --output-dir runs/dit --max-steps 2000

Multi-process / multi-GPU: `accelerate launch [--num_processes N] -m portrait_rt train vae ...` with your own
accelerate config (DDP; FSDP for the paper-size DiT). Every run resumes from its newest checkpoint by default.
"""

from __future__ import annotations

import argparse
import logging

STEPS = {
    "vae": ("portrait_rt.training.vae", "train the causal video VAE (L1 + KL, references, progressive length)"),
    "latents": ("portrait_rt.training.latents", "encode the clips once with the trained VAE (latent cache)"),
    "dit": ("portrait_rt.training.dit", "train the DiT + audio encoder on cached latents (Algorithm 1)"),
}


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from importlib import import_module

    sub = parser.add_subparsers(dest="step", required=True, metavar="{vae,latents,dit}")
    for name, (module, help_) in STEPS.items():
        import_module(module).add_cli_arguments(sub.add_parser(name, help=help_, description=help_))


def cli_main(args: argparse.Namespace) -> int:
    from importlib import import_module

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = import_module(STEPS[args.step][0])
    if args.step == "latents":
        return module.cli_main(args)
    module.build_trainer(args).train()
    return 0
