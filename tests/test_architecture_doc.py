"""docs/architecture.md matches the code: every `portrait_rt...` name it gives resolves, every file it names exists."""

import importlib
import inspect
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "architecture.md").read_text()


def _resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_name_resolves():
    names = set(re.findall(r"`(portrait_rt(?:\.\w+)+)`", DOC))
    assert len(names) >= 25
    missing = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, missing


def test_every_method_named_on_a_class_exists():
    """`FlowDiT.update_cache`-style names, and the `(method, ...)` lists after a class, are its attributes."""
    streaming, transformer = (importlib.import_module(f"portrait_rt.{m}") for m in ("streaming", "models.transformer"))
    short = {"KVCache": transformer.KVCache, "StreamAudio": streaming.StreamAudio, "Stream": streaming.Stream}
    for name in ("CausalVideoVAE", "FlowDiT", "PortraitRTPipeline"):
        short[name] = getattr(importlib.import_module("portrait_rt"), name)
    pattern = r"`(" + "|".join(short) + r")\.(\w+)`"
    found = [(short[owner], f"{owner}.{m}", m) for owner, m in re.findall(pattern, DOC)]
    for owner, lists in re.findall(r"`(portrait_rt(?:\.\w+)+)` \(([^)]*)\)", DOC):
        found += [(_resolve(owner), f"{owner}.{m}", m) for m in re.findall(r"`(\w+)`", lists)]
    assert len(found) >= 10
    missing = [
        label
        for cls, label, member in found
        if not (hasattr(cls, member) or member in inspect.unwrap(cls.__init__).__code__.co_names)  # set in __init__
    ]
    assert not missing, missing


def test_every_file_named_exists():
    paths = set(re.findall(r"`((?:portrait_rt|space|tests|assets|docs|scripts|benchmarks)/[\w./-]*|app\.py)`", DOC))
    assert len(paths) >= 10
    missing = [p for p in sorted(paths) if not (REPO / p).exists()]
    assert not missing, missing
