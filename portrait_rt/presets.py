"""Named configurations: `paper` (the paper's sizes, 512²), `demo` (the bundled CPU model), `tiny` (tests).

Each preset is a dict of JSON-friendly config values per pipeline component, passed straight to the component's
`@register_to_config` constructor. `PortraitRTPipeline.from_preset(name)` builds a randomly initialised pipeline
from them.
"""

from __future__ import annotations

import copy

# CausalVideoVAE configs (portrait_rt/models/vae.py).
VAE_PRESETS: dict[str, dict] = {}

# FlowDiT configs (portrait_rt/models/transformer.py).
TRANSFORMER_PRESETS: dict[str, dict] = {}

# Built-in audio encoder configs (portrait_rt/models/audio_encoder.py).
AUDIO_ENCODER_PRESETS: dict[str, dict] = {}

# Pipeline-level defaults: resolution, block size, KV window, steps, scheduler shift.
PIPELINE_PRESETS: dict[str, dict] = {
    "paper": {"resolution": 512, "block_size": 4, "kv_window": 32, "num_inference_steps": 12, "shift": 5.0},
    "demo": {"resolution": 128, "block_size": 4, "kv_window": 32, "num_inference_steps": 12, "shift": 5.0},
    "tiny": {"resolution": 64, "block_size": 2, "kv_window": 8, "num_inference_steps": 2, "shift": 5.0},
}

PRESET_NAMES = ("paper", "demo", "tiny")


def get_preset(name: str) -> dict[str, dict]:
    """All component configs of preset `name`, as a fresh dict (safe to modify)."""
    if name not in PRESET_NAMES:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}.")
    return copy.deepcopy(
        {
            "vae": VAE_PRESETS.get(name, {}),
            "transformer": TRANSFORMER_PRESETS.get(name, {}),
            "audio_encoder": AUDIO_ENCODER_PRESETS.get(name, {}),
            "pipeline": PIPELINE_PRESETS[name],
        }
    )
