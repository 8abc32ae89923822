"""Regenerate the Space's example portraits and speech clips from the synthetic corpus (nothing downloaded).

    python assets/examples/make_examples.py

Held-out ("eval" split) identities and voices, so the examples are not training clips. Each example is a PNG portrait
(the clip's frame with the mouth most closed, rendered at 256 px and shrunk to the bundled model's 128 px as the
pipeline would: a square at the model's size is taken as framed, not searched for a face, `portrait_rt.faces`) and a
16 kHz mono wav of the clip's speech.
"""

from __future__ import annotations

from pathlib import Path

import soundfile as sf
from PIL import Image

from portrait_rt.data.synthetic import render_clip

HERE = Path(__file__).parent
MODEL_PX = 128  # the bundled model's resolution
EXAMPLES = {"portrait_a": (1, 3.0), "portrait_b": (2, 2.0), "portrait_c": (3, 4.0)}  # name -> (seed, seconds)

if __name__ == "__main__":
    for name, (seed, seconds) in EXAMPLES.items():
        clip = render_clip(seed, resolution=256, duration=seconds, split="eval")
        still = int(clip.meta["mouth_open"].argmin())
        portrait = Image.fromarray(clip.frames[still]).resize((MODEL_PX, MODEL_PX), Image.Resampling.LANCZOS)
        portrait.save(HERE / f"{name}.png", optimize=True)
        sf.write(HERE / f"speech_{name[-1]}.wav", clip.audio, clip.sample_rate, subtype="PCM_16")
        print(name, clip.frames.shape, clip.meta["speech"]["voice"])
