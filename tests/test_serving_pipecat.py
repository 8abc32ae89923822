"""The Pipecat frame processor (`portrait_rt.serving.pipecat_avatar`) in Pipecat's own pipeline test harness
(`pipecat.tests.utils.run_test`): TTS audio frames in, image frames and the same audio out, aligned; interruptions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

pytest.importorskip("pipecat")
from pipecat.frames.frames import (  # noqa: E402
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.tests.utils import SleepFrame, run_test  # noqa: E402

from portrait_rt.serving.pipecat_avatar import PortraitAvatarProcessor  # noqa: E402
from tests.conftest import speech_like  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
TTS_RATE = 24000  # a common TTS output rate (not the model's 16 kHz)
CHUNK = 480  # 20 ms TTS frames
SETTINGS = {"num_inference_steps": 2, "block_size": 1}


def _tts_frames(audio: np.ndarray, context_id: str = "c1") -> list[TTSAudioRawFrame]:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    return [
        TTSAudioRawFrame(pcm[i : i + CHUNK].tobytes(), TTS_RATE, 1, context_id=context_id)
        for i in range(0, pcm.size, CHUNK)
    ]


def _run(processor, frames) -> list:
    down, _ = asyncio.run(run_test(processor, frames_to_send=frames, expected_down_frames=None))
    return list(down)


def _closing_bound(processor, pipe) -> int:
    """Frames an interruption may still show: the speech already in the stream (the block in progress, and the audio
    encoder's look-ahead past it), silence to the end of its block, then one block of silence."""
    lookahead_blocks = -(-int(pipe.audio_encoder.config.lookahead_frames) // processor.block_frames)
    return (2 + lookahead_blocks) * processor.block_frames


def test_every_audio_frame_gets_its_image_in_order_with_its_own_audio(tiny_pipe, portraits):
    seconds = 1.3
    audio = speech_like(seconds, TTS_RATE, seed=3)
    sent = _tts_frames(audio)
    processor = PortraitAvatarProcessor(tiny_pipe, [portraits[0]], seed=5, **SETTINGS)
    down = _run(processor, [TTSStartedFrame(context_id="c1"), *sent, TTSStoppedFrame(context_id="c1")])

    assert isinstance(down[0], OutputImageRawFrame)  # the portrait at rest, before it speaks
    kinds = [type(f) for f in down[1:]]
    assert kinds[0] is TTSStartedFrame and kinds[-1] is TTSStoppedFrame
    body = down[2:-1]
    images = [f for f in body if isinstance(f, OutputImageRawFrame)]
    voice = [f for f in body if isinstance(f, TTSAudioRawFrame)]
    assert len(images) == -(-audio.size // (TTS_RATE // 25))  # one image per 40 ms of speech (the last: 20 ms)
    assert all(img.sync_with_audio and img.format == "RGB" for img in images)
    assert b"".join(f.audio for f in voice) == b"".join(f.audio for f in sent)  # the TTS audio, unchanged
    assert all(f.sample_rate == TTS_RATE and f.context_id == "c1" for f in voice)
    # aligned: image i, then the audio of frame i (samples [960 i, 960 (i + 1)) at 24 kHz); nothing else between
    assert [type(f) for f in body] == [OutputImageRawFrame, TTSAudioRawFrame] * len(images)
    assert all(f.num_frames == 960 for f in voice[:-1])

    # the frames are the library's stream() of the same audio and seed
    mono = np.frombuffer(b"".join(f.audio for f in sent), "<i2").astype(np.float32) / 32768.0
    expected = np.concatenate(
        list(
            tiny_pipe.stream(
                [portraits[0]],
                [(mono[i : i + CHUNK], TTS_RATE) for i in range(0, mono.size, CHUNK)],
                generator=torch.Generator().manual_seed(5),
                **SETTINGS,
            )
        )
    )
    h, w = expected.shape[1:3]
    got = np.stack([np.frombuffer(f.image, np.uint8).reshape(h, w, 3) for f in images])
    assert np.array_equal(got, expected)
    assert processor.latencies_ms and min(processor.latencies_ms) > 0  # one per block made while audio came


def test_an_interruption_stops_the_talking_within_one_block_and_sends_no_more_speech(tiny_pipe, portraits):
    audio = speech_like(3.0, TTS_RATE, seed=4)
    processor = PortraitAvatarProcessor(tiny_pipe, [portraits[0]], seed=0, **SETTINGS)
    frames = [TTSStartedFrame(context_id="c1"), *_tts_frames(audio)[:40], SleepFrame(1.0), InterruptionFrame()]
    frames += [SleepFrame(1.0), *_tts_frames(audio)[40:], TTSStoppedFrame(context_id="c1")]
    down = _run(processor, frames)

    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    before, after = down[:cut], down[cut + 1 :]
    spoken = sum(isinstance(f, TTSAudioRawFrame) for f in before)
    assert spoken > 0
    # after it: the frames that close the mouth, each with silence (not TTS audio); none of the speech is played
    images = []
    for image, sound in zip(after[::2], after[1::2]):
        if not (isinstance(image, OutputImageRawFrame) and type(sound) is OutputAudioRawFrame):
            break
        assert not any(sound.audio)
        images.append(image)
    assert images
    assert len(images) <= _closing_bound(processor, tiny_pipe)
    # the TTS audio still queued when the interruption came is dropped, not played later
    played = b"".join(f.audio for f in down if isinstance(f, TTSAudioRawFrame))
    assert len(played) < audio.size * 2


def test_with_the_bundled_model_the_mouth_moves_while_speaking_and_is_closed_after_an_interruption():
    from portrait_rt.eval.metrics import mouth_opening
    from portrait_rt.pipeline import PortraitRTPipeline

    demo = ROOT / "assets" / "portrait-rt-demo"
    pipe = PortraitRTPipeline.from_pretrained(demo)
    speech, rate = sf.read(str(ROOT / "assets" / "examples" / "speech_c.wav"), dtype="float32")
    speech = soxr.resample(speech, rate, TTS_RATE)[: 2 * TTS_RATE]  # 2 s of speech, cut off mid-sentence
    reference = ROOT / "assets" / "examples" / "portrait_a.png"  # its mouth is closed through silence (live tests)
    processor = PortraitAvatarProcessor(pipe, [reference], seed=0, num_inference_steps=4, block_size=1)
    down = _run(
        processor, [TTSStartedFrame(), *_tts_frames(speech), SleepFrame(8.0), InterruptionFrame(), SleepFrame(4.0)]
    )

    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    size = (pipe.resolution, pipe.resolution, 3)
    talking = np.stack(
        [np.frombuffer(f.image, np.uint8).reshape(size) for f in down[1:cut] if isinstance(f, OutputImageRawFrame)]
    )
    closing = np.stack(
        [np.frombuffer(f.image, np.uint8).reshape(size) for f in down[cut:] if isinstance(f, OutputImageRawFrame)]
    )
    assert len(closing) <= _closing_bound(processor, pipe)
    opening, closed = mouth_opening(talking), mouth_opening(closing)
    assert opening.max() > 0.015  # it talked
    assert closed[-1] < 0.015 and closed[-1] < 0.5 * opening.max(), (opening.round(3), closed.round(3))


def test_a_photo_is_aligned_on_its_face_and_the_video_keeps_the_square_crop(tiny_pipe):
    """A visitor's photo reaches the avatar as it does `pipe.start_stream`: found and framed as the corpus (not the
    centre crop, which would put the mouth on the neck); the video track keeps one size, the model's square."""
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    processor = PortraitAvatarProcessor(tiny_pipe, [str(photo)], seed=0, **SETTINGS)
    try:
        first = processor.references[0]
        assert first.face_found and not processor.settings.paste_back
        assert processor._at_rest().shape == (tiny_pipe.resolution, tiny_pipe.resolution, 3)
    finally:
        processor.worker.shutdown()
