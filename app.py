"""portrait-rt Space: talk into the microphone (or upload speech) and a portrait talks back, streamed as it is made.

    python app.py [--model PATH_OR_HUB_ID] [--port 7860] [--host 127.0.0.1]

Widgets and event wiring only: the library loads (`portrait_rt.loading`) and generates (`portrait_rt.pipeline`); the
Space's own helpers sit beside this file in `space/` (input checks, live mode, readouts, the lip-sync plot, About, the
page's intro and CSS, Compare's side-by-side mp4, the one-click example cached from the shipped model).

Live mode: the microphone's `.stream` event only queues chunks in the tab's `LiveSession` (`gr.State`); the live
generator, started by `.start_recording`, turns them into video segments for a streaming `gr.Video`, and
`.stop_recording` asks it to finish (the tail block is flushed, not lost). One stream per tab: starting a second
one while the first is still running shows a warning and that recording is ignored.
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
from space.compare import side_by_side
from space.examples import EXAMPLE_PORTRAIT, EXAMPLE_SPEECH, PREVIEW, cached_example
from space.inputs import collect_references, make_generator, require_audio, user_errors
from space.layout import INTRO, page_css
from space.live import LiveSession, LiveStream, run_live
from space.panels import about_markdown, block_size_choices, lipsync_plot, lipsync_r, speed_readout

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
    """The same references, audio and seed at two guidance settings (audio, reference): each setting's mp4, both
    side by side in one mp4 (labelled with their guidance and lip-sync r, one shared audio track), and a readout."""
    refs, results = (ref1, ref2, ref3), []
    for name, la, lr in (("A", guidance_audio_a, guidance_reference_a), ("B", guidance_audio_b, guidance_reference_b)):
        progress(len(results) / 2.2, desc=f"Setting {name}")
        path, out = _generate(refs, audio, la, lr, steps, seed, block_size, f"setting-{name.lower()}")
        r = lipsync_r(out.frames, out.audio)
        sync = "lip-sync r " + ("not measured (too short)" if r is None else f"{r:.2f}")
        results.append((path, out, f"{name}: λa {float(la):g}, λr {float(lr):g}", sync))
    progress(2 / 2.2, desc="Side by side")
    (path_a, out_a, *_), (path_b, out_b, *_) = results
    both = side_by_side(
        path_a.parent / "compare-a-b.mp4",
        [out_a.frames, out_b.frames],
        [[label, sync] for _, _, label, sync in results],
        out_a.audio,
        out_a.sample_rate,
    )
    readout = " · ".join(f"**{label}**, {sync}" for _, _, label, sync in results)
    return str(path_a), str(path_b), str(both), readout


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
                            label="More examples (the last is a real photograph: the bundled model smears it)",
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
        settings = [guidance_audio, guidance_reference, steps, seed, block_size]
        setting_a, setting_b = [guidance_audio, guidance_reference], [guidance_audio_b, guidance_reference_b]

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
            [video_a, video_b, cmp_video, cmp_readout],
            concurrency_id="offline",
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
            shown.then(
                generate,
                refs + [file_audio] + settings,
                [file_video, file_plot, file_readout],
                concurrency_limit=1,
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
    demo.launch(server_name=args.host, server_port=args.port, show_error=True, css=page_css(PIPE.resolution))


if __name__ == "__main__":
    main()
