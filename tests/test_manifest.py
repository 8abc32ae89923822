"""The Space's manifest by Hugging Face's rules: README.md's front matter and requirements.txt, and the local set-up's
requirements-local.txt beside them (what the platform installs itself, pinned for a machine of our own).

The rules, from Hugging Face's Spaces documentation (config reference; ZeroGPU page, "Supported Versions"):
- `python_version`: one ZeroGPU runs (3.10.13, 3.12.12); the default 3.10 otherwise;
- `sdk_version` picks Gradio; `gradio`, `spaces` and `huggingface_hub` are installed by the platform, so
  requirements.txt must not name them (a pin of its own breaks ZeroGPU);
- torch: a requirement ZeroGPU has a build for (2.8 or later; ahead-of-time compilation needs 2.8), while the local
  set-up pins the CPU wheel this project is tested with;
- `startup_duration_timeout` (default 30 minutes) where start-up can be longer: on ZeroGPU ours compiles its blocks
  ahead of time at start-up, in a GPU call allowed `AOTI_COMPILE_S` (25 minutes), after installing and loading.
"""

import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
ZEROGPU_PYTHON = ("3.10", "3.12")  # 3.10.13 and 3.12.12 on the ZeroGPU page
ZEROGPU_TORCH = ("2.8.0", "2.9.1", "2.10.0", "2.11.0")  # the ZeroGPU page's full list ("2.8.0 to latest")
PLATFORM_MANAGED = {"gradio", "gradio-client", "spaces", "huggingface-hub"}


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n"), "README.md must open with the Space's YAML front matter"
    return yaml.safe_load(text.split("---\n", 2)[1])


def requirements(name: str) -> dict[str, Requirement]:
    """`name`'s requirements by canonical project name (its `-r` includes followed)."""
    found = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found.update(requirements(line[3:].strip()))
        elif line:
            req = Requirement(line)
            found[canonicalize_name(req.name)] = req
    return found


def test_front_matter_is_a_zerogpu_gradio_space():
    meta = front_matter()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and (ROOT / meta["app_file"]).is_file()
    python = str(meta["python_version"])  # quoted in YAML: 3.10 unquoted would read as 3.1
    assert re.fullmatch(r"3\.\d+(\.\d+)?", python) and ".".join(python.split(".")[:2]) in ZEROGPU_PYTHON
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(meta["sdk_version"]))
    timeout = re.fullmatch(r"(\d+)([mh])", meta["startup_duration_timeout"])
    compile_s = int(re.search(r"^AOTI_COMPILE_S = (\d+)", (ROOT / "app.py").read_text(), re.M)[1])
    assert timeout and int(timeout[1]) * {"m": 60, "h": 3600}[timeout[2]] >= compile_s + 10 * 60  # + set-up, loading


def test_requirements_leave_the_platforms_packages_to_the_platform():
    space = requirements("requirements.txt")
    assert not PLATFORM_MANAGED & set(space), f"requirements.txt must not name {PLATFORM_MANAGED & set(space)}"
    torch = space["torch"].specifier
    assert any(torch.contains(v) for v in ZEROGPU_TORCH), f"ZeroGPU has no torch build for {torch}"
    assert torch.contains("2.8.0") and not torch.contains("2.7.1")  # AoTI on ZeroGPU needs 2.8


def test_local_setup_pins_what_the_platform_provides():
    """requirements-local.txt (what scripts/setup.sh installs) pins torch inside the Space's range and `spaces`; the
    Gradio it runs is the Space's (`sdk_version`, which setup.sh reads), and this environment has exactly those."""
    space, local = requirements("requirements.txt"), requirements("requirements-local.txt")
    pinned = {name: next(iter(req.specifier)).version for name, req in local.items() if str(req.specifier)[:2] == "=="}
    assert {"torch", "spaces"} <= set(pinned) and "gradio" not in local  # Gradio is written once: sdk_version
    assert space["torch"].specifier.contains(pinned["torch"])
    for name, req in space.items():
        assert name in local and (local[name] == req or name == "torch"), f"{name}: local and Space differ"
    if Version(version("torch")).base_version != pinned["torch"] or version("spaces") != pinned["spaces"]:
        pytest.skip("this environment was not made by scripts/setup.sh")
    assert version("gradio") == str(front_matter()["sdk_version"]) and version("mcp")  # gradio[mcp]


FAKE_PYTHON = """#!/bin/sh
# a stand-in for .venv/bin/python: records pip runs, succeeds at everything else
[ "$1 $2" = "-m pip" ] && [ "$3" = install ] && echo "$*" >> "$(dirname "$0")/pip.log"
exit 0
"""


def test_setup_installs_the_spaces_gradio_and_skips_pip_when_nothing_changed(tmp_path):
    """scripts/setup.sh on a copy of the project, with a stand-in venv Python and dpkg (nothing is installed): the
    first run installs requirements-local.txt with gradio[mcp] at `sdk_version`, the second runs no pip at all, and a
    changed requirement runs it again."""
    for name in ("README.md", "packages.txt", "pyproject.toml", *(p.name for p in ROOT.glob("requirements*.txt"))):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup.sh").write_bytes((ROOT / "scripts" / "setup.sh").read_bytes())
    bin_ = tmp_path / ".venv" / "bin"
    bin_.mkdir(parents=True)
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for path, text in ((bin_ / "python", FAKE_PYTHON), (fakes / "dpkg", "#!/bin/sh\nexit 0\n")):
        path.write_text(text)
        path.chmod(0o755)
    env = {"PATH": f"{fakes}:/usr/bin:/bin", "HOME": str(tmp_path)}
    log = bin_ / "pip.log"

    def setup() -> str:
        run = subprocess.run(["bash", "scripts/setup.sh"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return run.stdout

    setup()
    sdk = front_matter()["sdk_version"]
    assert log.read_text().split() == [
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "-r",
        "requirements-local.txt",
        f"gradio[mcp]=={sdk}",
        "-e",
        ".",
    ]
    assert "up to date" in setup() and len(log.read_text().splitlines()) == 1  # nothing changed: no pip
    with open(tmp_path / "requirements.txt", "a") as f:
        f.write("tomli>=2\n")
    setup()
    assert len(log.read_text().splitlines()) == 2
