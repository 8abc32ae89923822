"""Reference images of a live start message decoded in worker processes (`Decoder`), never in the server's own.

Decoding a large image is ~1 s of C code that holds Python's GIL in long stretches, so even in a worker thread it
stalls the event loop that serves every page; a process of its own holds its own GIL, can be killed when it takes too
long (`TIMEOUT_S`), and a decoder that crashes on a hostile file takes only itself with it. The workers run
`portrait_rt.serving.references` (Pillow only). (Not `multiprocessing`: its workers would import the app's main
module, gradio and torch.)
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys

from PIL import Image

from portrait_rt.serving.references import read_images

TIMEOUT_S = 20.0  # a decode taking longer is killed (with its worker)
WORKER = [sys.executable, "-m", "portrait_rt.serving.references"]


class Decoder:
    """`workers` decoder processes, each decoding one start message at a time; started on first use, replaced when
    one dies or is killed for taking over `TIMEOUT_S`."""

    def __init__(self, workers: int):
        self.workers = workers
        self._idle: asyncio.Queue | None = None

    async def decode(self, slots, max_pixels: int, side: int) -> list[Image.Image]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self.workers):
                self._idle.put_nowait(None)  # a place for a worker, started when first needed
        worker, answer = await self._idle.get(), None
        try:
            if worker is None or worker.returncode is not None:
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # imports as here
                worker = await asyncio.create_subprocess_exec(
                    *WORKER, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
                )
            request = json.dumps({"slots": slots, "max_pixels": max_pixels, "side": side}).encode()
            worker.stdin.write(struct.pack("<Q", len(request)) + request)
            answer = await asyncio.wait_for(self._read(worker), TIMEOUT_S)
        except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError):
            raise ValueError(
                "The references could not be read in time (or the decoder failed on them); use smaller PNG or JPEG "
                "photos."
            ) from None
        finally:
            if answer is None and worker is not None and worker.returncode is None:  # failed, timed out, cancelled
                worker.kill()
            self._idle.put_nowait(worker if answer is not None else None)
        if answer[:1] == b"\x01":
            raise ValueError(answer[1:].decode())
        return read_images(answer[1:])

    @staticmethod
    async def _read(worker) -> bytes:
        await worker.stdin.drain()
        (size,) = struct.unpack("<Q", await worker.stdout.readexactly(8))
        return await worker.stdout.readexactly(size)
