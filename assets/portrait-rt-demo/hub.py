# portrait-rt 0.1.0: portrait_rt/hub.py, imports flattened by `python -m portrait_rt export`
"""Pipeline folders (local or on the Hub) loaded with this library's own classes.

An exported folder carries its own code (`pipeline_portrait_rt.py` beside `model_index.json`, each model's code in
its folder, `auto_map` in each model's config.json: `python -m portrait_rt export`), so that
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads it where portrait_rt is not installed.
diffusers runs that copy whenever `model_index.json` names it, whichever pipeline class asks, so
`PortraitRTPipeline.from_pretrained` loads each component here with the installed class instead.
"""

from __future__ import annotations

import logging
import os
import re
from importlib import import_module

from diffusers import DiffusionPipeline, SchedulerMixin
from huggingface_hub import snapshot_download

from .audio_encoder import AudioEncoder
from .pretrained_audio_encoder import PretrainedAudioEncoder
from .transformer import FlowDiT
from .vae import CausalVideoVAE

# model_index.json class name -> this library's class (whatever module the folder's own code calls it from)
COMPONENT_CLASSES = {cls.__name__: cls for cls in (CausalVideoVAE, FlowDiT, AudioEncoder, PretrainedAudioEncoder)}
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")


def load_components(pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> dict:
    """The components named in a pipeline folder's (or Hub repo's) `model_index.json`, by name, loaded with this
    library's classes; `dtype`, `variant`, ... go to each model's `from_pretrained`."""
    hub_kwargs = {name: kwargs.pop(name) for name in HUB_KWARGS if name in kwargs}
    kwargs.pop("trust_remote_code", None)  # the folder's own code is not run here
    folder = str(pretrained_model_name_or_path)
    if not os.path.isdir(folder):
        folder = snapshot_download(folder, **hub_kwargs)
    components = {}
    for name, entry in DiffusionPipeline.load_config(folder).items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        library, class_name = entry
        if library in ("diffusers", "transformers"):
            component_class = getattr(import_module(library), class_name)
        elif class_name in COMPONENT_CLASSES:
            component_class = COMPONENT_CLASSES[class_name]
        else:
            raise ValueError(f"{folder}: component {name!r} is a {library}.{class_name}; portrait_rt cannot load it.")
        if issubclass(component_class, SchedulerMixin):
            components[name] = component_class.from_pretrained(folder, subfolder=name)
        else:
            components[name] = component_class.from_pretrained(folder, subfolder=name, **kwargs)
    return components


class _AutoMapIsExpected(logging.Filter):
    """diffusers warns that `auto_map` "was passed to <Model> but is not expected" whenever a model whose config.json
    has one is loaded, though `auto_map` is the Hub's (and diffusers' own `register_for_auto_class`) way to name a
    model's remote code. This drops that message when `auto_map` is the only unexpected key, and nothing else."""

    pattern = re.compile(r"The config attributes \{'auto_map': \{[^{}]*\}\} were passed to ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


logging.getLogger("diffusers.configuration_utils").addFilter(_AutoMapIsExpected())
