"""portrait-rt: real-time streaming audio-driven talking-portrait video.

from portrait_rt import PortraitRTPipeline, CausalVideoVAE, FlowDiT
pipe = load_pipeline("assets/portrait-rt-demo")   # also from portrait_rt: a folder, a Hub id or preset:NAME
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "PortraitRTPipeline": "portrait_rt.pipeline",
    "PortraitRTPipelineOutput": "portrait_rt.pipeline",
    "StreamSettings": "portrait_rt.streaming",
    "CausalVideoVAE": "portrait_rt.models.vae",
    "FlowDiT": "portrait_rt.models.transformer",
    "AudioEncoder": "portrait_rt.models.audio_encoder",
    "PretrainedAudioEncoder": "portrait_rt.models.pretrained_audio_encoder",
    "load_pipeline": "portrait_rt.loading",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    # Lazy so that `import portrait_rt` (and the CLI's --help) stays fast and does not import torch/diffusers.
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'portrait_rt' has no attribute {name!r}")
