"""portrait-rt Space: talk into the microphone (or upload speech) and a portrait talks back, streamed as it is made.

    python app.py [--model PATH_OR_HUB_ID] [--port 7860] [--host 127.0.0.1]

Widgets and event wiring only: the library loads (`portrait_rt.loading`) and generates (`portrait_rt.pipeline`); the
Space's own helpers sit beside this file in `space/` (input checks, live mode, readouts, the lip-sync plot, About).

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
from pathlib import Path

import gradio as gr
import spaces
from PIL import Image

from portrait_rt.loading import ModelChoice, add_model_arguments, load_from_args
from portrait_rt.video import write_video
from space.inputs import collect_references, make_generator, require_audio, user_errors
from space.live import LiveSession, LiveStream, run_live
from space.panels import about_markdown, block_size_choices, lipsync_plot, speed_readout
from space.realtime import CLIENT_HTML, START_JS, STOP_JS, default_block_size, server_from_env

HERE = Path(__file__).parent
EXAMPLES = HERE / "assets" / "examples"
LIVE_TIME_LIMIT_S = 120  # one live stream's maximum length
STREAM_EVERY_S = 0.25  # microphone chunk period
MAX_LIVE_STREAMS = int(os.environ.get("PORTRAIT_RT_LIVE_STREAMS", "2"))  # concurrent live streams (all users)

OUTPUTS = tempfile.TemporaryDirectory(prefix="portrait-rt-")  # this process's videos and plots, removed at exit
PIPE = None  # the pipeline, loaded once in main(); per-user state lives in gr.State, never here


def reference_image(index: int, kind: str) -> gr.Image:
    """A reference slot that answers a file it cannot open with a clear message rather than a traceback.

    (Wrapping the instance's `preprocess` rather than subclassing: Gradio writes a `.pyi` stub beside any module that
    defines a component class.)
    """
    label = f"Reference {index} ({kind})"
    image = gr.Image(label=label, type="filepath", sources=["upload"], height=220, elem_id=f"ref{index}")
    preprocess = image.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except Image.DecompressionBombError:
            raise gr.Error("That image is far too large; upload a portrait under 40 megapixels.") from None
        except (OSError, SyntaxError):
            name = getattr(payload, "orig_name", None) or "That file"
            raise gr.Error(f"{name} is not an image this app can read; upload a PNG, JPEG or WebP portrait.") from None

    image.preprocess = checked
    return image


# ---------------------------------------------------------------------------------------------- GPU entry points
def _generate(refs, audio, guidance_audio, guidance_reference, steps, seed, block_size, name: str):
    """One offline generation -> (mp4 path, pipeline output)."""
    with user_errors():
        out = PIPE(
            reference_images=collect_references(*refs),
            audio=require_audio(audio),
            guidance_audio=float(guidance_audio),
            guidance_reference=float(guidance_reference),
            num_inference_steps=int(steps),
            generator=make_generator(seed),
            block_size=int(block_size),
        )
    path = Path(tempfile.mkdtemp(dir=OUTPUTS.name)) / f"{name}.mp4"
    return write_video(path, out.frames, out.audio, out.sample_rate), out


@spaces.GPU(duration=120)
def generate(
    ref1,
    ref2,
    ref3,
    audio,
    guidance_audio,
    guidance_reference,
    steps,
    seed,
    block_size,
    progress=gr.Progress(track_tqdm=True),
):
    """File mode: the whole clip -> an mp4 with the audio, the lip-sync plot and a speed readout."""
    refs = (ref1, ref2, ref3)
    path, out = _generate(refs, audio, guidance_audio, guidance_reference, steps, seed, block_size, "portrait-rt")
    plot, sync = lipsync_plot(out.frames, out.audio, path.parent)
    return str(path), plot and str(plot), f"{speed_readout(out.timings, len(out.frames))}\n\n{sync}"


@spaces.GPU(duration=240)
def compare(
    ref1,
    ref2,
    ref3,
    audio,
    guidance_audio_a,
    guidance_reference_a,
    guidance_audio_b,
    guidance_reference_b,
    steps,
    seed,
    block_size,
    progress=gr.Progress(),
):
    """The same references, audio and seed at two guidance settings (audio, reference), side by side."""
    progress(0.0, desc="Setting A")
    path_a, _ = _generate(
        (ref1, ref2, ref3), audio, guidance_audio_a, guidance_reference_a, steps, seed, block_size, "setting-a"
    )
    progress(0.5, desc="Setting B")
    path_b, _ = _generate(
        (ref1, ref2, ref3), audio, guidance_audio_b, guidance_reference_b, steps, seed, block_size, "setting-b"
    )
    return str(path_a), str(path_b)


@spaces.GPU(duration=LIVE_TIME_LIMIT_S + 30)
def live(ref1, ref2, ref3, guidance_audio, guidance_reference, steps, seed, block_size, session: LiveSession):
    """Live mode: microphone chunks from `session` -> streamed video segments (with their audio) + readout."""
    if not session.begin():
        gr.Warning("A live stream is already running in this tab; wait for it to finish, then record again.")
        yield gr.skip(), gr.skip()
        return
    out_dir = tempfile.mkdtemp(prefix="portrait-rt-live-")
    try:
        try:
            with user_errors():
                stream = PIPE.start_stream(
                    collect_references(ref1, ref2, ref3),
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


def live_ingest(chunk, session: LiveSession) -> None:
    """Microphone chunk -> the tab's queue (cheap; the live generator does the work)."""
    session.push(chunk)


def live_stop(session: LiveSession) -> None:
    session.stop()


# ---------------------------------------------------------------------------------------------- UI
def build_demo(choice: ModelChoice) -> gr.Blocks:
    """The Blocks UI around the loaded pipeline `PIPE`."""
    blocks = block_size_choices(PIPE)
    default_block = int(PIPE.transformer.config.block_size)
    # No telemetry; Gradio's copies of inputs and outputs older than an hour are deleted hourly (all at exit).
    with gr.Blocks(title="portrait-rt", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# portrait-rt: real-time talking portraits\n"
            "Give 1-3 portraits of one face, then talk (**Live**) or upload speech (**File**). The video is made "
            "block by block (a causal VAE and a blockwise-autoregressive diffusion transformer), so it streams."
        )
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    ref1, ref2, ref3 = (
                        reference_image(1, "required"),
                        reference_image(2, "optional"),
                        reference_image(3, "optional"),
                    )
            with gr.Column(scale=2):
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
        settings = [guidance_audio, guidance_reference, steps, seed, block_size]

        with gr.Tabs():
            with gr.Tab("Live", id="live"):
                # Low latency: the browser client (space/static/live.js) talks to `space.realtime` over a WebSocket.
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
                            info="1 = 4 video frames (160 ms): the lowest latency, where the machine keeps up (GPU).",
                            elem_id="rt-block",
                        )
                gr.Markdown("If the client above cannot connect: the Gradio recorder (about 3 s behind).")
                session = gr.State(LiveSession())
                with gr.Row():
                    mic = gr.Audio(sources=["microphone"], streaming=True, type="numpy", label="Microphone")
                    live_video = gr.Video(label="Live video", streaming=True, autoplay=True, elem_id="live-video")
                live_readout = gr.Markdown("Press record and talk.", elem_id="live-readout")
            with gr.Tab("File", id="file"):
                with gr.Row():
                    with gr.Column():
                        file_audio = gr.Audio(
                            sources=["upload"], type="filepath", label="Speech audio", elem_id="file-audio"
                        )
                        generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    file_video = gr.Video(label="Generated video", elem_id="file-video", buttons=["download"])
                file_plot = gr.Image(label="Lip sync (eval tools)", type="filepath", elem_id="lipsync")
                file_readout = gr.Markdown(elem_id="file-readout")
                gr.Examples(
                    [[str(EXAMPLES / f"portrait_{c}.png"), str(EXAMPLES / f"speech_{c}.wav")] for c in "abc"],
                    inputs=[ref1, file_audio],
                    cache_examples=False,
                )
            with gr.Tab("Compare", id="compare"):
                gr.Markdown("The same references, audio and seed at two guidance settings, side by side.")
                with gr.Row():
                    cmp_audio = gr.Audio(
                        sources=["upload"], type="filepath", label="Speech audio", elem_id="cmp-audio"
                    )
                    with gr.Column():
                        guidance_audio_a = gr.Slider(1, 4, value=1, step=0.1, label="A: audio guidance λa")
                        guidance_reference_a = gr.Slider(1, 4, value=1, step=0.1, label="A: reference guidance λr")
                    with gr.Column():
                        guidance_audio_b = gr.Slider(1, 4, value=3, step=0.1, label="B: audio guidance λa")
                        guidance_reference_b = gr.Slider(1, 4, value=3, step=0.1, label="B: reference guidance λr")
                setting_a, setting_b = (
                    [guidance_audio_a, guidance_reference_a],
                    [guidance_audio_b, guidance_reference_b],
                )
                compare_btn = gr.Button("Compare", variant="primary", elem_id="compare")
                with gr.Row():
                    video_a = gr.Video(label="Setting A", elem_id="video-a")
                    video_b = gr.Video(label="Setting B", elem_id="video-b")

        with gr.Accordion("About this model", open=choice.notice is not None):
            gr.Markdown(about_markdown(choice, PIPE), elem_id="about")

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
        )
        mic.stream(
            live_ingest,
            [mic, session],
            None,
            stream_every=STREAM_EVERY_S,
            time_limit=LIVE_TIME_LIMIT_S,
            concurrency_limit=None,
            show_progress="hidden",
        )
        mic.stop_recording(live_stop, [session], None, queue=False)
        rt_talk.click(None, refs + settings[:-1] + [rt_block, rt_voice], None, js=START_JS)
        rt_hangup.click(None, None, None, js=STOP_JS)
        generate_btn.click(
            generate,
            refs + [file_audio] + settings,
            [file_video, file_plot, file_readout],
            concurrency_limit=1,
            concurrency_id="offline",
        )
        compare_btn.click(
            compare,
            refs + [cmp_audio] + setting_a + setting_b + [steps, seed, block_size],
            [video_a, video_b],
            concurrency_id="offline",
        )
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
    demo.queue(default_concurrency_limit=1, max_size=32)
    live_server = server_from_env(PIPE, LIVE_TIME_LIMIT_S)  # the low-latency live path, on the same server
    demo.launch(
        server_name=args.host, server_port=args.port, show_error=True, app_kwargs={"routes": live_server.routes()}
    )


if __name__ == "__main__":
    main()
