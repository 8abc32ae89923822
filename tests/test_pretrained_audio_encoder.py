"""PretrainedAudioEncoder on tiny random Whisper / wav2vec2 configs (offline): shapes, streaming == offline,
look-ahead, Whisper's log-mel, frozen backbone, save/load, `from_transformers`, and a pipeline that uses it."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from transformers import Wav2Vec2Config, Wav2Vec2Model, WhisperConfig, WhisperFeatureExtractor, WhisperModel

from portrait_rt.constants import SAMPLE_RATE, SAMPLES_PER_FRAME
from portrait_rt.models.pretrained_audio_encoder import PretrainedAudioEncoder
from portrait_rt.models.transformer import FlowDiT
from portrait_rt.models.vae import CausalVideoVAE
from portrait_rt.pipeline import PortraitRTPipeline
from portrait_rt.presets import get_preset

from .conftest import perturb_, speech_like

SPF = SAMPLES_PER_FRAME
TINY = {
    "whisper": WhisperConfig(
        d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, num_mel_bins=16,
        max_source_positions=100, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32, vocab_size=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    ),
    "wav2vec2": Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, conv_dim=(8,) * 7,
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, vocab_size=16,
    ),
}  # fmt: skip
FEATURE_DIM = 8


def make_encoder(backbone="whisper", **overrides):
    torch.manual_seed(0)
    kwargs = {"context_seconds": 0.4, "lookahead_frames": 2, "projection_dim": 16, "feature_dim": FEATURE_DIM}
    enc = PretrainedAudioEncoder(
        backbone=backbone, backbone_config=TINY.get(backbone, TINY["whisper"]).to_dict(), **kwargs | overrides
    )
    return perturb_(enc).eval()


def stream(enc, audio, seed):
    """Random chunks (empty and sub-frame ones included), then an empty final call."""
    g = torch.Generator().manual_seed(seed)
    state, pieces, pos = None, [], 0
    while pos < audio.shape[1]:
        size = int(torch.randint(0, 4 * SPF, (1,), generator=g))
        feats, state = enc.encode_chunk(audio[:, pos : pos + size], state)
        pieces.append(feats)
        pos += size
    feats, _ = enc.encode_chunk(audio[:, :0], state, final=True)
    return torch.cat([*pieces, feats], dim=1), sum(p.shape[1] for p in pieces)


@torch.no_grad()
@pytest.mark.parametrize("backbone", ["whisper", "wav2vec2"])
@pytest.mark.parametrize("hop,seed", [(1, 0), (3, 1)])
def test_streaming_equals_offline(backbone, hop, seed):
    enc = make_encoder(backbone, hop_frames=hop)
    g = torch.Generator().manual_seed(seed)
    n = SPF * 13 + int(torch.randint(0, SPF, (1,), generator=g))  # longer than the 10-frame window
    audio = torch.randn(2, n, generator=g) * 0.1
    offline = enc(audio)
    assert offline.shape == (2, 13, FEATURE_DIM)
    streamed, released_early = stream(enc, audio, seed)
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=1e-5)
    # Whole segments are released as soon as their window's audio is in, not only at the end.
    assert released_early == ((13 - 1 - 2) // hop + 1) * hop


@torch.no_grad()
@pytest.mark.parametrize("backbone", ["whisper", "wav2vec2"])
def test_window_bounds(backbone):
    # hop 1: frame i's window is frames i + 3 - 10 .. i + 2 (10-frame window, look-ahead 2).
    enc = make_encoder(backbone)
    audio = torch.randn(1, SPF * 20) * 0.1
    base = enc(audio)
    future, past = audio.clone(), audio.clone()
    future[:, SPF * 12 :] += 0.5  # frames 12.. change
    past[:, : SPF * 5] += 0.5  # frames ..4 change
    diff_future = (enc(future) - base).abs().amax(dim=(0, 2))
    diff_past = (enc(past) - base).abs().amax(dim=(0, 2))
    assert torch.all(diff_future[:10] == 0) and torch.all(diff_future[10:] > 0)  # look-ahead 2
    assert torch.all(diff_past[:12] > 0) and torch.all(diff_past[12:] == 0)  # 10-frame context
    assert enc.receptive_field == 12 - 4


def test_whisper_log_mel_matches_feature_extractor():
    enc = make_encoder("whisper")
    window = torch.randn(1, enc.window_samples) * 0.1
    window[:, : SPF * 3] *= 1e-4  # a quiet part, so the max - 8 clamp acts
    extractor = WhisperFeatureExtractor(feature_size=16)
    ref = extractor(window[0].numpy(), sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="pt")
    torch.testing.assert_close(enc.log_mel(window), ref.input_features, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backbone", ["whisper", "wav2vec2"])
def test_backbone_frozen_projection_trains(backbone):
    enc = make_encoder(backbone, num_backbone_layers=1).train()
    assert not enc.pretrained.training and enc.proj.training
    enc(torch.randn(1, SPF * 6) * 0.1).square().mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in enc.pretrained.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.proj.parameters())


@torch.no_grad()
@pytest.mark.parametrize("backbone", ["whisper", "wav2vec2"])
def test_save_load_round_trip(backbone, tmp_path):
    enc = make_encoder(backbone, num_backbone_layers=1)
    enc.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = PretrainedAudioEncoder.from_pretrained(tmp_path)
    assert not any(p.requires_grad for p in loaded.pretrained.parameters())
    audio = torch.randn(1, SPF * 5) * 0.1
    torch.testing.assert_close(loaded(audio), enc(audio), atol=0, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("backbone", ["whisper", "wav2vec2"])
def test_from_transformers_loads_the_weights(backbone, tmp_path):
    torch.manual_seed(1)
    source = (WhisperModel if backbone == "whisper" else Wav2Vec2Model)(TINY[backbone]).eval()
    source.save_pretrained(tmp_path)  # stands in for a Hub checkpoint
    kwargs = {"context_seconds": 0.4, "feature_dim": FEATURE_DIM}
    enc = PretrainedAudioEncoder.from_transformers(str(tmp_path), num_backbone_layers=1, **kwargs)
    expected = (source.encoder if backbone == "whisper" else source).state_dict()
    got = enc.pretrained.state_dict()
    assert got.keys() < expected.keys()  # the second layer dropped
    assert all(torch.equal(got[k], expected[k]) for k in got)
    if backbone == "wav2vec2":  # the whole model: our windowed tokens are its outputs
        window = torch.randn(1, enc.window_samples) * 0.1
        full = PretrainedAudioEncoder.from_transformers(str(tmp_path), normalize_waveform=False, **kwargs)
        torch.testing.assert_close(full.backbone_tokens(window), source(window).last_hidden_state)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"backbone": "hubert"}, "backbone"),
        ({"context_seconds": 0.41}, "context_seconds"),
        ({"context_seconds": 60.0}, "exceeds Whisper"),
        ({"hop_frames": 4}, "hop_frames"),
        ({"num_backbone_layers": 3}, "num_backbone_layers"),
        ({"sample_rate": 22050}, "16000"),
    ],
)
def test_bad_config(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_encoder(**overrides)


def test_pipeline_with_pretrained_encoder(portraits, tmp_path):
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    pipe = PortraitRTPipeline(
        vae=CausalVideoVAE(**cfg["vae"]).eval(),
        transformer=perturb_(FlowDiT(**cfg["transformer"] | {"audio_dim": FEATURE_DIM})).eval(),
        audio_encoder=make_encoder("whisper", hop_frames=2),
        scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]),
    )
    x = (speech_like(0.36), SAMPLE_RATE)  # 9 frames: blocks of 5 and 4 (+ 4 padding) video frames
    out = pipe(portraits[:1], x, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (9, 64, 64, 3)
    chunks = [(x[0][i : i + 1000], SAMPLE_RATE) for i in range(0, x[0].size, 1000)]
    streamed = pipe.stream(portraits[:1], chunks, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.concatenate(list(streamed)), out.frames)

    pipe.save_pretrained(tmp_path / "pipe")
    loaded = PortraitRTPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.audio_encoder, PretrainedAudioEncoder)
    audio = torch.randn(1, SPF * 4) * 0.1
    torch.testing.assert_close(loaded.audio_encoder(audio), pipe.audio_encoder(audio), atol=0, rtol=0)
