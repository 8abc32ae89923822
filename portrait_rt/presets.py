"""Named configurations: `paper` (the paper's sizes, 512²), `demo` (the bundled CPU model), `tiny` (tests).

Each preset is a dict of JSON-friendly config values per pipeline component, passed straight to the component's
`@register_to_config` constructor. `PortraitRTPipeline.from_preset(name)` builds a randomly initialised pipeline
from them.
"""

from __future__ import annotations

import copy

from portrait_rt.constants import SCHEDULER_SHIFT

# CausalVideoVAE configs (portrait_rt/models/vae.py).
VAE_PRESETS: dict[str, dict] = {
    # Paper sizes (§4.1, supplementary): 8 ResBlocks in E1 (2 per stage), E2 = 2 x (ResBlock + down), C_f = 1024,
    # Dref 6 x 16 heads x 64. Widths fitted to encoder 497M / decoder 406M (measured: 496.3M / 416.8M).
    "paper": {
        "resolution": 512,
        "block_out_channels": [128, 256, 512, 1024],
        "feature_channels": 1024,
        "latent_block_out_channels": [2048, 2048],
        "layers_per_block": 2,
        "latent_layers_per_block": 1,
        "decoder_block_out_channels": [128, 256, 512, 512],
        "decoder_latent_block_out_channels": [512, 256],
        "decoder_layers_per_block": 2,
        "ref_num_layers": 6,
        "ref_num_attention_heads": 16,
        "ref_attention_head_dim": 64,
    },
    # The bundled CPU demo at 128² (assets/portrait-rt-demo): 8 channels and no ResBlocks at H and H/2 (decode speed),
    # the width and the ResBlocks at H/4..H/16 where they are cheap; narrow enough to train on a shared 2-core CPU.
    # Not in the paper: the reference warp (`ReferenceWarp`; Dref's 8 x 8 grid at H/16 is coarser than an eye).
    "demo": {
        "resolution": 128,
        "block_out_channels": [8, 16, 32, 64],
        "feature_channels": 64,
        "latent_block_out_channels": [64, 64],
        "layers_per_block": [0, 0, 1, 1],
        "latent_layers_per_block": 1,
        "decoder_block_out_channels": [8, 16, 32, 64],
        "decoder_latent_block_out_channels": [64, 64],
        "decoder_layers_per_block": [0, 0, 1, 2],
        "ref_num_layers": 2,
        "ref_num_attention_heads": 2,
        "ref_attention_head_dim": 32,
        "ref_warp_channels": 32,
    },
    # Tests: 64², a few thousand parameters per stage.
    "tiny": {
        "resolution": 64,
        "block_out_channels": [8, 8, 16, 16],
        "feature_channels": 16,
        "latent_block_out_channels": [16, 16],
        "layers_per_block": [0, 1, 0, 1],
        "latent_layers_per_block": 0,
        "decoder_layers_per_block": [0, 1, 0, 1],
        "ref_num_layers": 1,
        "ref_num_attention_heads": 2,
        "ref_attention_head_dim": 8,
        "ref_warp_channels": 8,
    },
}

# FlowDiT configs (portrait_rt/models/transformer.py).
TRANSFORMER_PRESETS: dict[str, dict] = {
    # §4.1: 24 blocks, 12 heads x 128 (D = 1536); ffn_dim chosen so G has ~1.0B parameters (supplementary).
    "paper": {
        "audio_dim": 768, "audio_embed_dim": 128, "num_layers": 24, "num_attention_heads": 12,
        "attention_head_dim": 128, "ffn_dim": 10240, "freq_dim": 256, "block_size": 4, "kv_window": 32,
    },
    # CPU real time at 128² (2x2 latent pixels): 12 steps x 3 CFG rows + the t=0 pass in ~0.12 s on 2 cores. KV
    # window 16 latent frames (the bundled demo; a quarter of the training attention cost of the paper's 32).
    "demo": {
        "audio_dim": 128, "audio_embed_dim": 32, "num_layers": 4, "num_attention_heads": 4,
        "attention_head_dim": 64, "ffn_dim": 1024, "freq_dim": 128, "block_size": 4, "kv_window": 16,
    },
    "tiny": {
        "audio_dim": 8, "audio_embed_dim": 8, "num_layers": 2, "num_attention_heads": 2,
        "attention_head_dim": 12, "ffn_dim": 48, "freq_dim": 32, "block_size": 2, "kv_window": 8,
        "rope_max_seq_len": 64,
    },
}  # fmt: skip

# Built-in audio encoder configs (portrait_rt/models/audio_encoder.py).
AUDIO_ENCODER_PRESETS: dict[str, dict] = {
    # The paper uses a pretrained encoder; `paper` is the built-in stand-in at a comparable feature size.
    "paper": {"num_mel_bins": 80, "hidden_dim": 512, "num_layers": 8, "feature_dim": 768, "lookahead_frames": 2},
    "demo": {"num_mel_bins": 80, "hidden_dim": 128, "num_layers": 4, "feature_dim": 128, "lookahead_frames": 2},
    "tiny": {"num_mel_bins": 16, "hidden_dim": 16, "num_layers": 2, "feature_dim": 8, "lookahead_frames": 1},
}

# FlowMatchEulerDiscreteScheduler configs: the paper's timestep shift of 5 (§4.1). Resolution, block size and KV
# window live in the VAE and transformer configs; steps and guidance are call arguments.
SCHEDULER_PRESETS: dict[str, dict] = {name: {"shift": SCHEDULER_SHIFT} for name in ("paper", "demo", "tiny")}

PRESET_NAMES = ("paper", "demo", "tiny")
# the portrait_rt model class each model section configures (the scheduler is diffusers' FlowMatchEuler)
PRESET_CLASSES = {"vae": "CausalVideoVAE", "transformer": "FlowDiT", "audio_encoder": "AudioEncoder"}


def get_preset(name: str) -> dict[str, dict]:
    """All component configs of preset `name`, as a fresh dict (safe to modify)."""
    if name not in PRESET_NAMES:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}.")
    return copy.deepcopy(
        {
            "vae": VAE_PRESETS.get(name, {}),
            "transformer": TRANSFORMER_PRESETS.get(name, {}),
            "audio_encoder": AUDIO_ENCODER_PRESETS.get(name, {}),
            "scheduler": SCHEDULER_PRESETS[name],
        }
    )
