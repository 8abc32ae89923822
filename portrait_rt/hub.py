"""Pipeline folders (local or on the Hub) loaded with this library's own classes.

A folder is what `PortraitRTPipeline.save_pretrained` writes: `model_index.json` names each component's class
(`["portrait_rt.models.vae", "CausalVideoVAE"]`, the scheduler is diffusers' own), each component's folder holds its
config.json and safetensors. The copy published to the Hub (`python -m portrait_rt export --hub-folder`) carries the
code as well, so that `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads it where portrait_rt is
not installed; its `model_index.json` names that code (`["vae_portrait_rt", "CausalVideoVAE"]`). diffusers would run
that copy whichever pipeline class asks, so `PortraitRTPipeline.from_pretrained` loads every component here, by
class name, with the installed classes.

Neither this module nor the pipeline's imports a model: the published pipeline code then holds no copy of the models
(each model's code is published once, beside its weights).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Iterator
from importlib import import_module

from diffusers import DiffusionPipeline, SchedulerMixin
from diffusers.configuration_utils import FrozenDict
from huggingface_hub import snapshot_download

PACKAGE = "portrait_rt"
MODEL_CLASSES = ("CausalVideoVAE", "FlowDiT", "AudioEncoder", "PretrainedAudioEncoder")  # portrait_rt's, by name
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")


def model_class(class_name: str) -> type:
    """This library's model class `class_name` (one of `MODEL_CLASSES`), imported on first use."""
    if class_name not in MODEL_CLASSES:
        raise ValueError(f"{class_name!r} is not a portrait_rt model; it has {', '.join(MODEL_CLASSES)}.")
    return getattr(import_module(PACKAGE), class_name)


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
        elif class_name in MODEL_CLASSES:
            component_class = model_class(class_name)
        else:
            raise ValueError(f"{folder}: component {name!r} is a {library}.{class_name}; portrait_rt cannot load it.")
        if issubclass(component_class, SchedulerMixin):
            components[name] = component_class.from_pretrained(folder, subfolder=name)
        else:
            components[name] = component_class.from_pretrained(folder, subfolder=name, **kwargs)
    return components


# Config keys a saved folder does not keep: `_name_or_path`, where diffusers records the folder each model was loaded
# from (a path of this machine's, meaningless where the folder is read next); `auto_map`, which points at remote code
# that a saved folder does not carry (`export --hub-folder` writes both the code and the pointer).
NOT_SAVED = ("_name_or_path", "auto_map")


@contextlib.contextmanager
def saveable_configs(components: Iterable) -> Iterator[None]:
    """The components' configs without the `NOT_SAVED` keys while the block runs (a `save_pretrained`)."""
    kept = []
    for component in components:
        config = getattr(component, "_internal_dict", None)
        if config is not None and any(key in config for key in NOT_SAVED):
            kept.append((component, config))
            component._internal_dict = FrozenDict({k: v for k, v in config.items() if k not in NOT_SAVED})
    try:
        yield
    finally:
        for component, config in kept:
            component._internal_dict = config


class _AutoMapIsExpected(logging.Filter):
    """diffusers warns that `auto_map` "was passed to <Model> but is not expected" whenever a model whose config.json
    has one is loaded, though `auto_map` is the Hub's (and diffusers' own `register_for_auto_class`) way to name a
    model's remote code. This drops that message when `auto_map` is the only unexpected key, and nothing else."""

    pattern = re.compile(r"The config attributes \{'auto_map': \{[^{}]*\}\} were passed to ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


logging.getLogger("diffusers.configuration_utils").addFilter(_AutoMapIsExpected())
