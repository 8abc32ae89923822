"""The page's words and styles that are not widgets: the intro, and CSS for crisp video and the phone layout.

The model's 128 px video is shown at a whole multiple of its size with `image-rendering: pixelated`: a browser's smooth
scaling to an arbitrary width (it was ~600 px) made it look blurrier than it is.
"""

from __future__ import annotations

INTRO = (
    "# portrait-rt: real-time talking portraits\n"
    "A portrait and speech in, a talking video out, made block by block as fast as you speak.\n\n"
    "**New here?** Press **▶ Try the example** to see what the bundled model makes of a cartoon portrait and a "
    "speech clip. Then upload your own portrait as Reference 1 and press **Talk** (Live) or upload speech and press "
    "**Generate** (File). The bundled model is small and knows synthetic cartoons only (*About this model*, at the "
    "bottom, says what it does well and what it does not)."
)

PHONE_MAX_PX = 640  # the width below which the page uses the phone layout


def crisp_size(resolution: int, target: int) -> int:
    """The largest whole multiple of `resolution` not above `target` (at least the native size)."""
    return resolution * max(1, target // resolution)


def page_css(resolution: int) -> str:
    """CSS for `launch(css=...)`: videos at whole multiples of the model's `resolution`, phone layout below 640 px."""
    big, small, phone, phone_small = (crisp_size(resolution, px) for px in (384, 256, 320, 160))
    return f"""
.crisp video {{ image-rendering: pixelated; width: {big}px !important; height: {big}px !important;
    max-width: none; object-fit: contain; margin: 0 auto; display: block; }}
.crisp-small video {{ image-rendering: pixelated; width: {small}px !important; height: {small}px !important;
    max-width: none; object-fit: contain; margin: 0 auto; display: block; }}
#intro-preview img {{ object-fit: contain; }}
@media (max-width: {PHONE_MAX_PX}px) {{
    .crisp video {{ width: {phone}px !important; height: {phone}px !important; }}
    .crisp-small video {{ width: {phone_small}px !important; height: {phone_small}px !important; }}
    #refs > * {{ min-width: 0 !important; }}
    #intro h1 {{ font-size: 1.4rem; }}
}}
"""
