"""portrait-rt Space: talk into the microphone (or upload speech) and a portrait talks back, streamed as it is made.

    python app.py [--model PATH_OR_HUB_ID] [--port 7860] [--host 127.0.0.1]

Widgets and event wiring only: the library loads (`portrait_rt.loading`) and generates (`portrait_rt.pipeline`); the
Space's own helpers sit beside this file in `space/` (input checks, live mode, readouts, the lip-sync plot, About, the
page's intro and CSS, Compare's side-by-side mp4, the one-click example cached from the shipped model).

Live mode, low latency: "Talk" loads `space/static/live.js` in the page, which streams the microphone to
`space.realtime` over a WebSocket (mounted on this server at /live-rt) and plays the frames and audio sent back.
Live mode, the Gradio recorder (the fallback): the microphone's `.stream` event only queues chunks in the tab's
`LiveSession` (`gr.State`); the live generator, started by `.start_recording`, turns them into video segments for a
streaming `gr.Video`, and `.stop_recording` asks it to finish (the tail block is flushed, not lost). One stream per
tab: starting a second one while the first is still running shows a warning and that recording is ignored.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import spaces
from PIL import Image

from portrait_rt.constants import SAMPLE_RATE
from portrait_rt.eval.metrics import mouth_opening
from portrait_rt.loading import ModelChoice, add_model_arguments, load_from_args
from portrait_rt.video import VideoWriter
from space import limits
from space.compare import side_by_side
from space.examples import EXAMPLE_PORTRAIT, EXAMPLE_SPEECH, PREVIEW, cached_example
from space.inputs import (
    check_setting,
    collect_references,
    field_checks,
    load_speech,
    make_generator,
    user_errors,
)
from space.layout import INTRO, page_css
from space.live import LiveSession, LiveStream, run_live
from space.panels import about_markdown, block_size_choices, lipsync_plot, lipsync_r, speed_readout
from space.realtime import CLIENT_HTML, START_JS, STOP_JS, default_block_size, server_from_env

HERE = Path(__file__).parent
EXAMPLES = HERE / "assets" / "examples"
LIVE_TIME_LIMIT_S = 120  # one live stream's maximum length
STREAM_EVERY_S = 0.25  # microphone chunk period
MAX_LIVE_STREAMS = int(os.environ.get("PORTRAIT_RT_LIVE_STREAMS", "2"))  # concurrent live streams (all users)
FIRST_AUDIO_S = 3.0  # a live stream whose first microphone chunk has not come by then is given up

OUTPUTS = tempfile.TemporaryDirectory(prefix="portrait-rt-")  # this process's videos and plots, removed at exit
PIPE = None  # the pipeline, loaded once in main(); per-user state lives in gr.State, never here


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
    mouth: np.ndarray  # mouth opening measured per frame, for the lip-sync plot
    timings: list
    num_frames: int


def _generate(refs, audio, guidance_audio, guidance_reference, steps, seed, block_size, name: str, session=None):
    """One offline generation -> (mp4 path, `Generated`), in memory that does not grow with the clip: each block goes
    to the mp4 writer and the lip-sync measure as it is made. `session`: the Gradio session whose folder it goes to."""
    speech = load_speech(audio, limits.MAX_AUDIO_S)
    with user_errors("Seed"):
        generator = make_generator(seed)
    with user_errors():
        blocks = PIPE.generate_blocks(
            reference_images=collect_references(*refs, resolution=PIPE.resolution),
            audio=speech,
            guidance_audio=float(guidance_audio),
            guidance_reference=float(guidance_reference),
            num_inference_steps=int(steps),
            generator=generator,
            block_size=int(block_size),
        )
        path = Path(tempfile.mkdtemp(dir=limits.session_folder(OUTPUTS.name, session))) / f"{name}.mp4"
        audio_parts, mouth, timings = [], [], []
        with VideoWriter(path) as writer:
            for record in blocks:
                writer.write(record.frames, record.audio)
                audio_parts.append(record.audio)
                mouth.append(mouth_opening(record.frames))
                timings.append(record.timing)
    mouth = np.concatenate(mouth)
    return path, Generated(np.concatenate(audio_parts), mouth, timings, len(mouth))


@spaces.GPU(duration=120)
def generate(
    reference_1,
    reference_2,
    reference_3,
    speech_audio,
    guidance_audio,
    guidance_reference,
    steps,
    seed,
    block_size,
    request: gr.Request,
    progress=gr.Progress(track_tqdm=True),
):
    """File mode: the whole clip -> an mp4 with the audio, the lip-sync plot and a speed readout."""
    refs = (reference_1, reference_2, reference_3)
    path, out = _generate(
        refs,
        speech_audio,
        guidance_audio,
        guidance_reference,
        steps,
        seed,
        block_size,
        "portrait-rt",
        session=request.session_hash,
    )
    plot, sync = lipsync_plot(out.mouth, out.audio, path.parent)
    return str(path), plot and str(plot), f"{speed_readout(out.timings, out.num_frames)}\n\n{sync}"


@spaces.GPU(duration=240)
def compare(
    reference_1,
    reference_2,
    reference_3,
    speech_audio,
    guidance_audio_a,
    guidance_reference_a,
    guidance_audio_b,
    guidance_reference_b,
    steps,
    seed,
    block_size,
    request: gr.Request,
    progress=gr.Progress(),
):
    """The same references, audio and seed at two guidance settings (audio, reference): each setting's mp4, both
    side by side in one mp4 (labelled with their guidance and lip-sync r, one shared audio track), and a readout."""
    refs, results = (reference_1, reference_2, reference_3), []
    for name, la, lr in (("A", guidance_audio_a, guidance_reference_a), ("B", guidance_audio_b, guidance_reference_b)):
        progress(len(results) / 2.2, desc=f"Setting {name}")
        name_out = f"setting-{name.lower()}"
        path, out = _generate(
            refs, speech_audio, la, lr, steps, seed, block_size, name_out, session=request.session_hash
        )
        r = lipsync_r(out.mouth, out.audio)
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


@spaces.GPU(duration=LIVE_TIME_LIMIT_S + 30)
def live(
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
    while not session.chunks and time.monotonic() - waited < FIRST_AUDIO_S:  # a call without a microphone: no slot
        time.sleep(0.05)
    if not session.chunks:
        session.end()
        raise gr.Error("Microphone: no audio arrived; allow the browser to use the microphone, then record again.")
    out_dir = tempfile.mkdtemp(prefix="portrait-rt-live-")
    try:
        try:
            with user_errors():
                stream = PIPE.start_stream(
                    collect_references(reference_1, reference_2, reference_3, resolution=PIPE.resolution),
                    guidance_audio=float(guidance_audio),
                    guidance_reference=float(guidance_reference),
                    num_inference_steps=int(steps),
                    generator=make_generator(seed),
                    block_size=int(block_size),
                )
        except gr.Error:
            session.fail()  # this recording's audio must not leak into the next stream
            raise
        yield gr.skip(), "Listening… the first video segment comes after about a second of audio."
        live_stream = LiveStream(PIPE, stream, out_dir)
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
    refusal = limits.offline_job_refusal(request.app.get_blocks(), "offline", request.session_hash)
    if refusal:
        checks[3] = gr.validate(False, refusal)  # inputs: 3 references, the speech audio, the settings
    return checks


def forget_session(request: gr.Request) -> None:
    """A tab closed: delete its videos and plots (Gradio has served its own copies)."""
    limits.forget_session(OUTPUTS.name, request.session_hash)


def live_ingest(chunk, session: LiveSession) -> None:
    """Microphone chunk -> the tab's queue (cheap; the live generator does the work)."""
    session.push(chunk)


def live_stop(session: LiveSession) -> None:
    session.stop()


# ---------------------------------------------------------------------------------------------- UI
def build_demo(choice: ModelChoice) -> gr.Blocks:
    """The Blocks UI around the loaded pipeline `PIPE` (launch it with `css=page_css(PIPE.resolution)`).

    First screen: what the Space does, a one-click example, the references and the Live/File tabs; the settings sit
    to the right on a desktop and below the tabs on a phone, so Record and Generate come first there.
    """
    blocks = block_size_choices(PIPE)
    default_block = int(PIPE.transformer.config.block_size)
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
                                    value=default_block_size(PIPE),
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
                            label="More examples (the last is a real photograph: the mouth comes out a cartoon's)",
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
                                guidance_audio_b = gr.Slider(1, 4, value=3, step=0.1, label="B: audio guidance λa")
                                guidance_reference_b = gr.Slider(
                                    1, 4, value=3, step=0.1, label="B: reference guidance λr"
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
                    1,
                    4,
                    value=2,
                    step=0.1,
                    label="Audio guidance λa",
                    info="Higher: the mouth follows the speech more closely (lip sync).",
                )
                guidance_reference = gr.Slider(
                    1,
                    4,
                    value=2,
                    step=0.1,
                    label="Reference guidance λr",
                    info="Higher: face and background stay closer to the references (stability).",
                )
                with gr.Row():
                    steps = gr.Slider(1, 50, value=12, step=1, label="Denoising steps", info="12 in the paper")
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
            gr.Markdown(about_markdown(choice, PIPE), elem_id="about")
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
        mic.start_recording(None, None, None, queue=False).then(
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
        file_job = dict(
            fn=generate,
            inputs=refs + [file_audio] + settings,
            outputs=[file_video, file_plot, file_readout],
            concurrency_limit=1,
            concurrency_id="offline",
            validator=admit_offline_job,
        )
        generate_btn.click(**file_job)
        compare_btn.click(
            compare,
            refs + [cmp_audio] + setting_a + setting_b + [steps, seed, block_size],
            [video_a, video_b, cmp_video, cmp_readout],
            concurrency_id="offline",
            validator=admit_offline_job,
        )
        # The one-click example: its inputs into Reference 1 and the File tab, then its result: the cached one if the
        # loaded model is the one that made it, else generated now with the settings on the page.
        shown = example_btn.click(
            lambda: (str(EXAMPLE_PORTRAIT), str(EXAMPLE_SPEECH), gr.Tabs(selected="file")),
            None,
            [ref1, file_audio, tabs],
            queue=False,
        )
        if example is not None:
            shown.then(
                lambda: (str(example.video), example.plot and str(example.plot), example.readout),
                None,
                [file_video, file_plot, file_readout],
                queue=False,
            )
        else:
            shown.then(**file_job)
        demo.unload(forget_session)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    args = parser.parse_args(argv)

    global PIPE
    PIPE, choice = load_from_args(args)
    PIPE.set_progress_bar_config(disable=False)
    demo = build_demo(choice)
    # The whole queue has room for every live stream beyond the File/Compare jobs `admit_offline_job` lets wait.
    demo.queue(default_concurrency_limit=1, max_size=limits.OFFLINE_QUEUE + 4 * MAX_LIVE_STREAMS)
    live_server = server_from_env(PIPE, LIVE_TIME_LIMIT_S)  # the low-latency live path, on the same server
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        show_error=True,
        max_file_size=f"{limits.MAX_UPLOAD_MB:g}mb",
        css=page_css(PIPE.resolution),
        app_kwargs={"routes": live_server.routes()},
    )


if __name__ == "__main__":
    main()
