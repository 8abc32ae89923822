"""The Space as API clients and MCP clients see it, and how it ends: one `python app.py` (tiny random pipeline), run
from an empty working folder with its own temporary folders.

- MCP (`launch(mcp_server=True)`, the Spaces convention): the tools listed over the streamable-HTTP transport at
  /gradio_api/mcp/ are File mode's `generate` and Compare's `compare`, described by their docstrings;
- the API: no page helpers (`/lambda`, `/lambda_1`), only References 1 and the speech required, and `block_size` taken
  as the API page's own snippet sends it (the string "4");
- SIGTERM (a Space restarting, `kill`): the server closes and leaves nothing in the temporary folders or the working
  folder.
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
TOOLS = {"generate", "compare"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(url, process, folders): `python app.py` on the tiny pipeline, cwd an empty folder, TMPDIR and GRADIO_TEMP_DIR
    folders of its own."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("cwd", "tmp", "gradio")}
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PORTRAIT_RT_MODEL": "preset:tiny",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(folders["tmp"]),
        "GRADIO_TEMP_DIR": str(folders["gradio"]),
    }
    log = tmp_path_factory.mktemp("log") / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--port", str(port)],
            cwd=folders["cwd"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        import httpx

        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(url + "gradio_api/info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "app.py did not start"
            time.sleep(1)
        yield url, proc, folders, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _mcp_tools(url: str) -> list:
    """The tools an MCP client lists at the Space's MCP endpoint (streamable HTTP), through the `mcp` package."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def listing():
        async with streamable_http_client(url + "gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return (await session.list_tools()).tools

    return asyncio.run(listing())


def test_mcp_server_lists_generate_and_compare_described_by_their_docstrings(app):
    url, *_ = app
    tools = {tool.name: tool for tool in _mcp_tools(url)}
    print({name: tool.inputSchema["required"] for name, tool in tools.items()})
    assert set(tools) == TOOLS
    generate, compare = tools["generate"], tools["compare"]
    assert generate.description.startswith("Make a talking-portrait video: the portrait in reference_1 says")
    assert compare.description.startswith("Make the same talking-portrait video at two guidance settings")
    for tool in tools.values():
        schema = tool.inputSchema
        assert schema["required"] == ["reference_1", "speech_audio"]  # References 2 and 3 are optional
        for name, prop in schema["properties"].items():  # every input described, in whole sentences
            text = prop.get("description", "")
            assert text.endswith((".", ")")) and text.count("(") == text.count(")"), f"{tool.name}.{name}: {text!r}"
        assert schema["properties"]["block_size"]["type"] == "integer"
        assert schema["properties"]["block_size"]["enum"] == [1, 2, 4]
    assert "guidance_audio_b" in compare.inputSchema["properties"]


def test_api_lists_only_the_tools_with_optional_references(app):
    from gradio_client import Client

    url, *_ = app
    api = Client(url, verbose=False).view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {f"/{t}" for t in TOOLS} and not api["unnamed_endpoints"]  # no /lambda
    for endpoint in api["named_endpoints"].values():
        optional = {p["parameter_name"] for p in endpoint["parameters"] if p["parameter_has_default"]}
        assert {"reference_2", "reference_3", "block_size"} <= optional
        assert not {"reference_1", "speech_audio"} & optional


def test_block_size_is_accepted_as_the_api_page_sends_it(app):
    """The API page's snippet types `block_size` as Literal['1', '2', '4'] and sends the string: it was refused."""
    from gradio_client import Client, handle_file

    url, *_ = app
    video, _plot, readout = Client(url, verbose=False).predict(
        reference_1=handle_file(str(EXAMPLES / "portrait_a.png")),
        speech_audio=handle_file(str(EXAMPLES / "speech_b.wav")),
        steps=2,
        block_size="4",
        api_name="/generate",
    )
    assert Path(video).is_file() and "50 frames (2.0 s) in 4 blocks" in readout  # 16 frames a block


def test_sigterm_ends_the_server_promptly_and_leaves_no_temporary_files(app):
    """After a Compare job (two videos, the side-by-side, uploads, Gradio's copies), SIGTERM during a File job ends
    the server within seconds, and nothing of it is left: not our outputs, not Gradio's copies, nothing in the
    working folder (before: the process died at once and left both temporary folders behind)."""
    from gradio_client import Client, handle_file
    from gradio_client.utils import Status

    url, proc, folders, log = app
    client = Client(url, verbose=False)
    portrait, speech = handle_file(str(EXAMPLES / "portrait_a.png")), handle_file(str(EXAMPLES / "speech_a.wav"))
    client.predict(portrait, speech, steps=1, api_name="/compare")
    assert any(folders["gradio"].rglob("compare-a-b.mp4")) and any(folders["tmp"].glob("portrait-rt-*"))
    job = client.submit(portrait, speech, steps=50, api_name="/generate")  # still running at the signal
    deadline = time.monotonic() + 60
    while job.status().code not in (Status.PROCESSING, Status.PROGRESS):  # (tqdm progress: PROGRESS)
        assert time.monotonic() < deadline, job.status()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    assert [p.name for p in folders["tmp"].iterdir() if not p.name.startswith("torchinductor_")] == []  # (its cache)
    assert list(folders["gradio"].iterdir()) == []
    assert list(folders["cwd"].iterdir()) == []
