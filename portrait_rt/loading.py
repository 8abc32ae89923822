"""Loading a pipeline: the one function the Space, `python -m portrait_rt generate` and the benchmark call.

    pipe = load_pipeline("assets/portrait-rt-demo")          # a folder, a Hub id, or "preset:tiny" (random weights)
    pipe = load_pipeline(choose_model().model, threads=2)    # the default model (below)

One default-model policy (`choose_model`): the model asked for (`--model`), else `$PORTRAIT_RT_MODEL`, else the
bundled demo folder of a source checkout, else the randomly initialised `preset:tiny` with a notice saying so.
One device/dtype policy (`load_pipeline`): CUDA in bfloat16 where available (the paper's setting), else CPU in
float32; diffusers keeps each model's `_keep_in_fp32_modules` (norms, AdaLN) in float32, and so does a preset.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from portrait_rt.pipeline import PortraitRTPipeline

logger = logging.getLogger(__name__)

MODEL_ENV = "PORTRAIT_RT_MODEL"
BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "portrait-rt-demo"  # in a source checkout
FALLBACK_MODEL = "preset:tiny"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelChoice:
    """Which pipeline to load (`model`: a folder, Hub id or `preset:NAME`) and why (`notice`, if a fallback)."""

    model: str
    notice: str | None = None

    @property
    def is_random(self) -> bool:
        """True for `preset:NAME`: randomly initialised weights (for tests and UI work, not for looking at)."""
        return self.model.startswith("preset:")


def choose_model(requested: str | None = None, bundled: str | os.PathLike | None = None) -> ModelChoice:
    """`requested`, else `$PORTRAIT_RT_MODEL`, else the `bundled` demo folder (default: `BUNDLED_MODEL`) if present,
    else `preset:tiny`."""
    requested = requested or os.environ.get(MODEL_ENV)
    if requested:
        return ModelChoice(requested)
    bundled = BUNDLED_MODEL if bundled is None else bundled
    if Path(bundled).is_dir():
        return ModelChoice(str(bundled))
    return ModelChoice(
        FALLBACK_MODEL,
        notice=f"The bundled demo model (`{bundled}`) is not there, so this runs a randomly initialised tiny "
        "pipeline: its videos are noise-like and do not follow the audio. Load a trained model with "
        f"`--model PATH_OR_HUB_ID` or `{MODEL_ENV}=...`.",
    )


def default_device_dtype() -> tuple[str, torch.dtype]:
    """CUDA in bfloat16 where available (float16 where bf16 is not supported), else CPU in float32."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


def default_threads() -> int:
    """CPU threads when none are asked for: half the cores this process may use, at least 1.

    torch's default (every core) collapses when the machine is shared: measured on this project's 2-core machine with
    a training job on both cores, `generate` ran at 1.8 FPS with 2 threads and 25 FPS with 1 (OpenMP threads wait on
    each other at every op while one of them is descheduled). Half the cores keeps real time there and on an idle
    machine (1 thread: 25+ FPS at the app's defaults).
    """
    return max(1, len(os.sched_getaffinity(0)) // 2) if hasattr(os, "sched_getaffinity") else 1


def load_pipeline(
    model: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    threads: int | None = None,
) -> PortraitRTPipeline:
    """A pipeline from a folder, a Hub id or `preset:NAME`, on `device` in `dtype` (defaults: `default_device_dtype`).

    `threads`: torch's CPU threads (default on CPU: `default_threads()`).
    """
    from portrait_rt.pipeline import PortraitRTPipeline

    auto_device, auto_dtype = default_device_dtype()
    device = torch.device(device or auto_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r}: this machine has no CUDA GPU that torch can use; pass device='cpu', or no"
            " device (CUDA where available, else CPU)."
        )
    if threads or device.type == "cpu":
        torch.set_num_threads(threads or default_threads())
    dtype = dtype or (auto_dtype if device.type == "cuda" else torch.float32)
    torch_dtype = None if dtype == torch.float32 else dtype
    if model.startswith("preset:"):
        pipe = PortraitRTPipeline.from_preset(model.split(":", 1)[1])
        if torch_dtype is not None:  # what from_pretrained(torch_dtype=...) does, parameter by parameter
            for component in (pipe.vae, pipe.transformer, pipe.audio_encoder):
                keep = component._keep_in_fp32_modules or []
                for name, param in component.named_parameters():
                    kept = any(k in name.split(".") for k in keep)
                    param.data = param.data.to(torch.float32 if kept else torch_dtype)
    else:
        pipe = _from_folder_or_hub(PortraitRTPipeline, model, torch_dtype)
    return pipe.to(device)


def _from_folder_or_hub(cls, model: str, torch_dtype: torch.dtype | None):
    """`cls.from_pretrained(model)`, with a missing folder reported as one (not as a failed Hub download).

    `model` is a local folder when it exists, or when it cannot be a Hub id (`./x`, `/x`, `a/b/c`) or its parent folder
    exists here (`assets/typo`); otherwise it is looked up on the Hub, and a failed lookup names both possibilities.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"Model folder {model!r} has no model_index.json: it is not a pipeline folder.")
        return cls.from_pretrained(str(path), dtype=torch_dtype)
    try:
        validate_repo_id(model)
        hub_id = path.parent == Path(".") or not path.parent.is_dir()
    except HFValidationError:
        hub_id = False
    if not hub_id:
        raise FileNotFoundError(f"Model folder {model!r} does not exist (looked in {Path.cwd()}).")
    try:
        return cls.from_pretrained(model, dtype=torch_dtype)
    except OSError as error:
        reason = str(error).strip().splitlines()[0][:200]
        raise OSError(
            f"Model {model!r} is not a folder here ({Path.cwd()}) and could not be loaded from the Hugging Face Hub "
            f"({reason})."
        ) from error


# ---------------------------------------------------------------------------------------------- command lines
def add_model_arguments(parser: argparse.ArgumentParser, random_fallback: bool = True) -> None:
    """`--model`, `--device`, `--dtype`, `--threads`: how every entry point says which pipeline to load, and where.

    `random_fallback=False`: with no model asked for and no bundled one, `load_from_args` refuses instead of loading
    random weights; for commands whose output is only worth having from a trained model (`generate`).
    """
    fallback = (
        f"{FALLBACK_MODEL} (random weights)"
        if random_fallback
        else f"an error (pass {FALLBACK_MODEL} for random weights)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help=f"pipeline folder, Hub id or preset:NAME (default: ${MODEL_ENV}, else the bundled demo, else {fallback})",
    )
    parser.set_defaults(random_fallback=random_fallback)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument(
        "--dtype", default=None, choices=list(DTYPES), help="default: bfloat16 on CUDA, float32 on CPU"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: half the cores)")


def load_from_args(args: argparse.Namespace) -> tuple[PortraitRTPipeline, ModelChoice]:
    """The pipeline `add_model_arguments`' options ask for, and the choice behind it (a fallback notice is logged, or,
    where the parser was made with `random_fallback=False`, a `ValueError` saying what to pass)."""
    choice = choose_model(args.model)
    if choice.notice:
        if not getattr(args, "random_fallback", True):
            raise ValueError(
                f"No model to load: the bundled demo model ({BUNDLED_MODEL}) is not here (it ships with a checkout of "
                f"the repository, not with the package). Pass --model PATH_OR_HUB_ID (or set ${MODEL_ENV}), or "
                f"--model {FALLBACK_MODEL} for randomly initialised weights (noise, for testing)."
            )
        logger.warning(choice.notice)
    dtype = DTYPES[args.dtype] if args.dtype else None
    return load_pipeline(choice.model, args.device, dtype, args.threads), choice
