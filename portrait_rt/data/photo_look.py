"""Photographic looks for the synthetic corpus: the cartoons' identities, motion and speech drawn as crude photographs
(`render_clip(look="photo")`; `python -m portrait_rt synth --photo-fraction 0.5` mixes both looks).

Why: the cartoons are flat illustration with the mouth interior in one reserved colour (`MOUTH_INTERIOR_RGB`), and a
decoder trained on them paints that mouth onto real photographs. This look has what photographs have and cartoons do
not:

- light: a key light from a random direction on a head-shaped surface (an ellipsoid with nose, brow ridge, eye
  sockets, cheekbones and chin) that turns with the head, ambient light, a sheen, the chin's shadow on the neck, and
  a tint of the light's colour over everything;
- texture: skin (pores, blotches, redness of cheeks and nose, stubble on some), hair as strands (curls for curly hair)
  with a sheen and a frayed edge, clothing (knit, twill, plaid, stripes, plain) with folds;
- backgrounds out of focus: crops of the sample photographs inside installed wheels (`NATURAL_IMAGES`; never
  grace_hopper, the real photograph the project measures on), rooms (a lit wall, a window, shelves, bokeh), or
  1/f noise (the spectrum of natural images);
- a camera: defocus blur, vignetting, sensor noise, JPEG at quality 35-92;
- a mouth as photographed: lips coloured from the skin (the upper one darker, a highlight on the lower), the seam
  between them, a dark cavity, upper teeth under the lip, and the tongue and lower teeth as it opens wide. No pixel
  comes within `key_distance` `KEY_MARGIN` of the reserved colour (the last step moves the few that would), so the
  colour key reads 0 on these clips and the keyed training losses reduce to plain L1 on them.

Geometry is the cartoons' (`_Painter.project`, the same face units, the same boxes), so a clip's truth (mouth opening,
head pose, boxes) means the same in both looks. Each pixel's colour is a function of its face-local coordinates
(the projection inverted per depth layer), so textures move with the head, and edges are anti-aliased from signed
distances instead of supersampling. Extra truth in the meta: `mouth_interior_area` (T,), the output pixels of the
open mouth (cavity, teeth, tongue).

Held-out data: the photographic choices are drawn from the identity seed (eval identities draw their own) and the
sample photographs are split: `EVAL_IMAGES` appear in split="eval" backgrounds only.
"""

from __future__ import annotations

import colorsys
import importlib.util
import io
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy.ndimage import gaussian_filter

from ..mouth import MOUTH_INTERIOR_RGB, key_distance
from .synthetic import Identity, _ellipse, _Painter, _Pose

KEY_MARGIN = 100.0  # no photo-look pixel is nearer the reserved mouth colour than this (`key_distance`)

# Sample photographs shipped inside wheels the project installs (gradio, with the Space): (package, path inside it).
# Faces in them (the cheetahs, the lion) are cropped small and out of focus.
NATURAL_IMAGES = {
    "cheetah": ("gradio", "media_assets/images/cheetah.jpg"),
    "cheetah2": ("gradio", "test_data/cheetah2.jpg"),
    "lion": ("gradio", "media_assets/images/lion.jpg"),
    "groot": ("gradio", "media_assets/images/groot.jpeg"),
    "tower": ("gradio", "media_assets/images/tower.jpg"),
    "cheetah1": ("gradio", "media_assets/images/cheetah1.jpg"),
}
EVAL_IMAGES = ("tower", "cheetah1")  # split="eval" only; the others split="train" only

Color = tuple[int, int, int]
_SKIN = [(247, 218, 196), (236, 194, 168), (224, 174, 140), (203, 146, 110), (176, 119, 84), (140, 92, 64)]
_SKIN += [(108, 70, 50), (80, 54, 40)]
_HAIR = [(22, 18, 17), (44, 32, 26), (72, 50, 36), (106, 74, 50), (148, 104, 66), (190, 150, 100), (222, 194, 146)]
_HAIR += [(118, 58, 32), (150, 150, 148), (212, 210, 204)]
_EYES = [(62, 40, 24), (92, 60, 32), (112, 92, 52), (72, 108, 146), (82, 112, 82), (112, 116, 122)]
_WALLS = [(214, 206, 190), (190, 196, 200), (160, 170, 160), (222, 218, 212), (120, 128, 140), (200, 180, 150)]
_WALLS += [(90, 96, 92), (170, 150, 130)]
CLOTHS = ("plain", "knit", "twill", "stripes", "plaid")
BACKGROUNDS = ("image", "room", "noise")


def look_for(seed: int, split: str, photo_fraction: float) -> str:
    """The look of clip `seed` in a corpus with `photo_fraction` of photo-look clips (stable as the fraction grows)."""
    if not 0.0 <= photo_fraction <= 1.0:
        raise ValueError(f"photo_fraction must be in [0, 1], got {photo_fraction}")
    u = np.random.default_rng([seed, 0 if split == "train" else 1, 5]).random()
    return "photo" if u < photo_fraction else "cartoon"


@cache
def _natural_image(name: str) -> np.ndarray | None:
    """A sample photograph as float32 (H, W, 3) in [0, 1], or None when its package is not installed."""
    package, rel = NATURAL_IMAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / rel
    if not path.is_file():
        return None
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


def natural_images(split: str) -> list[str]:
    """Names of the sample photographs `split` may use that are installed here."""
    names = [n for n in NATURAL_IMAGES if (n in EVAL_IMAGES) == (split == "eval")]
    return [n for n in names if _natural_image(n) is not None]


def _keep_away(c, shades=(0.4, 0.6, 0.8, 1.0)) -> Color:
    """`c` with enough green added that it stays `KEY_MARGIN` + 10 from the reserved colour in light and shadow."""
    c = [int(x) for x in c]
    while c[1] < 255 and min(key_distance(np.asarray(c, np.float32) * f) for f in shades) < KEY_MARGIN + 10:
        c[1] += 2
    return tuple(c)


def _tone(rng: np.random.Generator, c, light: float = 0.06, chroma: float = 3.0) -> Color:
    """A colour near `c`: brighter or darker by up to `light`, each channel moved a little."""
    f = 1 + rng.uniform(-light, light)
    return tuple(int(np.clip(x * f + rng.normal(0, chroma), 0, 255)) for x in c)


@dataclass
class PhotoStyle:
    """The photographic choices about one identity: colours, light, textures, background, camera."""

    skin: Color
    lips: Color
    hair: Color
    eye_color: Color
    frame_color: Color  # glasses
    cloth: str
    cloth_colors: tuple[Color, Color]
    light: tuple[float, float, float]  # direction towards the key light (x right, y down, z towards the camera)
    key: float
    ambient: float
    key_rgb: tuple[float, float, float]
    ambient_rgb: tuple[float, float, float]
    sheen: float
    stubble: float
    freckles: float
    age: float  # 0: smooth skin; up to 1: forehead lines, folds from nose to mouth, under-eye bags
    background: str
    image: str | None
    blur: float  # camera defocus, output pixels at 128 px (scaled with the resolution)
    noise: float  # sensor noise, 8-bit units
    jpeg: int
    vignette: float
    exposure: float
    seed: int

    @classmethod
    def sample(cls, identity_seed: int, split: str) -> PhotoStyle:
        rng = np.random.default_rng([identity_seed, 11])
        skin = _keep_away(_tone(rng, _SKIN[rng.integers(len(_SKIN))]))
        m = rng.uniform(0.78, 0.92)  # lips: the skin, redder and darker
        lips = _keep_away(_tone(rng, (skin[0] * 0.93 * m, skin[1] * 0.66 * m, skin[2] * 0.7 * m), 0.03))
        hair = _keep_away(_tone(rng, _HAIR[rng.integers(len(_HAIR))]))
        eye = _tone(rng, _EYES[rng.integers(len(_EYES))])
        frame = _tone(rng, [(25, 25, 28), (60, 45, 35), (150, 150, 155), (170, 140, 80)][rng.integers(4)])

        def cloth_color():
            h, s, v = rng.random(), rng.uniform(0, 0.65) ** 1.5, rng.uniform(0.12, 0.9)
            return _keep_away(tuple(round(x * 255) for x in colorsys.hsv_to_rgb(h, s, v)))

        cloth_colors = (cloth_color(), cloth_color())
        az, el = rng.uniform(-1.1, 1.1), rng.uniform(0.15, 0.8)
        light = (math.sin(az) * math.cos(el), -math.sin(el), math.cos(az) * math.cos(el))
        warm = rng.uniform(-0.08, 0.1)  # > 0: warm (tungsten), < 0: cool (daylight through a window)
        key_rgb = (1 + warm, 1.0, 1 - warm)
        ambient_rgb = tuple(float(x) for x in 1 + rng.uniform(-0.05, 0.05, 3))
        images = natural_images(split)
        background = str(rng.choice(BACKGROUNDS if images else BACKGROUNDS[1:]))
        return cls(
            skin=skin,
            lips=lips,
            hair=hair,
            eye_color=eye,
            frame_color=frame,
            cloth=str(rng.choice(CLOTHS)),
            cloth_colors=cloth_colors,
            light=light,
            key=float(rng.uniform(0.55, 0.85)),
            ambient=float(rng.uniform(0.3, 0.5)),
            key_rgb=key_rgb,
            ambient_rgb=ambient_rgb,
            sheen=float(rng.uniform(0.04, 0.2)),
            stubble=float(rng.uniform(0.2, 0.6)) if rng.random() < 0.25 else 0.0,
            freckles=float(rng.uniform(0.3, 1.0)) if rng.random() < 0.15 else 0.0,
            background=background,
            image=str(rng.choice(images)) if background == "image" else None,
            blur=float(rng.uniform(0.25, 0.9)),
            noise=float(rng.uniform(0.5, 4.0)),
            jpeg=int(rng.integers(35, 93)),
            vignette=float(rng.uniform(0.0, 0.35)),
            exposure=float(rng.uniform(0.88, 1.12)),
            seed=int(rng.integers(2**31)),
            age=float(rng.uniform(0.3, 1.0)) if rng.random() < 0.45 else 0.0,
        )

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------------------------------------------
# Textures: static per identity, on grids of face-local (or body-local) coordinates, sampled bilinearly per frame.
# ----------------------------------------------------------------------------------------------------------------
def _noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Smooth Gaussian noise of unit standard deviation (white noise blurred by `sigma` grid samples)."""
    n = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return n / (n.std() + 1e-8)


def _pink(rng: np.random.Generator, size: int, beta: float = 2.0) -> np.ndarray:
    """A `size` x `size` field with the 1/f^beta power spectrum of natural images, scaled to [0, 1]."""
    f = np.maximum(np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None]), 1 / size)
    spectrum = rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))
    field = np.real(np.fft.ifft2(spectrum * f ** (-beta / 2)))
    return ((field - field.min()) / (np.ptp(field) + 1e-8)).astype(np.float32)


@dataclass
class _Grid:
    """A texture (h, w, c) over local coordinates: `data[i, j]` sits at (u0 + j step, v0 + i step)."""

    data: np.ndarray
    u0: float
    v0: float
    step: float

    @classmethod
    def over(cls, u0, u1, v0, v1, step) -> tuple[_Grid, np.ndarray, np.ndarray]:
        """An empty grid over [u0, u1] x [v0, v1] and the coordinates of its samples."""
        uu = np.arange(u0, u1 + step, step, dtype=np.float32)
        vv = np.arange(v0, v1 + step, step, dtype=np.float32)
        v, u = np.meshgrid(vv, uu, indexing="ij")
        return cls(np.zeros((*u.shape, 0), np.float32), u0, v0, step), u, v

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Bilinear samples (..., c) at local coordinates `u`, `v` (clamped to the grid)."""
        h, w, c = self.data.shape
        x = np.clip((u - self.u0) / self.step, 0, w - 1.001)
        y = np.clip((v - self.v0) / self.step, 0, h - 1.001)
        x0, y0 = x.astype(np.int32), y.astype(np.int32)
        fx, fy = (x - x0)[..., None], (y - y0)[..., None]
        flat, i = self.data.reshape(-1, c), (y0 * w + x0).ravel()
        a, b, d, e = (np.take(flat, i + k, axis=0).reshape(*u.shape, c) for k in (0, 1, w, w + 1))
        top = a + (b - a) * fx
        bottom = d + (e - d) * fx
        return top + (bottom - top) * fy


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0, 1)
    return t * t * (3 - 2 * t)


def _ellipse_sd(u, v, cu, cv, au, av) -> np.ndarray:
    """Approximate signed distance (negative inside) to an ellipse, in the units of u and v."""
    x, y = (u - cu) / au, (v - cv) / av
    rho = np.sqrt(x * x + y * y) + 1e-6
    grad = np.sqrt((x / au) ** 2 + (y / av) ** 2) / rho + 1e-6
    return (rho - 1) / grad


def _polygon_sd(u, v, pts) -> np.ndarray:
    """Signed distance (negative inside) to a convex polygon, from its edges' lines; either winding."""
    p = np.asarray(pts, np.float32)
    area = np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1])
    if area < 0:
        p = p[::-1]
    sd = None
    for (x0, y0), (x1, y1) in zip(p, np.roll(p, -1, axis=0)):
        ex, ey = x1 - x0, y1 - y0
        d = ((u - x0) * ey - (v - y0) * ex) / (math.hypot(ex, ey) + 1e-9)
        sd = d if sd is None else np.maximum(sd, d)
    return sd


def _face_rho(u, v, ident: Identity, opening: float) -> np.ndarray:
    """The face outline's superellipse 'radius' (1 on the outline), with the jaw dropped by the opening."""
    lower = v > 0
    p = np.where(lower, ident.chin, 2.4)
    ay = np.where(lower, ident.ay * (1 + 0.1 * opening), ident.ay)
    return (np.abs(u / ident.ax) ** p + np.abs(v / ay) ** p) ** (1 / p)


class PhotoPainter(_Painter):
    """Draws one identity's frames in the photographic look (same `draw` contract as the cartoon `_Painter`)."""

    def __init__(self, ident: Identity, resolution: int, split: str = "train"):
        self.ident, self.res, self.ss, self.size = ident, resolution, 1, resolution
        self.style = st = PhotoStyle.sample(ident.seed, split)
        self.split = split
        rng = np.random.default_rng([st.seed, 1])
        self.frame_rng = np.random.default_rng([st.seed, 2])  # per-frame sensor noise, in frame order
        self.px = 1.0 / (ident.r * resolution)  # one output pixel in face units
        yy, xx = np.mgrid[0:resolution, 0:resolution].astype(np.float32) + 0.5
        self.X, self.Y = xx, yy
        step = min(0.02, self.px * 0.8)  # texture grids a little finer than the output pixels
        self.rgb = lambda c: np.asarray(c, np.float32) / 255.0
        self.L = np.asarray(st.light, np.float32)
        self._build_face(rng, step)
        self._build_hair(rng, step)
        self._build_cloth(rng, step)
        self.background = self._build_background(rng)
        r = np.sqrt(((xx / resolution - 0.5) ** 2 + (yy / resolution - 0.5) ** 2) / 0.5)
        self.vignette = (1 - st.vignette * r**2)[..., None].astype(np.float32)

    # -- static textures -----------------------------------------------------------------------------------------
    def _build_face(self, rng, step):
        """Skin albedo and surface normals of the face, ears and neck, in face units."""
        idt, st = self.ident, self.style
        grid, u, v = _Grid.over(-1.6, 1.6, -1.9, 3.2, step)
        # height field: the face's superellipse as a dome, plus nose, brow ridge, eye sockets, cheekbones, chin, lips
        rho = np.minimum(_face_rho(u, v, idt, 0.0), 1.0)
        h = 0.9 * np.sqrt(np.clip(1 - rho**2, 0, 1))
        g = np.exp
        h += 0.14 * g(-((u / 0.075) ** 2)) * _smoothstep(-0.15, 0.1, v) * (1 - _smoothstep(0.25, 0.36, v))
        h += 0.13 * g(-(u**2 + (v - 0.27) ** 2) / 0.1**2)
        h += 0.06 * g(-((np.abs(u) - 0.12) ** 2 + (v - 0.31) ** 2) / 0.07**2)
        h += 0.05 * g(-(((v + 0.24) / 0.07) ** 2)) * (1 - _smoothstep(0.5, 0.75, np.abs(u)))
        h -= 0.07 * g(-(((np.abs(u) - 0.38 * idt.ax) / 0.17) ** 2 + ((v + 0.07) / 0.12) ** 2))
        h += 0.05 * g(-(((np.abs(u) - 0.55) / 0.2) ** 2 + ((v - 0.18) / 0.14) ** 2))
        h += 0.05 * g(-((u / 0.22) ** 2 + ((v - 1.0 * idt.ay) / 0.14) ** 2))
        h += 0.04 * g(-((u / 0.33) ** 2 + ((v - 0.68) / 0.14) ** 2))
        h -= 0.03 * g(-((u / 0.3) ** 2 + ((v - 0.9) / 0.06) ** 2))  # the dip under the lower lip
        dv, du = np.gradient(h, step)
        n = np.stack([-du, -dv, np.ones_like(h)], -1)
        # outside the face (neck, ears) the normals of a cylinder around the neck
        neck_w = 0.5 * idt.ax * 1.1
        ncyl = np.stack([np.clip(u / neck_w, -0.95, 0.95), np.full_like(u, -0.1), np.zeros_like(u)], -1)
        ncyl[..., 2] = np.sqrt(1 - ncyl[..., 0] ** 2 - 0.01)
        inside = (_face_rho(u, v, idt, 0.0) < 1.02)[..., None]
        n = np.where(inside, n, ncyl)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        # albedo: the skin colour with blotches, pores, redness, under-eye shade, stubble, freckles
        base = self.rgb(st.skin)
        alb = np.broadcast_to(base, (*u.shape, 3)).copy()
        alb *= 1 + 0.04 * _noise(rng, u.shape, 0.1 / step)[..., None]  # blotches
        alb *= 1 + 0.02 * _noise(rng, u.shape, 0.03 / step)[..., None]
        alb *= 1 + 0.04 * _noise(rng, u.shape, 0.7)[..., None]  # pores: about a grid sample
        red = 0.5 * g(-(((np.abs(u) - 0.5) / 0.2) ** 2 + ((v - 0.3) / 0.18) ** 2))
        red += 0.6 * g(-((u / 0.12) ** 2 + ((v - 0.25) / 0.12) ** 2))
        alb *= 1 + np.stack([0.04 * red, -0.05 * red, -0.04 * red], -1)
        alb *= 1 - 0.1 * g(-(((np.abs(u) - 0.38 * idt.ax) / 0.16) ** 2 + ((v + 0.0) / 0.06) ** 2))[..., None]
        if st.stubble > 0:
            region = _smoothstep(0.4, 0.6, v) * (1 - _smoothstep(0.95 * idt.ay, 1.25 * idt.ay, v))
            region *= 1 - _smoothstep(0.75, 0.95, np.abs(u) / idt.ax)
            dots = np.clip(_noise(rng, u.shape, 0.6), 0, None)
            shade = st.stubble * region * (0.4 + 0.6 * dots / 2)
            beard = np.minimum(self.rgb(st.hair), base) * 0.55  # never lighter than the skin
            alb = alb * (1 - shade[..., None]) + beard * shade[..., None]
        if st.freckles > 0:
            spots = np.clip(_noise(rng, u.shape, 1.0) - 2.0, 0, None) * st.freckles
            spots *= g(-((u / 0.7) ** 2 + ((v - 0.2) / 0.35) ** 2))
            alb *= 1 - np.clip(spots, 0, 0.5)[..., None] * np.array([0.25, 0.35, 0.4], np.float32)
        if st.age > 0:
            lines = np.zeros_like(u)
            for k in range(int(rng.integers(2, 5))):  # forehead lines, wavy, fading at the temples
                vl = -0.42 - 0.085 * k + 0.02 * np.sin(u * 3 + rng.uniform(0, 6))
                lines += np.exp(-(((v - vl) / 0.012) ** 2)) * (1 - _smoothstep(0.3, 0.6, np.abs(u) / idt.ax))
            for sgn in (-1, 1):  # from the nose's wings to beyond the mouth's corners
                t = np.clip((v - 0.36) / 0.42, 0, 1)
                uc = sgn * (0.16 + t * (idt.mouth_w + 0.08 - 0.16) + 0.04 * np.sin(np.pi * t))
                lines += 1.3 * np.exp(-(((u - uc) / 0.018) ** 2)) * _smoothstep(0.0, 0.15, t) * (v < 0.8)
                eye = np.exp(-(((u - sgn * 0.38 * idt.ax) / 0.15) ** 2) - ((v - 0.1) / 0.025) ** 2)
                lines += 0.8 * eye  # the edge of an under-eye bag
            alb *= 1 - (0.2 * st.age * np.clip(lines, 0, 1.5))[..., None]
        # one grid for both: (normal x, y, z, albedo r, g, b), sampled together
        self.face_grid = _Grid(np.concatenate([n, np.clip(alb, 0, 1)], -1).astype(np.float32), grid.u0, grid.v0, step)

    def _build_hair(self, rng, step):
        """Strand (or curl) texture over the head, in face units, centred on the crown."""
        idt, st = self.ident, self.style
        grid, u, v = _Grid.over(-2.0, 2.0, -2.6, 2.4, step)
        if idt.hair_style == "curly":
            blobs = _noise(rng, u.shape, 0.05 / step)
            tex = 0.75 + 0.3 * np.tanh(1.5 * blobs) + 0.1 * _noise(rng, u.shape, 0.8)
        else:
            crown = (0.25 if idt.seed % 2 else -0.25, -idt.ay - 0.15)
            theta = np.arctan2(v - crown[1], u - crown[0])
            k = 512  # strands: a 1D noise along the angle around the crown, swaying a little with the distance
            strands = _noise(rng, (k,), 1.0)
            dist = np.hypot(u - crown[0], v - crown[1])
            sway = 0.03 * _noise(rng, u.shape, 0.3 / step) + 0.02 * np.sin(dist * 6)
            idx = ((theta + sway + np.pi) / (2 * np.pi) * k).astype(np.int32) % k
            tex = 0.88 + 0.16 * strands[idx] + 0.06 * _noise(rng, u.shape, 0.1 / step)
        self.hair_tex = _Grid(tex[..., None].astype(np.float32), grid.u0, grid.v0, step)
        self.hair_edge = _Grid(_noise(rng, u.shape, 0.04 / step)[..., None], grid.u0, grid.v0, step)
        self.hair_rgb = self.rgb(st.hair)

    def _build_cloth(self, rng, step):
        """The clothing's texture in body units: a weave or pattern of two colours, with folds."""
        st = self.style
        grid, u, v = _Grid.over(-3.4, 3.4, 0.8, 5.0, step)
        c0, c1 = self.rgb(st.cloth_colors[0]), self.rgb(st.cloth_colors[1])

        def band(x, period):  # a soft 0/1 square wave, attenuated where its period nears the pixel size
            period = max(period, 4 * self.px)
            return _smoothstep(-0.3, 0.3, np.sin(2 * np.pi * x / period))

        mix = np.zeros_like(u)
        fine = 0.04 * _noise(rng, u.shape, 0.8)
        kind = st.cloth
        if kind == "knit":
            fine += 0.08 * np.sin(2 * np.pi * u / max(0.07, 4 * self.px))
        elif kind == "twill":
            fine += 0.07 * np.sin(2 * np.pi * (u + v) / max(0.05, 4 * self.px))
        elif kind == "stripes":
            mix = band(v + 0.02 * u, rng.uniform(0.15, 0.4))
        elif kind == "plaid":
            p = rng.uniform(0.25, 0.6)
            mix = 0.5 * band(u, p) + 0.5 * band(v, p * rng.uniform(0.8, 1.2))
        color = c0 * (1 - mix[..., None]) + c1 * mix[..., None]
        folds = 1 + 0.09 * _noise(rng, u.shape, 0.18 / step) + 0.05 * _noise(rng, u.shape, 0.05 / step)
        tex = color * (folds + fine)[..., None]
        self.cloth_tex = _Grid(np.clip(tex, 0, 1).astype(np.float32), grid.u0, grid.v0, step)

    def _build_background(self, rng) -> np.ndarray:
        """The static background at the output size, float32 (H, W, 3) in [0, 1], out of focus."""
        st, res = self.style, self.res
        yy, xx = self.Y / res, self.X / res
        if st.background == "image":
            src = _natural_image(st.image)
            h, w = src.shape[:2]
            side = int(min(h, w) * rng.uniform(0.3, 0.7))
            y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = Image.fromarray((src[y0 : y0 + side, x0 : x0 + side] * 255).astype(np.uint8))
            img = np.asarray(crop.resize((res, res), Image.BICUBIC), np.float32) / 255.0
            if rng.random() < 0.5:
                img = img[:, ::-1]
            img = img * rng.uniform(0.8, 1.15, 3).astype(np.float32)
            gray = img.mean(-1, keepdims=True)
            img = gray + (img - gray) * rng.uniform(0.5, 1.1)
        elif st.background == "room":
            wall = self.rgb(_tone(rng, _WALLS[rng.integers(len(_WALLS))], 0.1, 6))
            lit = 1 + 0.25 * self.L[0] * (xx - 0.5) * 2 - 0.1 * (yy - 0.5)
            img = wall[None, None] * lit[..., None] * (1 + 0.04 * (_pink(rng, res) - 0.5))[..., None]
            for _ in range(int(rng.integers(0, 4))):  # a window (bright), a door frame, a shelf (darker)
                x0, x1 = np.sort(rng.uniform(-0.1, 1.1, 2))
                y0, y1 = np.sort(rng.uniform(-0.1, 1.0, 2))
                m = ((xx > x0) & (xx < x1) & (yy > y0) & (yy < y1)).astype(np.float32)
                window = rng.random() < 0.4
                c = self.rgb(_tone(rng, (235, 240, 250), 0.05, 6)) if window else wall * rng.uniform(0.4, 0.8)
                img = img * (1 - m[..., None]) + c * m[..., None]
            for _ in range(int(rng.integers(0, 9))):  # bokeh: out-of-focus lights
                cx, cy, rad = rng.uniform(0, 1), rng.uniform(0, 0.7), rng.uniform(0.02, 0.07)
                m = _smoothstep(rad, rad * 0.8, np.hypot(xx - cx, yy - cy))
                img = img + (m * rng.uniform(0.15, 0.5))[..., None] * self.rgb((255, 225, 170))
        else:
            a, b = _pink(rng, res), _pink(rng, res)
            c0, c1, c2 = (self.rgb(_tone(rng, c, 0.25, 15)) for c in ((70, 95, 55), (140, 150, 110), (170, 195, 215)))
            img = c0 + (c1 - c0) * a[..., None]
            sky = _smoothstep(0.3 + 0.3 * rng.random(), 0.1, yy + 0.2 * (b - 0.5))
            img = img * (1 - sky[..., None]) + c2 * sky[..., None]
        sigma = res * rng.uniform(0.006, 0.03)  # depth of field
        img = gaussian_filter(np.clip(img, 0, 1).astype(np.float32), (sigma, sigma, 0))
        return img.astype(np.float32)

    # -- per frame -----------------------------------------------------------------------------------------------
    def _local(self, win, z: float, pose: _Pose) -> tuple[np.ndarray, np.ndarray]:
        """Face-local coordinates (u, v) at depth `z` of the output pixels in window `win`: `project` inverted."""
        idt = self.ident
        x = (self.X[win] / self.size - idt.cx - pose.tx) / idt.r
        y = (self.Y[win] / self.size - idt.cy - pose.ty) / idt.r
        pv = 1.6
        c, s = math.cos(pose.roll), math.sin(pose.roll)
        u = x * c + (y - pv) * s
        v = -x * s + (y - pv) * c + pv
        return u - z * math.sin(pose.yaw), v - z * math.sin(pose.pitch)

    def _window(self, pts, margin: int = 3):
        p = np.asarray(pts, np.float32).reshape(-1, 2)
        x0, y0 = np.floor(p.min(0)).astype(int) - margin
        x1, y1 = np.ceil(p.max(0)).astype(int) + margin
        r = self.res
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(r, x1), min(r, y1)
        if x1 <= x0 or y1 <= y0:
            return None
        return (slice(y0, y1), slice(x0, x1))

    def _cover(self, sd: np.ndarray, soft: float = 1.0) -> np.ndarray:
        """Coverage in [0, 1] of a pixel from the signed distance (face units) of its centre: a `soft`-pixel ramp."""
        return np.clip(0.5 - sd / (self.px * soft), 0, 1)

    @staticmethod
    def _over(img, win, alpha, rgb):
        a = alpha[..., None]
        img[win] = img[win] * (1 - a) + rgb * a

    def _lit(self, normals: np.ndarray, pose: _Pose, shine: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(light colour reaching each surface point (..., 3), specular (..., 1)) for face-local `normals`."""
        st = self.style
        nx, ny, nz = normals[..., 0], normals[..., 1], normals[..., 2]
        cy, sy = math.cos(pose.yaw), math.sin(pose.yaw)
        nx, nz = nx * cy + nz * sy, -nx * sy + nz * cy
        cp, sp = math.cos(pose.pitch), math.sin(pose.pitch)
        ny, nz = ny * cp + nz * sp, -ny * sp + nz * cp
        cr, sr = math.cos(pose.roll), math.sin(pose.roll)
        nx, ny = nx * cr - ny * sr, nx * sr + ny * cr
        L = self.L
        lam = np.clip(nx * L[0] + ny * L[1] + nz * L[2], 0, None)
        light = st.ambient * np.asarray(st.ambient_rgb, np.float32) + st.key * lam[..., None] * np.asarray(
            st.key_rgb, np.float32
        )
        half = L + np.array([0, 0, 1], np.float32)
        half /= np.linalg.norm(half)
        spec = np.clip(nx * half[0] + ny * half[1] + nz * half[2], 0, 1) ** 24 * shine
        return light, spec[..., None]

    def draw(
        self, pose: _Pose, opening: float, spread: float, blink: float, gaze, brow: float, breath: float, swing: float
    ) -> tuple[np.ndarray, dict]:
        """Render one frame (uint8 (H, W, 3)), its boxes and the open mouth's area (`boxes["mouth_interior"]`)."""
        idt, st = self.ident, self.style
        img = self.background.copy()
        boxes = {}
        self._track = None
        skin_light = None

        # 1. hair behind the head (long, bob): hidden below the shoulders
        if idt.hair_style in ("long", "bob"):
            bottom = 2.0 if idt.hair_style == "long" else 1.1
            hu, hv = _ellipse(0, -0.2, idt.ax * 1.22, idt.ay * 1.08, n=40, a0=np.pi, a1=2 * np.pi)
            pts = self.project(np.r_[hu, idt.ax * 1.22, -idt.ax * 1.22], np.r_[hv, bottom, bottom], -0.2, pose)
            win = self._window(pts)
            if win is not None:
                u, v = self._local(win, -0.2, pose)
                au, av = idt.ax * 1.22, idt.ay * 1.08
                sd = np.where(v < -0.2, _ellipse_sd(u, v, 0, -0.2, au, av), np.abs(u) - au)
                sd = np.maximum(sd, v - bottom)
                self._hair(img, win, u, v, sd, pose, shade=0.8)

        # 2. neck, then the torso over its base (the body follows the head's translation by half, and breathes)
        self._begin_box()
        top, w = 1.45, idt.shoulders * (1 + 0.01 * breath)
        neck_w = 0.5 * idt.ax
        pts = self.project([-neck_w, neck_w, neck_w, -neck_w], [0.5, 0.5, top + 0.7, top + 0.7], 0, pose)
        win = self._window(pts)
        if win is not None:
            u, v = self._local(win, 0, pose)
            sd = np.maximum(np.abs(u) - neck_w, 0.5 - v)
            chin = idt.ay * (1 + 0.1 * opening)
            shadow = 0.45 + 0.4 * _smoothstep(chin - 0.1, chin + 0.45, v + 0.25 * np.abs(u))
            skin = self.face_grid(u, v)
            light, _ = self._lit(skin[..., :3], pose)
            rgb = skin[..., 3:] * 0.92 * light * shadow[..., None]
            self._over(img, win, self._cover(sd), rgb)
        body = _Pose(0.0, 0.0, 0.0, pose.tx * 0.5, pose.ty * 0.5 + breath * 0.004)
        u_, v_ = _ellipse(0, top + 2.2, w, 2.2, n=60, a0=np.pi, a1=2 * np.pi)
        win = self._window(self.project(np.r_[u_, w, -w], np.r_[v_, 8, 8], 0, body))
        if win is not None:
            u, v = self._local(win, 0, body)
            x = np.abs(u) / w  # shoulders: flat by the neck, sloping out, rounding down to the arms
            bend = np.clip(x - 0.75, 0, None)
            shoulder = top + 0.05 + 0.45 * x**2 + 10.0 * bend**2
            slope = (0.9 * x + 20.0 * bend) / w
            sd = np.maximum((shoulder - v) / np.sqrt(1 + slope**2), x * w - w)
            alpha = self._cover(sd)
            if idt.neckline == "v":  # the neck's skin shows through the neckline
                alpha = alpha * (
                    1 - self._cover(_polygon_sd(u, v, [(-0.45, top - 0.1), (0, top + 0.55), (0.45, top - 0.1)]))
                )
            elif idt.neckline == "round":
                alpha = alpha * (1 - self._cover(_ellipse_sd(u, v, 0, top - 0.02, 0.48, 0.24)))
            nrm = np.stack([np.clip(u / (w * 1.1), -0.95, 0.95), -0.6 * _smoothstep(top + 0.6, top, v), 0 * u], -1)
            nrm[..., 2] = np.sqrt(np.clip(1 - nrm[..., 0] ** 2 - nrm[..., 1] ** 2, 0.02, 1))
            light, _ = self._lit(nrm, _Pose(0, 0, 0, 0, 0))
            rgb = self.cloth_tex(u, v) * light
            if idt.neckline == "collar":  # a collar: the second colour, its shadow under it
                for sgn in (-1, 1):
                    tri = [(0, top + 0.25), (sgn * 0.55, top - 0.12), (sgn * 0.45, top + 0.35)]
                    a = self._cover(_polygon_sd(u, v, tri))[..., None]
                    rgb = rgb * (1 - a) + self.rgb(st.cloth_colors[1]) * 1.05 * light * a
            rgb *= 1 - 0.35 * _smoothstep(top + 0.35, top - 0.05, v)[..., None] * (np.abs(u) < 0.7)[..., None]
            self._over(img, win, alpha, rgb)
        self.project(np.r_[u_, w, -w], np.r_[v_, 8, 8], 0, body)  # the torso box: the cartoon's outline
        boxes["torso"] = self._end_box()

        # 3. the head: ears, hair, face, fringe, features
        self._begin_box()
        for sgn in (-1, 1):
            cu = sgn * idt.ax * 0.98
            pts = self.project(*_ellipse(cu, 0.05, 0.16, 0.26, n=20), -0.3, pose)
            win = self._window(pts)
            if win is None:
                continue
            u, v = self._local(win, -0.3, pose)
            sd = _ellipse_sd(u, v, cu, 0.05, 0.16, 0.26)
            inner = _smoothstep(-0.02, -0.09, sd) * 0.35
            skin = self.face_grid(u, v)
            light, _ = self._lit(self.face_grid(u * 0 + cu * 1.05, v)[..., :3], pose)
            rgb = skin[..., 3:] * np.array([1.0, 0.93, 0.9], np.float32) * light * (1 - inner[..., None])
            self._over(img, win, self._cover(sd), rgb)
        if idt.hair_style not in ("bald", "long", "bob"):
            self._cap(img, pose)
        if idt.hair_style == "bun":
            pts = self.project(*_ellipse(0, -idt.ay - 0.25, 0.38, 0.32, n=28), -0.1, pose)
            win = self._window(pts)
            if win is not None:
                u, v = self._local(win, -0.1, pose)
                self._hair(img, win, u, v, _ellipse_sd(u, v, 0, -idt.ay - 0.25, 0.38, 0.32), pose)

        # the face: superellipse, lower half stretched as the jaw drops (the cartoon's outline, for the face box)
        a = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        ca, sa = np.cos(a), np.sin(a)
        p = np.where(sa > 0, idt.chin, 2.4)
        fu = idt.ax * np.sign(ca) * np.abs(ca) ** (2 / p)
        fv = idt.ay * np.sign(sa) * np.abs(sa) ** (2 / p) * np.where(sa > 0, 1 + 0.1 * opening, 1.0)
        fb = np.asarray(self.project(fu, fv, 0, pose))
        win = self._window(fb)
        if win is not None:
            u, v = self._local(win, 0, pose)
            rho = _face_rho(u, v, idt, opening)
            sd = (rho - 1) * np.hypot(u, v) / (rho + 1e-6)
            skin = self.face_grid(u, v * np.where(v > 0, 1 / (1 + 0.1 * opening), 1))  # the skin follows the jaw
            alb = skin[..., 3:]
            light, spec = self._lit(skin[..., :3], pose, shine=st.sheen)
            oily = 0.4 + 0.6 * np.exp(-((u / 0.15) ** 2)) * (v < 0.35)  # forehead and nose shine most
            rgb = alb * light + spec * oily[..., None]
            # nose: the nostrils and the tip's shadow below it, on the side away from the light
            nd = np.minimum(
                _ellipse_sd(u, v, -0.085, 0.335, 0.045, 0.022), _ellipse_sd(u, v, 0.085, 0.335, 0.045, 0.022)
            )
            rgb *= 1 - 0.55 * self._cover(nd, 2.0)[..., None]
            rgb *= 1 - 0.2 * np.exp(-(((u + 0.12 * self.L[0]) / 0.14) ** 2 + ((v - 0.4) / 0.05) ** 2))[..., None]
            self._over(img, win, self._cover(sd), rgb)
            skin_light = float(np.median(light[..., 1]))
        if idt.hair_style in ("short", "long", "bob", "bun"):
            self._fringe(img, pose)

        # eyes (blink closes them), brows
        for sgn in (-1, 1):
            self._eye(img, pose, sgn, blink, gaze)
            self._brow(img, pose, sgn, brow)

        # 4. the mouth
        mouth_area, mb = self._mouth(img, pose, opening, spread, skin_light or 1.0)

        # 5. accessories: glasses, earrings (swinging)
        if idt.glasses is not None:
            self._glasses(img, pose)
        if idt.earrings is not None:
            for sgn in (-1, 1):
                lu, lv = sgn * idt.ax * 1.0, 0.3
                eu, ev = lu + 0.3 * math.sin(swing), lv + 0.3 * math.cos(swing)
                pts = self.project([lu, eu, eu + 0.1, eu - 0.1], [lv, ev + 0.18, ev, ev], -0.3, pose)
                win = self._window(pts)
                if win is None:
                    continue
                u, v = self._local(win, -0.3, pose)
                t = np.clip(((u - lu) * (eu - lu) + (v - lv) * (ev - lv)) / (0.09 + 1e-6), 0, 1)
                chain = np.hypot(u - lu - t * (eu - lu), v - lv - t * (ev - lv)) - 0.012
                drop = _ellipse_sd(u, v, eu, ev + 0.06, 0.07, 0.09)
                shine = 0.6 + 0.6 * _smoothstep(0.1, -0.08, (u - eu) + (v - ev - 0.06))
                self._over(img, win, self._cover(np.minimum(chain, drop)), self.rgb(idt.earrings) * shine[..., None])
        head = self._end_box()

        # 6. the camera: exposure, vignetting, defocus, sensor noise, JPEG; then away from the reserved colour
        frame = self._camera(img)
        boxes["face"] = [float(np.clip(x, 0, self.res)) for x in (*fb.min(0), *fb.max(0))]
        boxes["mouth"] = [float(np.clip(x, 0, self.res)) for x in (*mb.min(0), *mb.max(0))]
        t = boxes["torso"]
        boxes["head"] = head
        boxes["body"] = [min(t[0], head[0]), min(t[1], head[1]), max(t[2], head[2]), max(t[3], head[3])]
        boxes["mouth_interior"] = mouth_area
        return frame, boxes

    # -- parts -----------------------------------------------------------------------------------------------------
    def _hair(self, img, win, u, v, sd, pose, shade: float = 1.0):
        """Hair over the region `sd` < 0: strands, the head's shading, a sheen, a frayed edge."""
        idt = self.ident
        fray = 0.04 * self.hair_edge(u, v)[..., 0]
        alpha = self._cover(sd + fray, 1.5)
        nx = np.clip(u / (idt.ax * 1.25), -0.97, 0.97)
        ny = np.clip((v + 0.3) / (idt.ay * 1.25), -0.97, 0.97)
        nrm = np.stack([nx, ny, np.sqrt(np.clip(1 - nx**2 - ny**2, 0.03, 1))], -1)
        light, spec = self._lit(nrm, pose, shine=0.35)
        tex = self.hair_tex(u, v)
        rgb = self.hair_rgb * tex * light * shade + spec * tex * 0.5
        self._over(img, win, alpha, rgb)

    def _cap(self, img, pose):
        """Short, bun, curly and spiky hair: a cap over the top of the head (bumpy for curls, pointed for spikes)."""
        idt = self.ident
        au, av = idt.ax * 1.1, idt.ay * 0.95
        grow = {"curly": 1.22, "spiky": 1.4}.get(idt.hair_style, 1.0)
        hu, hv = _ellipse(0, -0.25, au * grow, av * grow, n=48, a0=np.pi * 0.95, a1=np.pi * 2.05)
        win = self._window(self.project(hu, hv, -0.05, pose))
        if win is None:
            return
        u, v = self._local(win, -0.05, pose)
        theta = np.arctan2(v + 0.25, u)
        scale = np.ones_like(u)
        if idt.hair_style == "curly":
            scale = 1.08 + 0.1 * np.abs(np.sin(theta * 5.5))
        elif idt.hair_style == "spiky":
            scale = 1.05 + 0.3 * (1 - np.abs(((theta * 7 / np.pi) % 2) - 1)) * (theta < -0.2)
        sd = _ellipse_sd(u, v, 0, -0.25, au * scale, av * scale)
        sd = np.maximum(sd, v + 0.25 - 0.3 * av)  # the cap ends a little below the ellipse's centre
        self._hair(img, win, u, v, sd, pose)

    def _fringe(self, img, pose):
        """The hairline over the forehead: lower at the temples, swept to one side."""
        idt = self.ident
        side = 0.3 if (idt.seed % 2) else -0.3
        hu, hv = _ellipse(0, -0.55, idt.ax * 1.02, 0.72, n=40, a0=np.pi, a1=2 * np.pi)
        win = self._window(self.project(hu, np.minimum(hv, -0.1), 0.02, pose))
        if win is None:
            return
        u, v = self._local(win, 0.02, pose)
        hairline = -0.62 + 0.3 * (u / idt.ax) ** 2 + 0.1 * np.tanh((u - side) * 4) * np.sign(side)
        if idt.hair_style in ("long", "bob"):
            hairline = hairline + 0.12
        sd = np.maximum(v - hairline, _ellipse_sd(u, v, 0, -0.25, idt.ax * 1.1, idt.ay * 0.95))
        self._hair(img, win, u, v, sd, pose)

    def _eye(self, img, pose, sgn, blink, gaze):
        idt, st = self.ident, self.style
        cu, cv = sgn * 0.38 * idt.ax, -0.08
        ew, eh = idt.eye_w, max(0.85 * idt.eye_h * (1 - 0.95 * blink), 1e-3)  # narrower than the cartoon's
        win = self._window(self.project([cu - ew * 1.3, cu + ew * 1.3], [cv - 0.25, cv + 0.2], 0.5, pose))
        if win is None:
            return
        u, v = self._local(win, 0.5, pose)
        s = np.clip((u - cu) / ew, -1, 1)
        bulge = np.clip(1 - s * s, 0, 1)
        top = cv - eh * bulge**0.6 + 0.2 * eh * s * sgn * 0.3
        bot = cv + 0.75 * eh * bulge**0.8
        sd = np.maximum.reduce([top - v, v - bot, np.abs(u - cu) - ew])
        alpha = self._cover(sd)
        light, _ = self._lit(self.face_grid(u, v)[..., :3], pose)
        lum = light.mean(-1, keepdims=True)
        sclera = self.rgb((212, 200, 192)) * (0.7 + 0.3 * bulge[..., None]) * lum
        sclera *= 1 - 0.4 * np.exp(-(v - top) / (0.35 * eh + 1e-3))[..., None]  # the upper lid's shadow
        ic_u, ic_v = cu + gaze[0] * ew * 0.5, cv + gaze[1] * eh * 0.3
        ri = 0.095  # about the opening's height: the lids cover its top and bottom
        d = np.hypot(u - ic_u, v - ic_v)
        ang = np.arctan2(v - ic_v, u - ic_u)
        fibres = 1 + 0.12 * np.sin(ang * 23 + 3 * d / ri) * (d > 0.4 * ri)
        iris = self.rgb(st.eye_color) * (0.65 + 0.45 * d / ri)[..., None] * fibres[..., None]
        iris *= 1 - 0.55 * _smoothstep(0.7 * ri, ri, d)[..., None]
        iris = np.where((d < 0.4 * ri)[..., None], self.rgb((14, 12, 12)), iris) * lum * 1.1
        lx, ly = ic_u + 0.35 * ri * np.sign(self.L[0] + 1e-3), ic_v - 0.35 * ri
        glint = _smoothstep(0.22 * ri, 0.1 * ri, np.hypot(u - lx, v - ly))[..., None]
        a_iris = self._cover(d - ri)[..., None]
        rgb = sclera * (1 - a_iris) + iris * a_iris
        rgb = rgb * (1 - glint * 0.85) + glint * 0.85
        self._over(img, win, alpha, rgb)
        # lashes along the upper lid (thicker at the outer corner), a faint lower lid, the crease above
        lash_w = 0.018 + 0.012 * np.clip(s * sgn, 0, 1)
        d_top = np.maximum(np.abs(v - top) - lash_w, np.abs(u - cu) - ew * 1.05)
        self._over(img, win, 0.85 * self._cover(d_top), self.rgb((28, 20, 18)) * np.ones_like(u)[..., None])
        d_bot = np.maximum(np.abs(v - bot) - 0.008, np.abs(u - cu) - ew * 0.9)
        self._over(img, win, 0.25 * self._cover(d_bot), self.rgb((60, 40, 35)) * np.ones_like(u)[..., None])
        crease = np.exp(-(((v - (top - 0.07 - 0.03 * bulge)) / 0.025) ** 2)) * bulge * 0.25
        img[win] *= 1 - crease[..., None]

    def _brow(self, img, pose, sgn, brow):
        idt = self.ident
        cu, cvb = sgn * 0.38 * idt.ax, -0.08 - 0.12 - 0.05 * brow
        half = idt.eye_w * 1.25
        win = self._window(self.project([cu - half, cu + half], [cvb - 0.2, cvb + 0.05], 0.45, pose))
        if win is None:
            return
        u, v = self._local(win, 0.45, pose)
        s = (u - cu) / half
        centre = cvb - 0.1 * np.sqrt(np.clip(1 - s * s, 0, 1))
        thick = idt.brow_w * (1.1 - 0.55 * np.clip((s * sgn + 1) / 2, 0, 1))
        sd = np.maximum(np.abs(v - centre) - thick / 2, np.abs(s) * half - half * 0.95)
        hairs = 0.75 + 0.25 * self.hair_tex(u * 3, v * 3)[..., 0]
        rgb = self.hair_rgb * 0.75 * hairs[..., None]
        self._over(img, win, 0.85 * self._cover(sd, 1.5), rgb)

    def _mouth(self, img, pose, opening, spread, skin_light) -> tuple[float, np.ndarray]:
        """Lips, seam and the open mouth; returns (interior area in output pixels, the outer-lip box points)."""
        idt, st = self.ident, self.style
        mw = idt.mouth_w * (0.85 + 0.3 * spread)
        h = 0.5 * opening  # interior height, as the cartoon's
        lt = 0.09
        mid = 0.62 + h / 2  # the upper lip stays where the cartoon's is (0.62), the jaw drops
        ou, ov = _ellipse(0, mid, mw + lt, h / 2 + lt, n=40)
        mb = np.asarray(self.project(ou, ov, 0.3, pose))
        win = self._window(mb, margin=4)
        if win is None:
            return 0.0, mb
        u, v = self._local(win, 0.3, pose)
        s = u / mw
        inside = np.clip(1 - s * s, 0, 1)
        y_t = mid - (h / 2) * inside**0.7  # the opening's upper and lower edges
        y_b = mid + (h / 2) * inside**0.85
        bow = 1 - 0.35 * np.exp(-((s / 0.14) ** 2)) + 0.12 * np.exp(-(((np.abs(s) - 0.22) / 0.12) ** 2))
        lip_u = y_t - 0.085 * bow * np.clip(1 - (s / 1.08) ** 2, 0, 1) ** 0.5  # follows the opening to the corners
        lip_l = y_b + 0.11 * np.clip(1 - (s / 1.05) ** 2, 0, 1) ** 0.6
        sd_lips = np.maximum.reduce([lip_u - v, v - lip_l, np.abs(u) - 1.08 * mw])
        a_lips = self._cover(sd_lips, 1.6)
        lips = self.rgb(st.lips) * skin_light * 1.05
        upper = v < y_t + 0.002
        shade = np.where(upper, 0.8, 1.0) * (0.72 + 0.28 * inside)
        lip_rgb = lips * shade[..., None]
        lip_rgb *= 1 + 0.05 * np.sin(s * 60 + np.sin(v * 40))[..., None]  # fine vertical creases
        centre_l = (y_b + lip_l) / 2
        hi = 0.18 * np.exp(-((s / 0.4) ** 2) - ((v - centre_l + 0.015) / 0.022) ** 2) * st.key
        lip_rgb = lip_rgb + hi[..., None]
        self._over(img, win, a_lips, lip_rgb)
        # the seam where the lips meet, and the mouth's corners
        seam = np.maximum(np.abs(v - mid) - (h / 2) * inside**0.8 - 0.01, np.abs(u) - 1.02 * mw)
        self._over(img, win, 0.8 * self._cover(seam), lips * 0.35 * np.ones_like(u)[..., None])
        area = 0.0
        if h > 1e-3:
            sd_open = np.maximum.reduce([y_t - v, v - y_b, np.abs(u) - mw])
            a_open = self._cover(sd_open)
            depth = np.clip((v - y_t) / (h + 1e-6), 0, 1)
            cavity = self.rgb((62, 34, 32)) * (0.55 + 0.45 * inside[..., None]) * (0.6 + 0.4 * depth[..., None])
            teeth_h = min(0.1, 0.45 * h) * inside**0.3
            gaps = 1 - 0.25 * np.exp(-(((((s + 1) * 4.6) % 1 - 0.5) / 0.06) ** 2))
            teeth = self.rgb((232, 224, 208)) * (0.62 + 0.38 * inside[..., None]) * gaps[..., None]
            teeth *= 0.8 + 0.2 * _smoothstep(y_t, y_t + 0.4 * teeth_h + 1e-4, v)[..., None]  # the lip's shadow
            a_teeth = self._cover(np.maximum(v - (y_t + teeth_h), np.abs(s) - 0.8), 1.0)[..., None]
            rgb = cavity * (1 - a_teeth) + teeth * a_teeth
            if h > 0.06:  # the tongue, and the lower teeth when wide open
                tongue = self.rgb((178, 92, 88)) * (0.45 + 0.55 * depth[..., None])
                a_tongue = self._cover(_ellipse_sd(u, v, 0, y_b.max() + 0.02, 0.62 * mw, 0.42 * h), 2.0)[..., None]
                rgb = rgb * (1 - a_tongue) + tongue * a_tongue
                low_h = float(np.clip((h - 0.12) * 0.35, 0, 0.05))
                if low_h > 0:
                    a_low = self._cover(np.maximum((y_b - low_h) - v, np.abs(s) - 0.6))[..., None]
                    rgb = rgb * (1 - a_low) + teeth * 0.75 * a_low
            self._over(img, win, a_open, rgb * skin_light)
            area = float(a_open.sum())
        return area, mb

    def _glasses(self, img, pose):
        idt, st = self.ident, self.style
        win = self._window(self.project([-0.38 * idt.ax - 0.35, 0.38 * idt.ax + 0.35], [-0.35, 0.2], 0.55, pose))
        if win is None:
            return
        u, v = self._local(win, 0.55, pose)
        ring = np.minimum(
            np.abs(_ellipse_sd(u, v, -0.38 * idt.ax, -0.08, 0.3, 0.22)),
            np.abs(_ellipse_sd(u, v, 0.38 * idt.ax, -0.08, 0.3, 0.22)),
        )
        bridge = np.maximum(np.abs(v + 0.12) - 0.02, np.abs(u) - (0.38 * idt.ax - 0.3))
        d = np.minimum(ring - 0.022, bridge)
        frame = self.rgb(st.frame_color) * (0.8 + 0.4 * _smoothstep(0.0, -0.2, v + 0.08))[..., None]
        self._over(img, win, self._cover(d), frame)
        lens = np.minimum(
            _ellipse_sd(u, v, -0.38 * idt.ax, -0.08, 0.3, 0.22), _ellipse_sd(u, v, 0.38 * idt.ax, -0.08, 0.3, 0.22)
        )
        glare = 0.1 * np.exp(-((((u - v * 0.8) % 0.5 - 0.25) / 0.06) ** 2))
        self._over(img, win, self._cover(lens) * glare, np.ones((*u.shape, 3), np.float32))

    def _camera(self, img: np.ndarray) -> np.ndarray:
        st = self.style
        img = np.clip(img * (st.exposure * 255) * self.vignette + 0.5, 0, 255).astype(np.uint8)
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(st.blur * self.res / 128)), np.float32)
        rng = self.frame_rng
        noise = 0.5 * rng.standard_normal(img.shape, np.float32) + rng.standard_normal((*img.shape[:2], 1), np.float32)
        img += noise * st.noise * (0.6 + 0.6 * np.sqrt(img.mean(-1, keepdims=True) / 255))  # mostly luminance
        buf = io.BytesIO()
        Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=st.jpeg)
        frame = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        return away_from_key(frame)


def away_from_key(frame: np.ndarray, margin: float = KEY_MARGIN) -> np.ndarray:
    """`frame` (..., 3) uint8 with every pixel nearer than `margin` to the reserved colour pushed out to `margin`."""
    d = key_distance(frame)
    near = d < margin
    if not near.any():
        return frame
    out = frame.copy()
    px = frame[near].astype(np.float32) - np.asarray(MOUTH_INTERIOR_RGB, np.float32)
    green = np.sqrt(np.clip(margin**2 - px[:, 0] ** 2 - px[:, 2] ** 2, 0, None)) / 2  # the key counts green double
    out[near, 1] = np.ceil(green + 0.5).astype(np.uint8)  # more green: a browner, paler shade of the same
    return out
