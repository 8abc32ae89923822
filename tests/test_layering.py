"""The import graph's rooms, read from the source (ast), not from what happens to be imported at run time.

- `portrait_rt.mouth` (the corpus's audio -> mouth rule and the mouth's colour key) sits below the renderer, the
  metrics and training, which all use it: it imports only the constants and the audio helpers;
- eval and training never import the renderer's internals: eval takes ground-truth clips through `render_clip`
  alone (the model report and the metrics' validation draw held-out clips), training nothing of the renderer;
- training never imports eval (the model report is eval's, `python -m portrait_rt eval report`);
- the library never imports the Space (`space`, `app`) or gradio.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "portrait_rt"
RENDERER = ("portrait_rt.data.synthetic", "portrait_rt.data.photo_look")
RENDERER_ENTRY = {"render_clip"}  # a ground-truth clip: what eval may take from the renderer


def _imports() -> dict[str, list[tuple[str, set[str]]]]:
    """Module name -> [(imported module, names imported from it)] for every module of the package."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if parts[-1] == "__init__" else module.rpartition(".")[0]
        found = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [(alias.name, set()) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, node.module] if node.module else base)
                found.append((target, {alias.name for alias in node.names}))
        graph[module] = found
    return graph


GRAPH = _imports()


def _in(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def test_the_graph_is_read():
    assert ("portrait_rt.mouth", {"key_distance", "key_membership", "audio_to_mouth_opening"}) in GRAPH[
        "portrait_rt.eval.metrics"
    ]


def test_the_mouth_rule_has_a_room_of_its_own():
    imported = {target for target, _ in GRAPH["portrait_rt.mouth"] if _in(target, "portrait_rt")}
    assert imported <= {"portrait_rt.constants", "portrait_rt.audio"}
    for user in ("portrait_rt.data.synthetic", "portrait_rt.eval.metrics", "portrait_rt.training.vae"):
        assert any(target == "portrait_rt.mouth" for target, _ in GRAPH[user]), user


def test_eval_and_training_never_import_the_renderers_internals():
    bad = []
    for module, imports in GRAPH.items():
        allowed = RENDERER_ENTRY if _in(module, "portrait_rt.eval") else set()
        if not (_in(module, "portrait_rt.eval") or _in(module, "portrait_rt.training")):
            continue
        for target, names in imports:
            if any(_in(target, r) for r in RENDERER) and not (names and names <= allowed):
                bad.append(f"{module} imports {sorted(names) or target} from {target}")
            if target == "portrait_rt.data" and names & {"synthetic", "photo_look"}:
                bad.append(f"{module} imports the renderer's module {sorted(names)}")
    assert not bad, "\n".join(bad)


def test_training_never_imports_eval():
    bad = [
        f"{module} imports {target}"
        for module, imports in GRAPH.items()
        if _in(module, "portrait_rt.training")
        for target, names in imports
        if _in(target, "portrait_rt.eval") or (target == "portrait_rt" and "eval" in names)
    ]
    assert not bad, "\n".join(bad)


def test_the_library_never_imports_the_space():
    bad = [
        f"{module} imports {target}"
        for module, imports in GRAPH.items()
        for target, _ in imports
        if target.split(".")[0] in ("space", "app", "gradio")  # (`spaces`, ZeroGPU's runtime, is a platform library)
    ]
    assert not bad, "\n".join(bad)
