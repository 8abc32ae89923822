"""Synthetic talking-portrait corpus: a "moving MNIST" for talking heads (CLI: `python -m portrait_rt synth`).

A procedural renderer draws a random identity (face shape, skin, hair, eyes, brows, nose, clothing, earrings,
glasses, background) as a clean anti-aliased illustration (polygons drawn at 2-8x supersampling with PIL, then
box-filtered down), speaking espeak-ng speech. Two kinds of motion:

- not determined by the audio: head pose (turn, nod, roll, small translation) as smooth random processes, blinks,
  gaze, brows, breathing of the torso, earrings that swing with the head (a damped pendulum);
- determined by the audio: mouth opening and width through `portrait_rt.mouth.audio_mouth_features`; closed in
  silence.

Alignment: video frame i <-> audio samples [640 i, 640 (i + 1)) at 16 kHz and 25 fps, so `len(audio) == 640 T`.

The mouth interior is drawn in one reserved colour, `portrait_rt.mouth.MOUTH_INTERIOR_RGB`, that no other part of a
portrait comes near (every palette colour and every blend of two palette colours keeps `key_distance >= 100`), which
is what lets `portrait_rt.eval.mouth_opening` measure the opening from pixels alone.

Held-out data: split="eval" uses identity seeds from `EVAL_IDENTITY_OFFSET` up and the espeak languages/voices in
`speech.EVAL_LANGUAGES` / `speech.EVAL_VARIANTS`; split="train" never does.

Speed: a clip's background is drawn once; frames are ~30 PIL polygon fills at <= 512-1024 px plus one box
reduction. Training reads clips rendered once to shards (`portrait_rt.data.shards`).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter1d

from ..constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from ..mouth import MOUTH_INTERIOR_RGB, audio_mouth_features, key_distance
from .speech import SpeechSpec, sample_speech_spec, synthesize_speech

EVAL_IDENTITY_OFFSET = 1_000_000_000  # identity seeds >= this are reserved for split="eval"
MIN_RESOLUTION, MAX_RESOLUTION = 64, 512
HAIR_STYLES = ("short", "long", "bob", "bald", "bun", "curly", "spiky")
BACKGROUNDS = ("solid", "linear", "radial", "noise")
OVERLAYS = ("none", "stripes", "checks", "dots", "shapes")
LOOKS = ("cartoon", "photo")  # flat illustration (this module) or crude photographs (`photo_look`)


# ----------------------------------------------------------------------------------------------------------------
# Identity: every static choice about a portrait, drawn from one seed.
# ----------------------------------------------------------------------------------------------------------------
Color = tuple[int, int, int]


def _hsv(h: float, s: float, v: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return (round(r * 255), round(g * 255), round(b * 255))


def _shade(c: Color, f: float) -> Color:
    """Darken (f < 1) or lighten (f > 1) a colour."""
    if f <= 1:
        return tuple(round(x * f) for x in c)
    return tuple(round(x + (255 - x) * (f - 1)) for x in c)


class _Palette:
    """Colours of one portrait; each new one (and its blends with the others) stays far from the mouth colour."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.colors = rng, []

    def ok(self, c: Color) -> bool:
        if key_distance(c) < 110:
            return False
        if not self.colors:
            return True
        others = np.asarray(self.colors, np.float32)[:, None]  # (K, 1, 3)
        mixes = others + (np.asarray(c, np.float32) - others) * np.array([0.25, 0.5, 0.75], np.float32)[:, None]
        return bool(key_distance(mixes).min() >= 100)

    def pick(self, sample, remember: bool = True) -> Color:
        """Sample until a colour passes `ok`; `remember=False` for colours that touch only those picked so far."""
        for _ in range(64):
            c = sample(self.rng)
            if self.ok(c):
                break
        else:
            c = (160, 160, 160)  # a neutral grey is always safe
        if remember:
            self.colors.append(c)
        return c


_SKIN = [(255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 140, 100), (160, 110, 75), (120, 85, 60)]
_HAIR = [(25, 22, 22), (70, 45, 30), (120, 80, 45), (170, 110, 60), (225, 190, 120), (150, 150, 150)]
_HAIR += [(235, 230, 220), (40, 70, 160), (60, 150, 90), (180, 80, 170), (235, 120, 160)]
_EYES = [(90, 55, 30), (60, 110, 170), (70, 130, 80), (120, 120, 110), (140, 100, 40)]


@dataclass
class Identity:
    """Static appearance of one portrait; positions in image units (0..1), face features in units of `r`."""

    seed: int
    cx: float
    cy: float
    r: float  # face half-width scale (image units)
    ax: float  # face half-width / r
    ay: float  # face half-height / r
    chin: float  # superellipse exponent of the lower face (smaller: pointier chin)
    skin: Color
    lips: Color
    hair: Color
    hair_style: str
    eye_color: Color
    eye_w: float
    eye_h: float
    brow: Color
    brow_w: float
    mouth_w: float
    shirt: Color
    trim: Color
    neckline: str
    shoulders: float
    glasses: Color | None
    earrings: Color | None
    background: str
    overlay: str
    bg_colors: list[Color]
    bg_seed: int
    motion_scale: float

    @classmethod
    def sample(cls, seed: int) -> Identity:
        """Draw an identity from `seed` (independent of speech and motion)."""
        rng = np.random.default_rng([seed, 1])
        pal = _Palette(rng)

        def jitter(base, amount):
            return lambda r: tuple(int(np.clip(x + r.normal(0, amount), 0, 255)) for x in base)

        skin = pal.pick(lambda r: jitter(_SKIN[r.integers(len(_SKIN))], 10)(r))
        lips = pal.pick(
            lambda r: (
                _shade(tuple(int(np.clip(c * m, 0, 255)) for c, m in zip(skin, (1.0, 0.62, 0.7))), 0.85)
                if r.random() < 0.6
                else _hsv(r.uniform(-0.05, 0.02), r.uniform(0.35, 0.65), r.uniform(0.6, 0.85))
            ),
            remember=False,  # lips touch only the skin (checked here) and the mouth
        )
        hair = pal.pick(lambda r: jitter(_HAIR[r.integers(len(_HAIR))], 12)(r))
        brow = _shade(hair, 0.7) if key_distance(_shade(hair, 0.7)) > 110 else hair
        eye_color = pal.pick(lambda r: jitter(_EYES[r.integers(len(_EYES))], 10)(r))

        def vivid(r):
            return _hsv(r.random(), r.uniform(0.2, 0.8), r.uniform(0.35, 0.95))

        shirt = pal.pick(vivid)
        trim = pal.pick(vivid)
        glasses = (
            pal.pick(lambda r: _hsv(r.random(), r.uniform(0, 0.7), r.uniform(0.1, 0.6)))
            if rng.random() < 0.35
            else None
        )
        gold = [(212, 175, 55), (192, 192, 200), (60, 170, 200), (230, 230, 240)]
        earrings = pal.pick(lambda r: gold[r.integers(len(gold))]) if rng.random() < 0.4 else None

        def light(r):
            return _hsv(r.random(), r.uniform(0.0, 0.75), r.uniform(0.4, 1.0))

        bg_colors = [pal.pick(light) for _ in range(3)]
        return cls(
            seed=seed,
            cx=float(0.5 + rng.uniform(-0.04, 0.04)),
            cy=float(0.42 + rng.uniform(-0.03, 0.03)),
            r=float(rng.uniform(0.19, 0.23)),
            ax=float(rng.uniform(0.82, 1.0)),
            ay=float(rng.uniform(1.15, 1.35)),
            chin=float(rng.uniform(1.6, 2.4)),
            skin=skin,
            lips=lips,
            hair=hair,
            hair_style=str(rng.choice(HAIR_STYLES)),
            eye_color=eye_color,
            eye_w=float(rng.uniform(0.16, 0.22)),
            eye_h=float(rng.uniform(0.09, 0.13)),
            brow=brow,
            brow_w=float(rng.uniform(0.04, 0.08)),
            mouth_w=float(rng.uniform(0.34, 0.42)),
            shirt=shirt,
            trim=trim,
            neckline=str(rng.choice(["round", "v", "collar"])),
            shoulders=float(rng.uniform(1.8, 2.7)),
            glasses=glasses,
            earrings=earrings,
            background=str(rng.choice(BACKGROUNDS)),
            overlay=str(rng.choice(OVERLAYS)),
            bg_colors=bg_colors,
            bg_seed=int(rng.integers(2**31)),
            motion_scale=float(rng.uniform(0.5, 1.3)),
        )

    def to_dict(self) -> dict:
        """JSON-friendly summary for clip metadata."""
        return {k: v for k, v in self.__dict__.items()}


def _render_background(ident: Identity, size: int) -> Image.Image:
    """The identity's static background at `size` x `size` (the supersampled canvas)."""
    rng = np.random.default_rng(ident.bg_seed)
    c0, c1, c2 = (np.asarray(c, np.float32) for c in ident.bg_colors)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if ident.background == "solid":
        t = np.zeros_like(xx)
    elif ident.background == "linear":
        a = rng.uniform(0, 2 * np.pi)
        t = (xx - 0.5) * np.cos(a) + (yy - 0.5) * np.sin(a) + 0.5
    elif ident.background == "radial":
        px, py = rng.uniform(0.1, 0.9, 2)
        t = np.sqrt((xx - px) ** 2 + (yy - py) ** 2) / 1.2
    else:  # "noise": smooth value noise
        grid = rng.random((int(rng.integers(3, 8)),) * 2).astype(np.float32)
        t = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC))
    img = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None]
    if ident.overlay in ("stripes", "checks", "dots"):
        a = rng.uniform(0, np.pi)
        f = rng.uniform(6, 16)
        u = (xx * np.cos(a) + yy * np.sin(a)) * f
        v = (-xx * np.sin(a) + yy * np.cos(a)) * f
        if ident.overlay == "stripes":
            m = (np.floor(u * 2) % 2) == 0
        elif ident.overlay == "checks":
            m = ((np.floor(u) + np.floor(v)) % 2) == 0
        else:
            m = ((u % 1 - 0.5) ** 2 + (v % 1 - 0.5) ** 2) < 0.08
        img = np.where(m[..., None], c2, img)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if ident.overlay == "shapes":
        draw = ImageDraw.Draw(out)
        for _ in range(int(rng.integers(4, 12))):
            x, y = rng.uniform(0, 1, 2) * size
            s = rng.uniform(0.05, 0.2) * size
            color = tuple(int(c) for c in (c2 if rng.random() < 0.5 else c1))
            kind = rng.integers(3)
            if kind == 0:
                draw.ellipse([x - s, y - s, x + s, y + s], fill=color)
            elif kind == 1:
                draw.rectangle([x - s, y - s * 0.6, x + s, y + s * 0.6], fill=color)
            else:
                draw.polygon([(x, y - s), (x + s, y + s), (x - s, y + s)], fill=color)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Motion not determined by the audio.
# ----------------------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, t: int, sigma: float) -> np.ndarray:
    """Unit-variance smooth Gaussian process of `t` frames (white noise through a Gaussian of `sigma` frames)."""
    pad = int(4 * sigma) + 1
    n = gaussian_filter1d(rng.standard_normal(t + 2 * pad), sigma)[pad : pad + t]
    return n * math.sqrt(2 * math.sqrt(math.pi) * sigma)


def _sample_motion(rng: np.random.Generator, t: int, scale: float) -> dict[str, np.ndarray]:
    """Head pose (radians), translation (image units), blink, gaze, brows, breathing for `t` frames."""
    yaw = scale * (0.10 * _smooth_noise(rng, t, 20) + 0.04 * _smooth_noise(rng, t, 6))
    pitch = scale * (0.06 * _smooth_noise(rng, t, 18) + 0.025 * _smooth_noise(rng, t, 5))
    roll = scale * (0.05 * _smooth_noise(rng, t, 25) + 0.02 * _smooth_noise(rng, t, 7))
    trans = scale * 0.012 * np.stack([_smooth_noise(rng, t, 30), _smooth_noise(rng, t, 30)], 1)  # (T, 2)
    blink = np.zeros(t, np.float32)
    profile = np.array([0.4, 0.85, 1.0, 0.8, 0.45, 0.15], np.float32)
    i = int(rng.integers(0, 60))
    while i < t:
        seg = blink[i : i + len(profile)]
        blink[i : i + len(profile)] = np.maximum(seg, profile[: len(seg)])
        i += int(max(20, rng.exponential(3.5 * FPS)))
    gaze = 0.3 * np.stack([_smooth_noise(rng, t, 15), 0.5 * _smooth_noise(rng, t, 15)], 1)
    brows = 0.5 * _smooth_noise(rng, t, 12)
    period = rng.uniform(3, 5) * FPS
    breath = np.sin(2 * np.pi * np.arange(t) / period + rng.uniform(0, 2 * np.pi))
    return dict(yaw=yaw, pitch=pitch, roll=roll, trans=trans, blink=blink, gaze=gaze, brows=brows, breath=breath)


def _earring_swing(lobe_x: np.ndarray, length: float) -> np.ndarray:
    """Angle (T,) of an earring hanging from a lobe moving along `lobe_x`: a damped pendulum, 4 Euler sub-steps."""
    g, damping, sub = 9.81 * 0.5, 3.0, 4  # a long, lightly damped pendulum that visibly lags the head
    dt = 1 / FPS / sub
    accel = np.gradient(np.gradient(lobe_x)) * FPS**2 * 2.0  # horizontal acceleration of the lobe
    theta, omega, out = 0.0, 0.0, np.zeros(len(lobe_x), np.float32)
    for i, a in enumerate(accel):
        for _ in range(sub):
            omega += (-(g / max(length, 1e-3)) * math.sin(theta) - damping * omega - a / length * math.cos(theta)) * dt
            theta += omega * dt
        out[i] = theta
    return out


# ----------------------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------------------
def _ellipse(cu, cv, au, av, n=40, a0=0.0, a1=2 * np.pi) -> tuple[np.ndarray, np.ndarray]:
    a = np.linspace(a0, a1, n, endpoint=False if a1 - a0 >= 2 * np.pi - 1e-9 else True)
    return cu + au * np.cos(a), cv + av * np.sin(a)


def _clamp_to_ellipse(u, v, cu, cv, au, av):
    """Clamp points vertically into an ellipse: the column-wise intersection of two column-convex shapes."""
    half = av * np.sqrt(np.clip(1 - ((u - cu) / max(au, 1e-6)) ** 2, 0, 1))
    return np.clip(u, cu - au, cu + au), np.clip(v, cv - half, cv + half)


@dataclass
class _Pose:
    yaw: float
    pitch: float
    roll: float
    tx: float
    ty: float


class _Painter:
    """Draws one identity's frames on a supersampled canvas; coordinates in face units (r) are mapped by the pose."""

    def __init__(self, ident: Identity, resolution: int):
        self.ident, self.res = ident, resolution
        self.ss = int(np.clip(math.ceil(512 / resolution), 2, 4))  # supersampling factor
        self.size = resolution * self.ss
        self.background = _render_background(ident, self.size)

    # -- geometry ------------------------------------------------------------------------------------------------
    def project(self, u, v, z, pose: _Pose) -> list[tuple[float, float]]:
        """Face-local (u, v) in units of r with depth z -> canvas pixels: yaw/pitch shift by depth, roll about the
        neck, then translate."""
        idt = self.ident
        u = np.asarray(u, np.float64) + z * math.sin(pose.yaw)
        v = np.asarray(v, np.float64) + z * math.sin(pose.pitch)
        pv = 1.6  # roll pivot: the neck, below the chin
        c, s = math.cos(pose.roll), math.sin(pose.roll)
        x = u * c - (v - pv) * s
        y = u * s + (v - pv) * c + pv
        px = (idt.cx + pose.tx + x * idt.r) * self.size
        py = (idt.cy + pose.ty + y * idt.r) * self.size
        self._bbox(px, py)
        return list(zip(px.tolist(), py.tolist()))

    def _bbox(self, px, py):
        if self._track is not None:
            b = self._track
            b[0], b[1] = min(b[0], px.min()), min(b[1], py.min())
            b[2], b[3] = max(b[2], px.max()), max(b[3], py.max())

    def _begin_box(self):
        self._track = [np.inf, np.inf, -np.inf, -np.inf]

    def _end_box(self) -> list[float]:
        b, self._track = self._track, None
        return [float(np.clip(x / self.ss, 0, self.res)) for x in b]

    # -- one frame -----------------------------------------------------------------------------------------------
    def draw(
        self, pose: _Pose, opening: float, spread: float, blink: float, gaze, brow: float, breath: float, swing: float
    ) -> tuple[np.ndarray, dict]:
        """Render one frame (uint8 (H, W, 3)) and its boxes (face, body, mouth) in output pixels."""
        idt, s = self.ident, self.size
        img = self.background.copy()
        d = ImageDraw.Draw(img)
        lw = max(1, round(0.03 * idt.r * s))  # outline width
        self._track = None
        boxes = {}

        # 1. torso and neck (the body follows the head's translation by half, and breathes)
        self._begin_box()
        body_pose = _Pose(0.0, 0.0, 0.0, pose.tx * 0.5, pose.ty * 0.5 + breath * 0.004)
        top, w = 1.45, idt.shoulders * (1 + 0.01 * breath)
        u, v = _ellipse(0, top + 2.2, w, 2.2, n=60, a0=np.pi, a1=2 * np.pi)
        torso = self.project(np.r_[u, w, -w], np.r_[v, 8, 8], 0, body_pose)
        d.polygon(torso, fill=idt.shirt)
        neck_w = 0.33 * idt.ax
        neck = self.project([-neck_w, neck_w, neck_w, -neck_w], [0.6, 0.6, top + 0.15, top + 0.15], 0, pose)
        if idt.hair_style in ("long", "bob"):  # hair behind the neck and shoulders
            bottom = 2.0 if idt.hair_style == "long" else 1.1
            hu, hv = _ellipse(0, -0.2, idt.ax * 1.22, idt.ay * 1.08, n=40, a0=np.pi, a1=2 * np.pi)
            d.polygon(
                self.project(np.r_[hu, idt.ax * 1.22, -idt.ax * 1.22], np.r_[hv, bottom, bottom], -0.2, pose),
                fill=_shade(idt.hair, 0.85),
            )
        d.polygon(neck, fill=_shade(idt.skin, 0.85))
        if idt.neckline == "v":
            d.polygon(
                self.project([-0.45, 0.45, 0], [top - 0.02, top - 0.02, top + 0.55], 0, body_pose),
                fill=_shade(idt.skin, 0.85),
            )
            d.line(
                self.project([-0.5, 0, 0.5], [top - 0.05, top + 0.6, top - 0.05], 0, body_pose),
                fill=idt.trim,
                width=2 * lw,
                joint="curve",
            )
        elif idt.neckline == "round":
            u, v = _ellipse(0, top - 0.05, 0.5, 0.22, n=24, a0=0, a1=np.pi)
            d.line(self.project(u, v, 0, body_pose), fill=idt.trim, width=2 * lw, joint="curve")
        else:  # shirt collar
            for sgn in (-1, 1):
                d.polygon(
                    self.project([0, sgn * 0.55, sgn * 0.45], [top + 0.25, top - 0.12, top + 0.35], 0, body_pose),
                    fill=idt.trim,
                )
        boxes["torso"] = self._end_box()

        # 2. head: ears, face, hair, features
        self._begin_box()
        for sgn in (-1, 1):
            eu, ev = _ellipse(sgn * idt.ax * 0.98, 0.05, 0.16, 0.26, n=20)
            d.polygon(self.project(eu, ev, -0.3, pose), fill=_shade(idt.skin, 0.9))
        if idt.hair_style not in ("bald", "long", "bob"):
            hu, hv = _ellipse(0, -0.25, idt.ax * 1.1, idt.ay * 0.95, n=48, a0=np.pi * 0.95, a1=np.pi * 2.05)
            d.polygon(self.project(hu, hv, -0.05, pose), fill=idt.hair)
        if idt.hair_style == "bun":
            bu, bv = _ellipse(0, -idt.ay - 0.25, 0.38, 0.32, n=28)
            d.polygon(self.project(bu, bv, -0.1, pose), fill=idt.hair)
        if idt.hair_style == "curly":
            for k in range(11):
                a = np.pi + np.pi * k / 10
                cu, cv = idt.ax * 1.02 * math.cos(a), -0.15 + idt.ay * 1.0 * math.sin(a)
                d.polygon(self.project(*_ellipse(cu, cv, 0.3, 0.3, n=20), -0.05, pose), fill=idt.hair)
        if idt.hair_style == "spiky":
            for k in range(7):
                a = np.pi * (1.1 + 0.8 * k / 6)
                bu, bv = idt.ax * math.cos(a), -0.1 + idt.ay * math.sin(a)
                tu, tv = 1.45 * idt.ax * math.cos(a), -0.1 + 1.35 * idt.ay * math.sin(a)
                du, dv = -0.18 * math.sin(a), 0.18 * math.cos(a)
                d.polygon(self.project([bu - du, tu, bu + du], [bv - dv, tv, bv + dv], -0.05, pose), fill=idt.hair)

        # the face: superellipse, lower half stretched as the jaw drops
        a = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        ca, sa = np.cos(a), np.sin(a)
        p = np.where(sa > 0, idt.chin, 2.4)
        fu = idt.ax * np.sign(ca) * np.abs(ca) ** (2 / p)
        fv = idt.ay * np.sign(sa) * np.abs(sa) ** (2 / p) * np.where(sa > 0, 1 + 0.1 * opening, 1.0)
        face = self.project(fu, fv, 0, pose)
        boxes["face"] = None  # filled below from the face outline alone
        fb = np.asarray(face)
        d.polygon(face, fill=idt.skin)
        d.line(face + face[:1], fill=_shade(idt.skin, 0.75), width=lw, joint="curve")
        if idt.hair_style in ("short", "long", "bob", "bun"):  # fringe
            hu, hv = _ellipse(0, -0.55, idt.ax * 1.02, 0.72, n=40, a0=np.pi, a1=2 * np.pi)
            side = 0.3 if (idt.seed % 2) else -0.3
            d.polygon(self.project(np.r_[hu, side], np.r_[hv, -0.5], 0.02, pose), fill=idt.hair)

        # eyes (blink closes them), brows, nose
        for sgn in (-1, 1):
            cu, cv = sgn * 0.38 * idt.ax, -0.08
            eh = idt.eye_h * (1 - 0.95 * blink)
            eu, ev = _ellipse(cu, cv, idt.eye_w, max(eh, 1e-3), n=32)
            d.polygon(self.project(eu, ev, 0.5, pose), fill=(245, 245, 240))
            if eh > 0.02:
                iu, iv = _ellipse(cu + gaze[0] * idt.eye_w * 0.5, cv + gaze[1] * eh * 0.3, 0.085, 0.085, n=24)
                d.polygon(
                    self.project(*_clamp_to_ellipse(iu, iv, cu, cv, idt.eye_w, eh), 0.5, pose), fill=idt.eye_color
                )
                pu, pv = _ellipse(cu + gaze[0] * idt.eye_w * 0.5, cv + gaze[1] * eh * 0.3, 0.04, 0.04, n=16)
                d.polygon(
                    self.project(*_clamp_to_ellipse(pu, pv, cu, cv, idt.eye_w, eh), 0.5, pose), fill=(20, 20, 25)
                )
            lu, lv = _ellipse(cu, cv, idt.eye_w * 1.05, max(eh, 0.01), n=16, a0=np.pi, a1=2 * np.pi)
            d.line(self.project(lu, lv, 0.5, pose), fill=(40, 30, 30), width=lw, joint="curve")
            bu, bv = _ellipse(cu, cv - 0.12 - 0.05 * brow, idt.eye_w * 1.25, 0.1, n=12, a0=np.pi * 1.1, a1=np.pi * 1.9)
            d.line(
                self.project(bu, bv, 0.45, pose),
                fill=idt.brow,
                width=max(1, round(idt.brow_w * idt.r * s)),
                joint="curve",
            )
        d.line(
            self.project([0.02, 0.09, -0.04], [0.0, 0.3, 0.34], 0.8, pose),
            fill=_shade(idt.skin, 0.7),
            width=lw,
            joint="curve",
        )

        # 3. the mouth: upper lip fixed, lower lip drops with the opening; interior in the reserved colour
        mw = idt.mouth_w * (0.85 + 0.3 * spread)
        h = 0.5 * opening  # interior height (units of r)
        lt = 0.09  # lip thickness
        top_v, mid = 0.62, 0.62 + h / 2
        ou, ov = _ellipse(0, mid, mw + lt, h / 2 + lt, n=40)
        d.polygon(self.project(ou, ov, 0.3, pose), fill=idt.lips)
        d.line(
            self.project([-mw, 0, mw], [top_v, top_v + 0.01, top_v], 0.3, pose),
            fill=_shade(idt.lips, 0.6),
            width=lw,
            joint="curve",
        )
        if h > 1e-3:
            iu, iv = _ellipse(0, mid, mw, h / 2, n=40)
            d.polygon(self.project(iu, iv, 0.3, pose), fill=MOUTH_INTERIOR_RGB)
            tu, tv = _clamp_to_ellipse(iu, np.minimum(iv, top_v + 0.22 * h), 0, mid, mw, h / 2)
            d.polygon(self.project(tu, tv, 0.3, pose), fill=(245, 243, 235))  # upper teeth
            gu, gv = _ellipse(0, top_v + h, 0.6 * mw, 0.25 * h, n=24)
            d.polygon(self.project(*_clamp_to_ellipse(gu, gv, 0, mid, mw, h / 2), 0.3, pose), fill=(205, 95, 105))
        mb = np.asarray(self.project(ou, ov, 0.3, pose))

        # 4. accessories: glasses, earrings (swinging)
        if idt.glasses is not None:
            for sgn in (-1, 1):
                gu, gv = _ellipse(sgn * 0.38 * idt.ax, -0.08, 0.3, 0.22, n=32)
                pts = self.project(gu, gv, 0.55, pose)
                d.line(pts + pts[:1], fill=idt.glasses, width=max(1, round(1.3 * lw)), joint="curve")
            d.line(
                self.project([-0.38 * idt.ax + 0.3, 0.38 * idt.ax - 0.3], [-0.12, -0.12], 0.55, pose),
                fill=idt.glasses,
                width=max(1, round(1.3 * lw)),
            )
        if idt.earrings is not None:
            for sgn in (-1, 1):
                lu, lv = sgn * idt.ax * 1.0, 0.3
                eu = lu + 0.3 * math.sin(swing)
                ev = lv + 0.3 * math.cos(swing)
                d.line(self.project([lu, eu], [lv, ev], -0.3, pose), fill=idt.earrings, width=lw)
                d.polygon(self.project(*_ellipse(eu, ev + 0.06, 0.07, 0.09, n=16), -0.3, pose), fill=idt.earrings)
        head = self._end_box()

        frame = np.asarray(img.reduce(self.ss))  # box filter: the anti-aliasing
        boxes["face"] = [float(np.clip(x / self.ss, 0, self.res)) for x in (*fb.min(0), *fb.max(0))]
        boxes["mouth"] = [float(np.clip(x / self.ss, 0, self.res)) for x in (*mb.min(0), *mb.max(0))]
        t = boxes["torso"]
        boxes["head"] = head
        boxes["body"] = [min(t[0], head[0]), min(t[1], head[1]), max(t[2], head[2]), max(t[3], head[3])]
        return frame, boxes

    _track = None


# ----------------------------------------------------------------------------------------------------------------
# Clips
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Clip:
    """One rendered clip: frames uint8 (T, H, W, 3), audio float32 (T * 640,), and per-frame ground truth in meta.

    meta: mouth_open (T,), mouth_spread (T,), head_pose (T, 3) yaw/pitch/roll in degrees, head_translation (T, 2)
    in pixels, blink (T,), breath (T,), earring_angle (T,), and boxes (T, 4) x0, y0, x1, y1 in pixels: face_box
    (the face outline), mouth_box, head_box (face, hair, ears, accessories), torso_box (neck, shoulders),
    body_box (their bounding box); the drift metric's foreground is [head_box, torso_box]. Plus seed, split,
    identity, speech, look; the photo look adds photo_style and mouth_interior_area (T,), the open mouth's pixels.
    """

    frames: np.ndarray
    audio: np.ndarray
    sample_rate: int
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        """T, the number of video frames."""
        return int(self.frames.shape[0])


def _check_args(resolution: int, split: str, duration: float | None) -> None:
    if not isinstance(resolution, (int, np.integer)) or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"resolution must be an int in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution!r}")
    if resolution % 2:
        raise ValueError(f"resolution must be even (h.264 needs even sizes), got {resolution}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if duration is not None and not 0.2 <= duration <= 3600:
        raise ValueError(f"duration must be None (the speech's length) or 0.2-3600 seconds, got {duration}")


def identity_seed_for(seed: int, split: str) -> int:
    """The identity seed a clip uses: `seed` itself for train, `EVAL_IDENTITY_OFFSET + seed` for eval."""
    if not 0 <= seed < EVAL_IDENTITY_OFFSET:
        raise ValueError(f"seed must be in [0, {EVAL_IDENTITY_OFFSET}), got {seed}")
    return seed if split == "train" else EVAL_IDENTITY_OFFSET + seed


def _speech_rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, 0 if split == "train" else 1, 2])


def clip_speech_spec(seed: int, split: str = "train") -> SpeechSpec:
    """The voice, prosody and text of clip `seed` (without running espeak-ng)."""
    return sample_speech_spec(_speech_rng(seed, split), split)


def clip_speech(seed: int, split: str = "train", duration: float | None = None) -> tuple[SpeechSpec, np.ndarray]:
    """The speech spec and audio (16 kHz, len = T * 640) of clip `seed`; long durations chain phrases."""
    rng = _speech_rng(seed, split)
    spec = sample_speech_spec(rng, split)
    audio = synthesize_speech(spec)
    target = None if duration is None else round(duration * FPS) * SAMPLES_PER_FRAME
    while target is not None and audio.size < target:  # same voice, more sentences after a pause
        more = sample_speech_spec(rng, split)
        gap = np.zeros(int(rng.uniform(0.2, 0.8) * SAMPLE_RATE), np.float32)
        audio = np.concatenate([audio, gap, synthesize_speech(SpeechSpec(**{**spec.__dict__, "ssml": more.ssml}))])
    if target is None:
        target = max(-(-audio.size // SAMPLES_PER_FRAME), 2 * FPS) * SAMPLES_PER_FRAME  # at least 2 s
    return spec, np.pad(audio[:target], (0, max(0, target - audio.size))).astype(np.float32)


def render_clip(
    seed: int,
    resolution: int = 128,
    duration: float | None = None,
    split: str = "train",
    audio: np.ndarray | None = None,
    motion_seed: int | None = None,
    look: str = "cartoon",
) -> Clip:
    """Render clip `seed` of `split`: deterministic per (seed, resolution, split, duration, motion_seed).

    `duration` in seconds (rounded to whole frames); None takes the speech's own length (at least 2 s).
    `audio` (16 kHz) replaces the clip's speech (e.g. to drive one identity with another clip's audio); its length
    then sets the duration.
    `motion_seed`: draw what the audio does not determine (head pose, blinks, gaze, brows, breathing) from another
    random process that starts where the clip's own does: frame 0 and the mouth are unchanged, the rest of the motion
    differs. What a perfect generator could output given the first frame and the speech (`report`'s sharp ceiling).
    `look`: "cartoon" or "photo" (`portrait_rt.data.photo_look`: the same identity, speech and motion, photographed).
    """
    _check_args(resolution, split, duration)
    if look not in LOOKS:
        raise ValueError(f"look must be one of {LOOKS}, got {look!r}")
    ident = Identity.sample(identity_seed_for(seed, split))
    if audio is None:
        spec, audio = clip_speech(seed, split, duration)
        speech = {
            "voice": spec.voice,
            "language": spec.language,
            "variant": spec.variant,
            "speed": spec.speed,
            "pitch": spec.pitch,
            "text": spec.ssml,
        }
    else:
        audio = np.asarray(audio, np.float32).reshape(-1)
        n = -(-audio.size // SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME
        audio, speech = np.pad(audio, (0, n - audio.size)), {"voice": "external"}
    t = audio.size // SAMPLES_PER_FRAME
    if t == 0:
        raise ValueError("audio is empty: give at least 640 samples (one frame at 16 kHz)")
    opening, spread = audio_mouth_features(audio)

    # 1. motion not determined by the audio
    mrng = np.random.default_rng([seed, 0 if split == "train" else 1, 3])
    mo = _sample_motion(mrng, t, ident.motion_scale)
    if motion_seed is not None:
        other = _sample_motion(np.random.default_rng([motion_seed, 4]), t, ident.motion_scale)
        mo = {k: v - v[:1] + mo[k][:1] for k, v in other.items()}  # anchored at the clip's own frame 0
        mo["blink"] = np.clip(mo["blink"], 0, 1)
    lobe_x = mo["trans"][:, 0] / ident.r + 1.3 * np.sin(mo["roll"]) + 0.3 * np.sin(mo["yaw"])  # units of r
    swing = _earring_swing(lobe_x * 0.3, 0.3) if ident.earrings is not None else np.zeros(t, np.float32)

    # 2. draw
    if look == "photo":
        from .photo_look import PhotoPainter

        painter = PhotoPainter(ident, resolution, split)
    else:
        painter = _Painter(ident, resolution)
    frames = np.empty((t, resolution, resolution, 3), np.uint8)
    boxes = {"face": [], "head": [], "torso": [], "body": [], "mouth": []}
    interior = []  # the photo look's open-mouth area per frame
    for i in range(t):
        pose = _Pose(mo["yaw"][i], mo["pitch"][i], mo["roll"][i], mo["trans"][i, 0], mo["trans"][i, 1])
        frames[i], b = painter.draw(
            pose,
            float(opening[i]),
            float(spread[i]),
            float(mo["blink"][i]),
            mo["gaze"][i],
            float(mo["brows"][i]),
            float(mo["breath"][i]),
            float(swing[i]),
        )
        for k in boxes:
            boxes[k].append(b[k])
        if "mouth_interior" in b:
            interior.append(b["mouth_interior"])

    meta = {
        "seed": seed,
        "split": split,
        "resolution": resolution,
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "num_frames": t,
        "identity": ident.to_dict(),
        "speech": speech,
        "mouth_open": opening,
        "mouth_spread": spread,
        "head_pose": np.degrees(np.stack([mo["yaw"], mo["pitch"], mo["roll"]], 1)).astype(np.float32),
        "head_translation": (mo["trans"] * resolution).astype(np.float32),
        "blink": mo["blink"],
        "breath": mo["breath"].astype(np.float32),
        "earring_angle": swing,
        **{f"{k}_box": np.asarray(v, np.float32) for k, v in boxes.items()},
        "look": look,
    }
    if look == "photo":
        meta["photo_style"] = painter.style.to_dict()
        meta["mouth_interior_area"] = np.asarray(interior, np.float32)
    return Clip(frames=frames, audio=audio, sample_rate=SAMPLE_RATE, meta=meta)


def write_clip(clip: Clip, out_dir: str | Path, name: str) -> dict[str, Path]:
    """Write `name.mp4` (h.264 + AAC), `name.wav` and `name.json` (metadata, per-frame arrays as lists)."""
    import soundfile as sf

    from ..video import write_metadata, write_video

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"mp4": out_dir / f"{name}.mp4", "wav": out_dir / f"{name}.wav", "json": out_dir / f"{name}.json"}
    write_video(paths["mp4"], clip.frames, clip.audio, clip.sample_rate)
    sf.write(paths["wav"], clip.audio, clip.sample_rate, subtype="PCM_16")
    write_metadata(paths["json"], clip.meta)
    return paths


def write_corpus(
    out_dir: str | Path,
    num_clips: int,
    resolution: int = 128,
    split: str = "train",
    seed: int = 0,
    duration: float | None = None,
    workers: int = 1,
    photo_fraction: float = 0.0,
) -> list[dict[str, Path]]:
    """Render and write `num_clips` clips (seeds seed..seed+num_clips-1) plus `index.json`; returns their paths.

    `photo_fraction`: the share of clips in the photographic look (`photo_look.look_for` picks which, per seed)."""
    from .photo_look import look_for

    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    _check_args(resolution, split, duration)
    seeds = list(range(seed, seed + num_clips))
    names = [f"{split}_{s:08d}" for s in seeds]
    looks = [look_for(s, split, photo_fraction) for s in seeds]
    job = [(s, resolution, duration, split, out_dir, n, k) for s, n, k in zip(seeds, names, looks)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            written = list(pool.map(_write_one, job))
    else:
        written = [_write_one(j) for j in job]
    index = [
        {"name": n, "seed": s, "look": k, **{f: p.name for f, p in w.items()}}
        for n, s, k, w in zip(names, seeds, looks, written)
    ]
    meta = {"split": split, "resolution": resolution, "fps": FPS, "sample_rate": SAMPLE_RATE, "clips": index}
    (Path(out_dir) / "index.json").write_text(json.dumps(meta, indent=1))
    return written


def _write_one(job) -> dict[str, Path]:
    s, resolution, duration, split, out_dir, name, look = job
    return write_clip(render_clip(s, resolution, duration, split, look=look), out_dir, name)


# ----------------------------------------------------------------------------------------------------------------
# CLI: python -m portrait_rt synth
# ----------------------------------------------------------------------------------------------------------------
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m portrait_rt synth`."""
    parser.add_argument("--out", required=True, help="output folder (mp4 + wav + json per clip, index.json)")
    parser.add_argument("--num-clips", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=128, help="frame size in pixels (64-512, even)")
    parser.add_argument("--split", choices=["train", "eval"], default="train")
    parser.add_argument("--seed", type=int, default=0, help="first clip seed")
    parser.add_argument("--duration", type=float, default=None, help="seconds per clip (default: the speech's)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--photo-fraction", type=float, default=0.0, help="share of clips in the photographic look (0-1; 0: cartoons)"
    )


def cli_main(args: argparse.Namespace) -> int:
    """Write the corpus and print a one-line summary."""
    written = write_corpus(
        args.out, args.num_clips, args.resolution, args.split, args.seed, args.duration, args.workers,
        args.photo_fraction,
    )  # fmt: skip
    index = json.loads((Path(args.out) / "index.json").read_text())
    photos = sum(c["look"] == "photo" for c in index["clips"])
    print(json.dumps({"out": str(args.out), "clips": len(written), "split": args.split, "photo_clips": photos}))
    return 0
