"""CausalVideoVAE from portrait-rt 0.1.0, for diffusers' `trust_remote_code=True`.

Written by `python -m portrait_rt export`: the library's modules beside this file, with their imports made
relative. diffusers copies only the modules a remote-code file imports itself, so it imports them all.
"""

from .constants import __name__ as _  # noqa: F401
from .vae_blocks import __name__ as _  # noqa: F401
from .vae import CausalVideoVAE  # noqa: F401
