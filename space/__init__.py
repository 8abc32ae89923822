"""The Space's own code, beside `app.py`: what the Gradio UI needs besides widgets, kept out of the library.

- `space.inputs`: checks of what the user uploaded, and the library's `ValueError`s shown as `gr.Error` pop-ups;
- `space.live`: live mode: the tab's `LiveSession` (a `gr.State`), `LiveStream` (a pipeline stream's block records
  -> `.ts` segments, each with the audio its blocks carry) and `run_live`, the loop between them;
- `space.realtime`: the low-latency live path: a WebSocket per browser tab (mounted on the app's server at
  /live-rt) and the page's client (`space/static/live.js`, plain JavaScript), built from the library's
  `portrait_rt.serving.protocol` (its messages), `space.session` (one conversation: inbox, stream, when it ends)
  and `space.gate` (admission);
- `space.panels`: what the page shows: the speed readout, the lip-sync plot, the About text, the block sizes.

`app.py` builds widgets and wires events to these; the pipeline is loaded by `portrait_rt.loading`, like everywhere
else. The library (`portrait_rt`) never imports gradio or this package.
"""
