"""PortraitRTPipeline from portrait-rt 0.1.0, for diffusers' `trust_remote_code=True`.

Written by `python -m portrait_rt export`: the library's modules beside this file, with their imports made
relative. diffusers copies only the modules a remote-code file imports itself, so it imports them all.
"""

from .audio import __name__ as _  # noqa: F401
from .audio_encoder import __name__ as _  # noqa: F401
from .constants import __name__ as _  # noqa: F401
from .fast_path import __name__ as _  # noqa: F401
from .hub import __name__ as _  # noqa: F401
from .images import __name__ as _  # noqa: F401
from .presets import __name__ as _  # noqa: F401
from .pretrained_audio_encoder import __name__ as _  # noqa: F401
from .streaming import __name__ as _  # noqa: F401
from .transformer import __name__ as _  # noqa: F401
from .vae import __name__ as _  # noqa: F401
from .vae_blocks import __name__ as _  # noqa: F401
from .pipeline import PortraitRTPipeline  # noqa: F401
