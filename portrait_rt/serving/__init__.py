"""Serving live sessions beyond the Space: Ray Serve replicas (`portrait_rt.serving.ray_app`) and a Pipecat frame
processor for voice agents (`portrait_rt.serving.pipecat_avatar`). Both are optional extras (`pip install
'portrait-rt[serve]'`); nothing here is imported by `import portrait_rt`."""
