"""The training loop both trainers share, on `accelerate`: one process on CPU, DDP/FSDP through `accelerate launch`.

What it gives a trainer (a `Trainer` subclass that builds a module and says how to draw a batch):

- exact resume: `accelerator.save_state` keeps model, optimizer, LR schedule, RNG states, the EMA weights and the
  step; batches are a pure function of (seed, step, micro-batch, process), so the data position *is* the step and
  a resumed run sees the same batches and noise as an uninterrupted one;
- mixed precision, gradient checkpointing, gradient accumulation (`no_sync` on all but the last micro-batch);
- EMA weights (`diffusers.training_utils.EMAModel`), saved with every checkpoint and used for export;
- FSDP (`accelerate launch` with an FSDP2 config, e.g. `benchmarks/accelerate_fsdp.yaml`): the parameters are sharded
  over the processes, each process keeps the EMA of its own shards (saved beside the checkpoint as
  `ema_shard_<rank>.pt`), and the final components are gathered into one unsharded module for `save_final`;
- a tqdm progress bar, `metrics.jsonl` (and TensorBoard when it is installed), checkpoints every N steps (the
  newest `checkpoints_total_limit` kept), a wall-clock budget (`max_minutes`) that checkpoints and stops.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import shutil
import time
import typing
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, ProjectConfiguration, set_seed
from diffusers.training_utils import EMAModel
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def option(default: Any = MISSING, help: str = "", **argparse_kwargs) -> Any:
    """A dataclass field that is also a command-line flag (`add_dataclass_arguments`): its `help`, and any argparse
    keyword to add (`choices`, a `type` that parses the text, `cli_default` where the flag's default differs)."""
    return field(**({} if default is MISSING else {"default": default}), metadata={"help": help, **argparse_kwargs})


def _none_or_text(text: str) -> str | None:
    return None if text.lower() == "none" else text


@dataclass
class TrainConfig:
    """Settings every trainer shares; the command line's flags are these fields (`--max-steps` for `max_steps`)."""

    output_dir: str = option(help="run folder: checkpoints, metrics.jsonl, final weights")
    max_steps: int = option(1000, "optimizer steps in all", cli_default=None)
    batch_size: int = option(4, "per process, per micro-batch")
    learning_rate: float = option(1e-4, "peak learning rate (AdamW)")
    min_lr_ratio: float = option(0.1, "cosine decay floor, as a fraction of the learning rate")
    lr_warmup_steps: int = option(50, "linear warm-up steps")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm; 0 disables clipping")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    mixed_precision: str = option("no", "autocast dtype", choices=["no", "fp16", "bf16"])
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory)")
    checkpointing_steps: int = option(500, "save a checkpoint every this many steps")
    checkpoints_total_limit: int = option(2, "checkpoints kept (the newest)")
    ema_decay: float = option(0.999, "decay of the EMA weights that are exported")
    seed: int = option(0, "initial weights and every batch's draws")
    log_every: int = option(10, "log the losses every this many steps")
    resume: str | None = option("latest", "'latest', a checkpoint folder, or 'none' (a fresh run)", type=_none_or_text)
    max_minutes: float | None = option(None, "wall-clock budget of this invocation: checkpoint and stop when spent")
    stop_at_step: int | None = option(None, "checkpoint and stop at this step (the LR schedule still spans all)")
    finalize: bool = option(False, "save the final EMA weights from the newest checkpoint, without training")
    extra: dict = field(default_factory=dict)  # what a trainer records beside (e.g. the VAE's stages); not a flag


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, suffix: str = "") -> None:
    """One flag per field of dataclass `cls` made with `option`: `--field-name` (then `suffix`, e.g. "-weight"), of
    the field's type (`bool`: a switch), with its default and help; a field without a default is required."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        kwargs = {k: v for k, v in f.metadata.items() if k != "cli_default"}
        kind = next(t for t in (typing.get_args(hints[f.name]) or (hints[f.name],)) if t is not type(None))
        if kind is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs.setdefault("type", kind)
            if f.default is MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = f.metadata.get("cli_default", f.default)
        parser.add_argument("--" + f.name.replace("_", "-") + suffix, **kwargs)


def dataclass_from_args(cls: type, args: argparse.Namespace, suffix: str = "", **values):
    """`cls` from the flags `add_dataclass_arguments(parser, cls, suffix)` added; `values` override them."""
    dest = suffix.replace("-", "_")
    flags = {f.name: getattr(args, f.name + dest) for f in dataclasses.fields(cls) if "help" in f.metadata}
    return cls(**{**flags, **values})


class TrainingProgress:
    """The step counter, saved with each checkpoint (`register_for_checkpointing` needs state_dict/load_state_dict)."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def step_generator(seed: int, step: int, micro: int = 0, rank: int = 0) -> torch.Generator:
    """The CPU generator that draws every random choice of one micro-batch: a pure function of its position."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1)[0]))


def cosine_with_warmup(warmup: int, total: int, min_ratio: float):
    """LR multiplier: linear warm-up, then cosine decay to `min_ratio` at `total` steps."""

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest `checkpoints/checkpoint-<step>` folder of a run, or None."""
    folders = sorted((Path(output_dir) / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return folders[-1] if folders else None


class Trainer:
    """Shared loop. Subclasses implement `build_module()`, `make_batch(step, micro, generator)` and `save_final()`.

    The module's `forward(**batch)` returns `(loss, logs)`: the loss to minimise and a dict of floats to log.
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self.output_dir = Path(config.output_dir)
        log_with = None
        with contextlib.suppress(ImportError):
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        # Unused parameters are normal here (no references in a batch -> Dref idle; no dropped condition -> null
        # embeddings idle), so DDP must look for them.
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir)),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
            step_scheduler_with_optimizer=False,
        )
        set_seed(config.seed)  # the same initial weights on every process and in every fresh run
        self.module = self.build_module()
        if config.gradient_checkpointing:
            for m in self.module.modules():
                if hasattr(m, "enable_gradient_checkpointing") and getattr(m, "_supports_gradient_checkpointing", 0):
                    m.enable_gradient_checkpointing()
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(config.lr_warmup_steps, config.max_steps, config.min_lr_ratio)
        )
        self.progress = TrainingProgress()
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
            self.module, self.optimizer, self.lr_scheduler
        )
        # The EMA is made after `prepare`, on the device the weights now live on. Under FSDP each process averages
        # its own shards and saves them itself (accelerate saves registered objects from the main process only).
        self.sharded = self.accelerator.distributed_type == DistributedType.FSDP
        self.ema = EMAModel(self.trained_params(), decay=config.ema_decay, use_ema_warmup=True, power=3 / 4)
        self.accelerator.register_for_checkpointing(*([self.progress] if self.sharded else [self.ema, self.progress]))
        self.history: list[dict] = []  # one entry per optimizer step run by this invocation (for tests and logs)

    def trained_params(self) -> list[torch.Tensor]:
        """The trained parameters as this process holds them: whole, or under FSDP its shards (local views of the
        DTensor parameters that write through to them)."""
        params = [p for p in self.accelerator.unwrap_model(self.model).parameters() if p.requires_grad]
        return [p.to_local() if isinstance(p, DTensor) else p for p in params]

    # --- to implement ------------------------------------------------------------------------------------------
    def build_module(self) -> torch.nn.Module:
        raise NotImplementedError

    def make_batch(self, step: int, micro: int, generator: torch.Generator) -> dict:
        raise NotImplementedError

    def save_final(self, module: torch.nn.Module) -> None:
        """Save the trained components (`module` holds the EMA weights) under `self.output_dir`."""
        raise NotImplementedError

    # --- checkpoints -------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        path = self.output_dir / "checkpoints" / f"checkpoint-{self.progress.step}"
        self.accelerator.save_state(str(path))
        if self.sharded:
            path.mkdir(parents=True, exist_ok=True)
            torch.save(self.ema.state_dict(), path / f"ema_shard_{self.accelerator.process_index}.pt")
        if self.accelerator.is_main_process:
            folders = sorted(path.parent.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
            for old in folders[: -self.config.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return path

    def maybe_resume(self) -> None:
        resume = self.config.resume
        if not resume:
            return
        path = latest_checkpoint(self.output_dir) if resume == "latest" else Path(resume)
        if path is None:
            return
        if not path.is_dir():
            raise ValueError(f"--resume {resume!r}: no checkpoint folder there; use 'latest' or a checkpoint path.")
        self.accelerator.load_state(str(path))
        if self.sharded:
            shard = path / f"ema_shard_{self.accelerator.process_index}.pt"
            self.ema.load_state_dict(torch.load(shard, map_location=self.accelerator.device, weights_only=True))
        self.ema.to(self.accelerator.device)  # accelerate loads registered objects onto the CPU
        logger.info("resumed from %s at step %d", path, self.progress.step)

    # --- the loop ----------------------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.accelerator.log_with:
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def train(self) -> list[dict]:
        """Run (or continue) training to `max_steps`; returns this invocation's per-step history."""
        cfg, acc = self.config, self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process and not cfg.finalize:
            (self.output_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
            if acc.log_with:
                acc.init_trackers("portrait-rt")
        self.maybe_resume()
        if cfg.finalize:
            logger.info("finalizing at step %d without further training", self.progress.step)
            self.finish()
            return self.history
        start, t0 = self.progress.step, time.time()
        bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, disable=not acc.is_main_process)
        pending: list[dict] = []
        for step in bar:
            self.model.train()
            logs_sum: dict[str, float] = {}
            for micro in range(cfg.gradient_accumulation_steps):
                batch = self.make_batch(step, micro, step_generator(cfg.seed, step, micro, acc.process_index))
                last = micro == cfg.gradient_accumulation_steps - 1
                with contextlib.nullcontext() if last else acc.no_sync(self.model):
                    loss, logs = self.model(**batch)
                    acc.backward(loss / cfg.gradient_accumulation_steps)
                for k, v in {"loss": loss.detach(), **logs}.items():
                    logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / cfg.gradient_accumulation_steps
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm else None
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.ema.step(self.trained_params())
            self.progress.step = step + 1

            # Average the logged numbers over processes.
            keys = sorted(logs_sum)
            means = acc.reduce(
                torch.tensor([logs_sum[k] for k in keys], dtype=torch.float64, device=acc.device), "mean"
            )
            record = {"step": step + 1, **{k: float(v) for k, v in zip(keys, means)}}
            record["lr"] = float(self.lr_scheduler.get_last_lr()[0])
            if grad_norm is not None:  # a replicated DTensor under FSDP
                record["grad_norm"] = float(grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm)
            self.history.append(record)
            pending.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
                # a term some steps lack (no references -> no flow loss) is the mean over the steps that have it
                keys = dict.fromkeys(k for r in pending for k in r if k != "step")
                summary = {k: float(np.mean([r[k] for r in pending if k in r])) for k in keys}
                self._log({"step": step + 1, **summary, "elapsed_s": round(time.time() - t0, 1)})
                pending = []
            out_of_time = cfg.max_minutes is not None and (time.time() - t0) / 60 >= cfg.max_minutes
            out_of_time = torch.tensor([float(out_of_time)], device=acc.device)  # on the device: NCCL has no CPU
            out_of_time = bool(acc.gather(out_of_time).max())  # all processes stop together
            out_of_time |= cfg.stop_at_step is not None and step + 1 >= cfg.stop_at_step
            if (step + 1) % cfg.checkpointing_steps == 0 or step + 1 == cfg.max_steps or out_of_time:
                self.save_checkpoint()
            if out_of_time:
                logger.info("stopped at step %d (budget or --stop-at-step); resume with the same command", step + 1)
                break
        bar.close()
        if self.progress.step >= cfg.max_steps:
            self.finish()
        acc.end_training()
        return self.history

    def finish(self) -> None:
        """Copy the EMA weights into the model and save the final components (main process)."""
        self.accelerator.wait_for_everyone()
        if self.sharded:  # gather the EMA weights (every process takes part), save them from one unsharded module
            params = self.trained_params()
            self.ema.store(params)
            self.ema.copy_to(params)
            state = self.accelerator.get_state_dict(self.model)
            self.ema.restore(params)
            if self.accelerator.is_main_process:
                module = self.build_module()
                module.load_state_dict(state)
                self.save_final(module.to(self.accelerator.device).eval())
        elif self.accelerator.is_main_process:
            module = self.accelerator.unwrap_model(self.model)
            params = [p for p in module.parameters() if p.requires_grad]
            self.ema.store(params)
            self.ema.copy_to(params)
            self.save_final(module)
            self.ema.restore(params)
        self.accelerator.wait_for_everyone()


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `TrainConfig` (shared by `train vae` and `train dit`), and `--threads`."""
    add_dataclass_arguments(parser, TrainConfig)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")


def config_from_args(args: argparse.Namespace, max_steps: int) -> TrainConfig:
    """`TrainConfig` from parsed `add_common_arguments` flags (and `--threads` applied)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return dataclass_from_args(TrainConfig, args, max_steps=max_steps)
