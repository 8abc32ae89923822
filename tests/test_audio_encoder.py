"""AudioEncoder: streaming == offline for random chunkings, look-ahead causality, frame counts, save/load."""

import pytest
import torch

from portrait_rt.constants import FPS
from portrait_rt.models.audio_encoder import AudioEncoder
from portrait_rt.presets import AUDIO_ENCODER_PRESETS

from .conftest import perturb_

CFG = AUDIO_ENCODER_PRESETS["tiny"]
RATES = {16000: {}, 8000: {"n_fft": 200, "hop_length": 80}}  # the model rate, and a second one


def make_encoder(sample_rate=16000, **overrides):
    torch.manual_seed(0)
    return perturb_(AudioEncoder(**{**CFG, "sample_rate": sample_rate, **RATES[sample_rate], **overrides})).eval()


@torch.no_grad()
@pytest.mark.parametrize("sample_rate", list(RATES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_equals_offline(sample_rate, seed):
    enc = make_encoder(sample_rate, lookahead_frames=2)
    g = torch.Generator().manual_seed(seed)
    spf = sample_rate // FPS
    n = spf * 9 + int(torch.randint(0, spf, (1,), generator=g))
    audio = torch.randn(2, n, generator=g) * 0.1
    offline = enc(audio)
    assert offline.shape == (2, n // spf, CFG["feature_dim"])

    state, pieces, pos = None, [], 0
    while pos < n:
        size = int(torch.randint(0, 2 * spf, (1,), generator=g))  # includes empty and sub-frame chunks
        feats, state = enc.encode_chunk(audio[:, pos : pos + size], state)
        pieces.append(feats)
        pos += size
    feats, _ = enc.encode_chunk(audio[:, :0], state, final=True)
    streamed = torch.cat([*pieces, feats], dim=1)
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=1e-5)
    # Frames are released as soon as their look-ahead is available, not only at the end.
    assert sum(p.shape[1] for p in pieces) == n // spf - 2


@torch.no_grad()
@pytest.mark.parametrize("lookahead", [0, 2])
def test_lookahead_causality(lookahead):
    enc = make_encoder(lookahead_frames=lookahead)
    audio = torch.randn(1, 640 * 8) * 0.1
    changed = audio.clone()
    changed[:, 640 * 5 :] += 0.5  # perturb from video frame 5 on
    diff = (enc(changed) - enc(audio)).abs().amax(dim=(0, 2))
    first_affected = 5 - lookahead  # frame i sees audio up to the end of frame i + lookahead
    assert torch.all(diff[:first_affected] == 0)
    assert torch.all(diff[first_affected:] > 0)


@torch.no_grad()
def test_fixed_normalisation_is_per_sample():
    """Unlike Whisper's max-relative clipping, a louder later segment does not change earlier features."""
    enc = make_encoder(lookahead_frames=0)
    audio = torch.randn(1, 640 * 6) * 0.01
    louder = audio.clone()
    louder[:, 640 * 4 :] *= 100
    torch.testing.assert_close(enc(louder)[:, :4], enc(audio)[:, :4])


def test_bad_inputs_raise():
    enc = make_encoder()
    with pytest.raises(ValueError, match="samples"):
        enc.encode_chunk(torch.zeros(640))
    with pytest.raises(ValueError, match="hop_length"):
        AudioEncoder(**{**CFG, "hop_length": 150})


def test_trainable_and_save_load(tmp_path):
    enc = make_encoder()
    audio = torch.randn(2, 640 * 5) * 0.1
    enc(audio).square().mean().backward()
    assert enc.input_proj.weight.grad.abs().sum() > 0
    enc.save_pretrained(tmp_path)
    loaded = AudioEncoder.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio), enc(audio))
