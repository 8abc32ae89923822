import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


def require_chromium(executable: str) -> None:
    """Skip the calling browser-test module when Chromium is not at `executable`, but fail it in CI (`CI` set):
    CI installs Chromium (`scripts/setup.sh --dev`), so there a missing browser is a broken setup, not a reason to
    leave the browser tests out."""
    if Path(executable).exists():
        return
    message = f"no Chromium at {executable} (apt-get install chromium, or bash scripts/setup.sh --dev)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so the browser tests must run", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def perturb_(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Add seeded noise to every parameter: adaLN-zero / zero-init output layers make a fresh model's output
    constant, which would hide every effect a test looks for."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (use with `pytestmark = pytest.mark.usefixtures("one_thread")`): CI's 2
    cores are shared, and OpenMP barriers across descheduled threads stall training steps."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_pipe():
    from portrait_rt.pipeline import PortraitRTPipeline

    torch.manual_seed(0)
    pipe = PortraitRTPipeline.from_preset("tiny")
    perturb_(pipe.transformer)
    perturb_(pipe.audio_encoder, seed=1)
    return pipe


@pytest.fixture(scope="session")
def portraits():
    """Three distinct 96x80 RGB 'portraits' (they are centre-cropped and resized by the pipeline)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        img = np.full((96, 80, 3), 40 + 60 * i, np.uint8)
        img[20:70, 20:60] = rng.integers(0, 255, 3)
        out.append(img)
    return out


def speech_like(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Bursts of modulated noise with pauses: loud and quiet frames for the mouth to follow."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = (np.sin(2 * np.pi * 2.5 * t) > 0).astype(np.float32) * (0.5 + 0.5 * np.sin(2 * np.pi * 7 * t))
    carrier = np.sin(2 * np.pi * 180 * t) + 0.3 * rng.standard_normal(t.size)
    return (0.3 * envelope * carrier).astype(np.float32)
