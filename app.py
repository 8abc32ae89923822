"""portrait-rt Space: talk into the microphone (or upload speech) and a portrait talks back, streamed as it is made.

    python app.py [--model PATH_OR_HUB_ID] [--port 7860] [--host 127.0.0.1]

Widgets and event wiring only: the library loads (`portrait_rt.loading`) and generates (`portrait_rt.pipeline`); the
Space's own helpers sit beside this file in `space/` (input checks, live mode, readouts, the lip-sync plot, About, the
page's intro and CSS, Compare's side-by-side mp4, the one-click example cached from the shipped model). `main` loads
the pipeline and hands it to `build_demo`, which wires the `Handlers` around it (nothing reads a module-level one).

API and MCP: File mode is `/generate` and Compare `/compare`, also the tools of the MCP server at /gradio_api/mcp/
(described by the handlers' docstrings and type hints); the page's other events are not public.

Live mode, low latency: "Talk" loads `space/static/live.js` in the page, which streams the microphone to
`space.realtime` over a WebSocket (mounted on this server at /live-rt) and plays the frames and audio sent back.
Live mode, the Gradio recorder (the fallback): the microphone's `.stream` event only queues chunks in the tab's
`LiveSession` (`gr.State`); the live generator, started by `.start_recording`, turns them into video segments for a
streaming `gr.Video`, and `.stop_recording` asks it to finish (the tail block is flushed, not lost). One stream per
tab: starting a second one while the first is still running shows a warning and that recording is ignored.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# Gradio's copies of uploads, outputs and examples go to a folder of this process's own (under $GRADIO_TEMP_DIR if
# set), removed at exit: Gradio's own shutdown leaves its example copies and folders behind in the shared one. Set
# before Gradio is imported (some of its modules read it then), hence the imports below it.
# ruff: noqa: E402
GRADIO_CACHE = tempfile.TemporaryDirectory(prefix="portrait-rt-gradio-", dir=os.environ.get("GRADIO_TEMP_DIR"))
os.environ["GRADIO_TEMP_DIR"] = GRADIO_CACHE.name

import gradio as gr
import numpy as np
import spaces
from PIL import Image
from starlette.exceptions import HTTPException

from portrait_rt.cli import ArgumentParser
from portrait_rt.constants import SAMPLE_RATE
from portrait_rt.eval import mouth_darkening, mouth_opening
from portrait_rt.fast_path import aoti_compile_repeated_blocks
from portrait_rt.loading import ModelChoice, add_model_arguments, load_from_args
from portrait_rt.video import VideoWriter
from space import limits
from space.compare import side_by_side
from space.examples import EXAMPLE_PORTRAIT, EXAMPLE_SPEECH, PREVIEW, cached_example
from space.inputs import (
    GUIDANCE_AUDIO,
    GUIDANCE_REFERENCE,
    STEPS,
    check_setting,
    collect_references,
    field_checks,
    load_speech,
    make_generator,
    paths_hidden,
    user_errors,
)
from space.layout import INTRO, page_css
from space.live import LiveSession, LiveStream, run_live
from space.panels import about_markdown, block_size_choices, lipsync_plot, lipsync_r, speed_readout
from space.realtime import CLIENT_HTML, START_JS, STOP_JS, default_block_size, server_from_env

if TYPE_CHECKING:
    from portrait_rt.pipeline import PortraitRTPipeline

HERE = Path(__file__).parent
EXAMPLES = HERE / "assets" / "examples"
LIVE_TIME_LIMIT_S = limits.LIVE_TIME_LIMIT_S  # one live stream's maximum length
STREAM_EVERY_S = 0.25  # microphone chunk period
MAX_LIVE_STREAMS = limits.LIVE_STREAMS  # concurrent Gradio-recorder live streams (all users)
FIRST_AUDIO_S = 3.0  # a live stream whose first microphone chunk has not come by then is given up
AOTI_COMPILE_S = 1500  # ZeroGPU: the start-up GPU call that compiles the blocks (README's startup_duration_timeout)

OUTPUTS = tempfile.TemporaryDirectory(prefix="portrait-rt-")  # this process's videos and plots, removed at exit


def reference_image(index: int, kind: str) -> gr.Image:
    """A reference slot that hands the uploaded file over untouched (`image_mode=None`): the project's loader reads
    16-bit, float, palette, transparent, CMYK and EXIF-rotated images correctly, and names the slot in its errors.

    (Wrapping the instance's `preprocess` rather than subclassing: Gradio writes a `.pyi` stub beside any module that
    defines a component class.)
    """
    label = f"Reference {index} ({kind})"
    image = gr.Image(
        label=label, type="filepath", image_mode=None, sources=["upload"], height=220, elem_id=f"ref{index}"
    )
    preprocess = image.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return payload.path  # Gradio could not open it: the project's loader says what is wrong, in our words

    image.preprocess = checked
    return image


# ---------------------------------------------------------------------------------------------- GPU entry points
@dataclass
class Generated:
    """What File/Compare keep of a generation: never the frames (they go to the mp4 block by block)."""

    audio: np.ndarray  # the model-rate audio that drove the video
    mouth: np.ndarray  # the colour key's mouth opening per frame (the cartoons' mouth colour), for the lip-sync plot
    darkening: np.ndarray | None  # the mouth box's darkening per frame (any face); None: no face, not measured
    timings: list
    num_frames: int


RESULTS = ("Photo (face pasted back)", "Square crop (the model's frame)")  # File mode's result toggle


class Handlers:
    """The Space's GPU entry points around one loaded pipeline; `build_demo` wires them (as LivePortrait's app does:
    the UI builder is handed the pipeline, nothing reads a module-level one). `generate` and `compare` are the API's
    (and the MCP server's) tools, described by their docstrings and type hints (one line per argument under "Args:":
    Gradio reads no more)."""

    def __init__(self, pipe: PortraitRTPipeline) -> None:
        self.pipe = pipe

    def _generate(
        self,
        refs,
        audio,
        guidance_audio,
        guidance_reference,
        steps,
        seed,
        block_size,
        name,
        session=None,
        paste_back=True,
    ):
        """One offline generation -> (mp4 path, `Generated`), in memory that does not grow with the clip: each block
        goes to the mp4 writer and the lip-sync measures as it is made (on the model's square crop, whatever is
        written). `session`: the Gradio session whose folder it goes to; `paste_back`: write the photo with the face
        pasted back (else the square crop)."""
        speech = load_speech(audio, limits.MAX_AUDIO_S)
        with user_errors():
            generator = make_generator(seed)
        references = collect_references(*refs, resolution=self.pipe.resolution)  # each aligned on its face, once
        closed = references[0].crop if references[0].in_training_framing else None  # the mouth measure's reference
        with user_errors():
            blocks = self.pipe.generate_blocks(
                reference_images=references,
                audio=speech,
                guidance_audio=float(guidance_audio),
                guidance_reference=float(guidance_reference),
                num_inference_steps=int(steps),
                generator=generator,
                block_size=None if block_size is None else int(block_size),
                paste_back=paste_back,
            )
            path = Path(tempfile.mkdtemp(dir=limits.session_folder(OUTPUTS.name, session))) / f"{name}.mp4"
            audio_parts, mouth, darkening, timings = [], [], [], []
            with VideoWriter(path) as writer:
                for record in blocks:
                    writer.write(record.frames, record.audio)
                    audio_parts.append(record.audio)
                    mouth.append(mouth_opening(record.crop))
                    if closed is not None:
                        darkening.append(mouth_darkening(record.crop, closed))
                    timings.append(record.timing)
        mouth = np.concatenate(mouth)
        darkening = np.concatenate(darkening) if closed is not None else None
        return path, Generated(np.concatenate(audio_parts), mouth, darkening, timings, len(mouth))

    def generate(
        self,
        reference_1: str,
        speech_audio: str,
        reference_2: str | None = None,
        reference_3: str | None = None,
        guidance_audio: float = 2.0,
        guidance_reference: float = 2.0,
        steps: int = 12,
        seed: int = 0,
        block_size: int | None = None,
        result: str = RESULTS[0],
        request: gr.Request = None,
        progress=gr.Progress(track_tqdm=True),
    ) -> tuple[str, str | None, str]:
        """Make a talking-portrait video: the portrait in reference_1 says the speech in speech_audio (an mp4 with the
        speech as its audio track, 25 fps: the photo with its face found, animated and pasted back, or the model's
        square crop).

        Args:
            reference_1: The portrait to animate: an image file (PNG, JPEG, WebP, ...), a face seen from the front.
            speech_audio: The speech for the portrait to say: an audio file (wav, mp3, flac, ogg, ...), at most 120 s.
            reference_2: Optional second picture of the same person (another expression or angle); none by default.
            reference_3: Optional third picture of the same person; none by default.
            guidance_audio: Audio guidance scale, 1 to 4 (1 = off); higher makes the mouth follow the speech more.
            guidance_reference: Reference guidance scale, 1 to 4 (1 = off); higher keeps the face and background.
            steps: Denoising steps per block, 1 to 50 (12 in the paper); fewer is faster and rougher.
            seed: Random seed, a whole number from 0 to 2147483647; the same seed and inputs give the same video.
            block_size: Latent frames per block (1 = 4 video frames): smaller is lower latency, larger is faster.
            result: "Photo (face pasted back)", up to 1024 px, or "Square crop (the model's frame)", the model's size.

        Returns:
            The mp4 video with the speech, the lip-sync plot (PNG; None for a very short clip), a speed readout.
        """
        refs = (reference_1, reference_2, reference_3)
        session = request.session_hash if request is not None else None
        path, out = self._generate(
            refs,
            speech_audio,
            guidance_audio,
            guidance_reference,
            steps,
            seed,
            block_size,
            "portrait-rt",
            session,
            paste_back=result != RESULTS[1],
        )
        plot, sync = lipsync_plot(out.mouth, out.audio, path.parent, out.darkening)
        return str(path), plot and str(plot), f"{speed_readout(out.timings, out.num_frames)}\n\n{sync}"

    def compare(
        self,
        reference_1: str,
        speech_audio: str,
        reference_2: str | None = None,
        reference_3: str | None = None,
        guidance_audio_a: float = 2.0,
        guidance_reference_a: float = 2.0,
        guidance_audio_b: float = 3.0,
        guidance_reference_b: float = 3.0,
        steps: int = 12,
        seed: int = 0,
        block_size: int | None = None,
        request: gr.Request = None,
        progress=gr.Progress(),
    ) -> tuple[str, str, str, str]:
        """Make the same talking-portrait video at two guidance settings, A and B (same references, speech, steps
        and seed), to see what the guidance scales change.

        Args:
            reference_1: The portrait to animate: an image file (PNG, JPEG, WebP, ...), a face seen from the front.
            speech_audio: The speech for the portrait to say: an audio file (wav, mp3, flac, ogg, ...), at most 120 s.
            reference_2: Optional second picture of the same person; none by default.
            reference_3: Optional third picture of the same person; none by default.
            guidance_audio_a: Setting A's audio guidance scale, 1 to 4 (1 = off).
            guidance_reference_a: Setting A's reference guidance scale, 1 to 4 (1 = off).
            guidance_audio_b: Setting B's audio guidance scale, 1 to 4 (1 = off).
            guidance_reference_b: Setting B's reference guidance scale, 1 to 4 (1 = off).
            steps: Denoising steps per block, 1 to 50 (12 in the paper).
            seed: Random seed, a whole number from 0 to 2147483647.
            block_size: Latent frames per block (1 = 4 video frames): smaller is lower latency, larger is faster.

        Returns:
            Setting A's mp4, setting B's mp4, both side by side (labelled, one audio track), their lip-sync r.
        """
        refs, results = (reference_1, reference_2, reference_3), []
        session = request.session_hash if request is not None else None
        settings = (("A", guidance_audio_a, guidance_reference_a), ("B", guidance_audio_b, guidance_reference_b))
        for name, la, lr in settings:
            progress(len(results) / 2.2, desc=f"Setting {name}")
            path, out = self._generate(  # the square crops: the two settings side by side at the model's size
                refs, speech_audio, la, lr, steps, seed, block_size, f"setting-{name.lower()}", session, False
            )
            r = lipsync_r(out.mouth, out.audio, out.darkening)
            sync = "lip-sync r " + ("not measured (too short)" if r is None else f"{r:.2f}")
            results.append((path, out, f"{name}: λa {float(la):g}, λr {float(lr):g}", sync))
        progress(2 / 2.2, desc="Side by side")
        (path_a, out_a, *_), (path_b, _, *_) = results
        both = side_by_side(
            path_a.parent / "compare-a-b.mp4",
            [path_a, path_b],
            [[label, sync] for _, _, label, sync in results],
            out_a.audio,
            SAMPLE_RATE,
        )
        readout = " · ".join(f"**{label}**, {sync}" for _, _, label, sync in results)
        return str(path_a), str(path_b), str(both), readout

    def live(
        self,
        reference_1,
        reference_2,
        reference_3,
        guidance_audio,
        guidance_reference,
        steps,
        seed,
        block_size,
        session: LiveSession,
    ):
        """Live mode: microphone chunks from `session` -> streamed video segments (with their audio) + readout."""
        if not session.begin():
            gr.Warning("A live stream is already running in this tab; wait for it to finish, then record again.")
            yield gr.skip(), gr.skip()
            return
        waited = time.monotonic()
        while not session.chunks and time.monotonic() - waited < FIRST_AUDIO_S:  # a call without a microphone
            time.sleep(0.05)
        if not session.chunks:
            session.end()
            raise gr.Error("Microphone: no audio arrived; allow the browser to use the microphone, then record again.")
        out_dir = tempfile.mkdtemp(prefix="live-", dir=OUTPUTS.name)  # under OUTPUTS: gone with the process
        try:
            try:
                with user_errors():
                    stream = self.pipe.start_stream(
                        collect_references(reference_1, reference_2, reference_3, resolution=self.pipe.resolution),
                        guidance_audio=float(guidance_audio),
                        guidance_reference=float(guidance_reference),
                        num_inference_steps=int(steps),
                        generator=make_generator(seed),
                        block_size=int(block_size),
                        paste_back=False,  # live segments at the model's size: less to encode and send per block
                    )
            except gr.Error:
                session.fail()  # this recording's audio must not leak into the next stream
                raise
            yield gr.skip(), "Listening… the first video segment comes after about a second of audio."
            live_stream = LiveStream(self.pipe, stream, out_dir)
            for segment, readout in run_live(live_stream, session):
                yield str(segment), readout
            if live_stream.frames_written == 0:
                gr.Warning("No audio came from the microphone; check the browser's microphone permission.")
            yield gr.skip(), f"{live_stream.readout()} · stream finished."
        finally:
            session.end()
            shutil.rmtree(out_dir, ignore_errors=True)  # Gradio has copied each segment once it was yielded


def admit_offline_job(request: gr.Request, *inputs):
    """Runs as a File/Compare job asks to join the queue (Gradio's `validator`): refuses a setting out of range, and,
    on the speech audio field, a job whose session already has its share of jobs or that finds the queue full."""
    checks = field_checks(*inputs)
    client = limits.client_key(request.headers, request.client.host if request.client else None)
    refusal = limits.offline_job_refusal(request.app.get_blocks(), "offline", request.session_hash, client)
    if refusal:
        checks[1] = gr.validate(False, refusal)  # inputs: Reference 1, the speech audio, References 2-3, settings
    return checks


def forget_session(request: gr.Request) -> None:
    """A tab closed: delete its videos and plots (Gradio has served its own copies)."""
    limits.forget_session(OUTPUTS.name, request.session_hash)


def live_ingest(chunk, session: LiveSession) -> None:
    """Microphone chunk -> the tab's queue (cheap; the live generator does the work)."""
    session.push(chunk)


def live_recording_starts(session: LiveSession) -> None:
    """A recording starts: nothing of an earlier one (refused by the settings check, say) may reach its stream."""
    session.start_recording()


def live_stop(session: LiveSession) -> None:
    session.stop()


# ---------------------------------------------------------------------------------------------- UI
def build_demo(pipe: PortraitRTPipeline, choice: ModelChoice) -> gr.Blocks:
    """The Blocks UI around the loaded pipeline `pipe` (`choice`: which model it is, for the About panel and the
    cached example); launch it with `css=page_css(pipe.resolution)`.

    First screen: what the Space does, a one-click example, the references and the Live/File tabs; the settings sit
    to the right on a desktop and below the tabs on a phone, so Record and Generate come first there.
    """
    handlers = Handlers(pipe)
    generate = spaces.GPU(duration=120)(handlers.generate)
    compare = spaces.GPU(duration=240)(handlers.compare)
    live = spaces.GPU(duration=LIVE_TIME_LIMIT_S + 30)(handlers.live)
    blocks = block_size_choices(pipe)
    default_block = int(pipe.transformer.config.block_size)
    example = cached_example(choice.model)  # None: not the shipped model, so the example is generated on click
    # No telemetry; Gradio's copies of inputs and outputs older than an hour are deleted hourly (all at exit).
    with gr.Blocks(title="portrait-rt", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        with gr.Row(elem_id="intro"):
            with gr.Column(scale=3):
                gr.Markdown(INTRO)
                example_btn = gr.Button(
                    "▶ Try the example" + ("" if example else " (generated now by the loaded model)"),
                    variant="primary",
                    elem_id="try-example",
                )
            gr.Image(
                str(PREVIEW / "preview.webp"),
                label="What the bundled model makes of a cartoon and of a photo",
                show_label=False,
                interactive=False,
                buttons=[],
                height=150,
                scale=2,
                elem_id="intro-preview",
            )
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row(elem_id="refs"):
                    ref1, ref2, ref3 = (
                        reference_image(1, "required"),
                        reference_image(2, "optional"),
                        reference_image(3, "optional"),
                    )
                with gr.Tabs() as tabs:
                    with gr.Tab("Live", id="live"):
                        # Low latency: the browser client (space/static/live.js) talks to `space.realtime` over a
                        # WebSocket.
                        with gr.Row():
                            gr.HTML(CLIENT_HTML)
                            with gr.Column():
                                rt_talk = gr.Button("Talk (low latency)", variant="primary", elem_id="rt-talk")
                                rt_hangup = gr.Button("Hang up", elem_id="rt-hangup")
                                rt_voice = gr.Checkbox(
                                    False,
                                    label="Play my voice with the video",
                                    info="Off: you see the portrait talk without hearing yourself echoed back.",
                                    elem_id="rt-voice",
                                )
                                rt_block = gr.Radio(
                                    blocks,
                                    value=default_block_size(pipe),
                                    label="Block size for Talk (latent frames)",
                                    info="1 = 4 video frames (160 ms): the lowest latency, where the machine keeps up "
                                    "(GPU).",
                                    elem_id="rt-block",
                                )
                        gr.Markdown("If the client above cannot connect: the Gradio recorder (about 3 s behind).")
                        session = gr.State(LiveSession())
                        with gr.Row():
                            mic = gr.Audio(sources=["microphone"], streaming=True, type="numpy", label="Microphone")
                            live_video = gr.Video(
                                label="Live video",
                                streaming=True,
                                autoplay=True,
                                elem_id="live-video",
                                elem_classes=["crisp"],
                            )
                        live_readout = gr.Markdown("Press record and talk.", elem_id="live-readout")
                    with gr.Tab("File", id="file"):
                        with gr.Row():
                            with gr.Column(scale=2, min_width=200):
                                file_audio = gr.Audio(
                                    sources=["upload"], type="filepath", label="Speech audio", elem_id="file-audio"
                                )
                                file_result = gr.Radio(
                                    list(RESULTS),
                                    value=RESULTS[0],
                                    label="Result",
                                    info="A photo: the face is found, animated and pasted back into the photo; or "
                                    "the square the model makes.",
                                    elem_id="file-result",
                                )
                                generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                            file_video = gr.Video(
                                label="Generated video",
                                elem_id="file-video",
                                elem_classes=["crisp"],
                                buttons=["download"],
                                autoplay=True,
                                scale=3,
                                min_width=200,
                            )
                        file_readout = gr.Markdown(elem_id="file-readout")
                        with gr.Accordion("Lip-sync plot (eval tools)", open=False, elem_id="lipsync-toggle"):
                            file_plot = gr.Image(label="Lip sync (eval tools)", type="filepath", elem_id="lipsync")
                        gr.Examples(
                            [[str(EXAMPLES / f"portrait_{c}.png"), str(EXAMPLES / f"speech_{c}.wav")] for c in "abc"]
                            + [[str(PREVIEW / "photo.jpg"), str(EXAMPLE_SPEECH)]],
                            inputs=[ref1, file_audio],
                            label="More examples (the last is a real photograph as uploaded: its face is found and "
                            "pasted back; the mouth comes out a cartoon's)",
                            cache_examples=False,
                        )
                    with gr.Tab("Compare", id="compare"):
                        gr.Markdown(
                            "The same references, audio, steps and seed at two guidance settings. **Setting A is the "
                            "guidance sliders (λa, λr) at the top right**; set B here."
                        )
                        with gr.Row():
                            cmp_audio = gr.Audio(
                                sources=["upload"], type="filepath", label="Speech audio", elem_id="cmp-audio"
                            )
                            with gr.Column():
                                guidance_audio_b = gr.Slider(
                                    GUIDANCE_AUDIO.low,
                                    GUIDANCE_AUDIO.high,
                                    value=3,
                                    step=0.1,
                                    label="B: audio guidance λa",
                                )
                                guidance_reference_b = gr.Slider(
                                    GUIDANCE_REFERENCE.low,
                                    GUIDANCE_REFERENCE.high,
                                    value=3,
                                    step=0.1,
                                    label="B: reference guidance λr",
                                )
                        compare_btn = gr.Button("Compare", variant="primary", elem_id="compare")
                        cmp_readout = gr.Markdown(elem_id="cmp-readout")
                        with gr.Row():
                            video_a = gr.Video(label="Setting A", elem_id="video-a", elem_classes=["crisp-small"])
                            video_b = gr.Video(label="Setting B", elem_id="video-b", elem_classes=["crisp-small"])
                        cmp_video = gr.Video(
                            label="A and B side by side, one audio track (download to share)",
                            elem_id="cmp-video",
                            buttons=["download"],
                        )
            with gr.Column(scale=2, min_width=260):
                gr.Markdown("**Settings** (Live, File, and Compare's setting A)")
                guidance_audio = gr.Slider(
                    GUIDANCE_AUDIO.low,
                    GUIDANCE_AUDIO.high,
                    value=2,
                    step=0.1,
                    label=GUIDANCE_AUDIO.label,
                    info="Higher: the mouth follows the speech more closely (lip sync).",
                )
                guidance_reference = gr.Slider(
                    GUIDANCE_REFERENCE.low,
                    GUIDANCE_REFERENCE.high,
                    value=2,
                    step=0.1,
                    label=GUIDANCE_REFERENCE.label,
                    info="Higher: face and background stay closer to the references (stability).",
                )
                with gr.Row():
                    steps = gr.Slider(
                        STEPS.low, STEPS.high, value=12, step=1, label=STEPS.label, info="12 in the paper"
                    )
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                block_size = gr.Radio(
                    blocks,
                    value=default_block,
                    label="Block size (latent frames)",
                    info="Smaller: lower latency. Larger: higher throughput. 1 = 4 video frames.",
                )
        settings = [check_setting(c) for c in (guidance_audio, guidance_reference, steps, seed, block_size)]
        setting_a = [guidance_audio, guidance_reference]
        setting_b = [check_setting(guidance_audio_b), check_setting(guidance_reference_b)]

        with gr.Accordion("About this model", open=choice.notice is not None):
            gr.Markdown(about_markdown(choice, pipe), elem_id="about")
            gr.Image(
                str(PREVIEW / "preview.webp"),
                label="Samples from the bundled model (made by scripts/make_preview.py)",
                interactive=False,
                buttons=[],
                elem_id="about-samples",
            )

        # Events. Live streams share one concurrency limit, offline jobs another, so neither starves the other.
        refs = [ref1, ref2, ref3]
        # The live generator hangs off `.then`, not off the microphone itself: Gradio's frontend ends every event
        # whose trigger is the microphone when its stream closes, which would drop the stream's last segments.
        mic.start_recording(live_recording_starts, [session], None, queue=False, api_visibility="private").then(
            live,
            refs + settings + [session],
            [live_video, live_readout],
            concurrency_limit=MAX_LIVE_STREAMS,
            concurrency_id="live",
            validator=field_checks,
            api_visibility="private",  # it streams what the page's microphone sends; nothing to call it with
        )
        mic.stream(
            live_ingest,
            [mic, session],
            None,
            stream_every=STREAM_EVERY_S,
            time_limit=LIVE_TIME_LIMIT_S,
            concurrency_limit=None,
            show_progress="hidden",
            api_visibility="private",
        )
        mic.stop_recording(live_stop, [session], None, queue=False, api_visibility="private")
        rt_talk.click(None, refs + settings[:-1] + [rt_block, rt_voice], None, js=START_JS)
        rt_hangup.click(None, None, None, js=STOP_JS)
        # File mode's job, from its button or from the example when nothing is cached: one at a time, admitted first.
        # Reference 1 and the speech first: the API's (and MCP tools') required inputs, then the optional ones.
        file_job = dict(
            fn=generate,
            inputs=[ref1, file_audio, ref2, ref3] + settings + [file_result],
            outputs=[file_video, file_plot, file_readout],
            concurrency_limit=1,
            concurrency_id="offline",
            validator=admit_offline_job,
        )
        generate_btn.click(**file_job, api_name="generate")
        compare_btn.click(
            compare,
            [ref1, cmp_audio, ref2, ref3] + setting_a + setting_b + [steps, seed, block_size],
            [video_a, video_b, cmp_video, cmp_readout],
            concurrency_id="offline",
            validator=admit_offline_job,
            api_name="compare",
        )
        # The one-click example: its inputs into Reference 1 and the File tab, then its result: the cached one if the
        # loaded model is the one that made it, else generated now with the settings on the page.
        shown = example_btn.click(
            lambda: (str(EXAMPLE_PORTRAIT), str(EXAMPLE_SPEECH), gr.Tabs(selected="file")),
            None,
            [ref1, file_audio, tabs],
            queue=False,
            api_visibility="private",  # the page's own helpers, not tools (they were /lambda and /lambda_1)
        )
        if example is not None:
            shown.then(
                lambda: (str(example.video), example.plot and str(example.plot), example.readout),
                None,
                [file_video, file_plot, file_readout],
                queue=False,
                api_visibility="private",
            )
        else:
            shown.then(**file_job, api_visibility="private")  # the same job as /generate
        demo.unload(forget_session)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="app.py", description=__doc__.splitlines()[0])  # --help shows every default
    add_model_arguments(parser)
    port, host = os.environ.get("GRADIO_SERVER_PORT", "7860"), os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(port), help="port to serve on ($GRADIO_SERVER_PORT)")
    parser.add_argument("--host", default=host, help="address to serve on, 0.0.0.0 for all ($GRADIO_SERVER_NAME)")
    args = parser.parse_args(argv)
    # SIGTERM (a Space restarting, `kill`) ends the server as Ctrl-C does: Gradio's launch() closes it, its shutdown
    # deletes Gradio's copies of inputs and outputs, and at exit OUTPUTS goes. Python's default would end the process
    # at once, leaving both behind in the temporary folder.
    signal.signal(signal.SIGTERM, _interrupt)
    # tempfile's folder from here on (the video writers' scratch files): a job still running at the end leaves them
    scratch = tempfile.TemporaryDirectory(prefix="portrait-rt-scratch-")
    tempfile.tempdir = scratch.name
    try:
        pipe, choice = load_from_args(args)
    except (ValueError, OSError) as error:  # a missing model folder, a device this machine lacks: one line, exit 2
        parser.error(" ".join(str(error).split()))
    pipe.set_progress_bar_config(disable=False)
    if spaces.config.Config.zero_gpu:
        zerogpu_fast_path(pipe)
    demo = build_demo(pipe, choice)
    # The whole queue has room for every live stream beyond the File/Compare jobs `admit_offline_job` lets wait.
    demo.queue(default_concurrency_limit=1, max_size=limits.OFFLINE_QUEUE + 4 * MAX_LIVE_STREAMS)
    live_server = server_from_env(pipe, LIVE_TIME_LIMIT_S)  # the low-latency live path, on the same server
    try:
        demo.launch(  # serves until Ctrl-C or SIGTERM
            server_name=args.host,
            server_port=args.port,
            show_error=True,
            max_file_size=f"{limits.MAX_UPLOAD_MB:g}mb",
            css=page_css(pipe.resolution),
            # (API errors name no server folder: Gradio's own refusals of crafted file paths would show it.)
            app_kwargs={"routes": live_server.routes(), "exception_handlers": {HTTPException: paths_hidden}},
            allowed_paths=[OUTPUTS.name],  # Gradio serves what is under the temporary folder, now `scratch`
            mcp_server=True,  # /generate and /compare as MCP tools, at /gradio_api/mcp/ (needs gradio[mcp])
        )
    finally:
        for folder in (OUTPUTS, GRADIO_CACHE, scratch):  # now: a job still running would hold the exit (below)
            folder.cleanup()


def zerogpu_fast_path(pipe: PortraitRTPipeline) -> None:
    """ZeroGPU, where torch.compile does not run: the fast path with G's and the VAE's repeated blocks compiled ahead
    of time, in one GPU call at start-up that records a warm-up at the page's default settings (File's and Talk's
    block sizes, one stream); other shapes (settings that drop a CFG row, other block sizes, batched streams) run
    those blocks eager. CUDA graphs stay off: each GPU call is a fresh process, they would be captured per call."""
    sizes = {int(pipe.transformer.config.block_size), default_block_size(pipe)}

    @spaces.GPU(duration=AOTI_COMPILE_S)
    def compile_blocks() -> dict:
        pipe.enable_fast_path(compile=False, cuda_graphs=False, overlap_decode=False)
        return aoti_compile_repeated_blocks(pipe, lambda: [pipe.warm_up(block_size=size) for size in sizes])

    pipe.enable_fast_path(compile=compile_blocks(), cuda_graphs=False)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
    # The server is closed and the folders are gone; a job still running in a worker thread would make Python's exit
    # wait for it (it joins executor threads), so a SIGTERM during a long job would not end the process.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
