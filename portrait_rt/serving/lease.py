"""A GPU lease per live conversation on ZeroGPU; the same conversation code without a lease everywhere else.

On a ZeroGPU Space the web process has no GPU: a function wrapped by `spaces.GPU` runs, while a caller waits, in a
process that holds a GPU for it, scheduled against the quota of the visitor whose Gradio request started it. A live
conversation's model work therefore runs inside one such call for the whole conversation (`converse`), started
by the page through a Gradio API event (so the visitor's quota pays); a few conversations run so in parallel, one
lease each. Its audio comes in, and its blocks go out, over a `Channel` to the web process, which relays them to
the conversation's WebSocket.

Elsewhere (a CPU, a dedicated GPU) `converse` runs as it is, on the server's shared batched worker.

    lease = gpu_lease(converse)              # spaces.GPU(converse) on ZeroGPU, converse itself elsewhere
    lease(worker_factory, channel)           # returns when the conversation ends

Detection follows the `spaces` package: `spaces.config.Config.zero_gpu`, i.e. SPACES_ZERO_GPU=true (read without
importing `spaces` when it is not installed).
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from dataclasses import dataclass, field

LEASE_SECONDS = 150  # one conversation: the live time limit (120 s) and its start and tail


def zero_gpu() -> bool:
    """Whether this process runs on ZeroGPU, as the `spaces` package decides (its `Config.zero_gpu`)."""
    try:
        from spaces.config import Config
    except ImportError:
        return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    return bool(Config.zero_gpu)


def gpu_lease(fn: Callable, duration: float = LEASE_SECONDS) -> Callable:
    """`fn` wrapped by `spaces.GPU(duration=...)` on ZeroGPU (each call holds a GPU lease), `fn` itself elsewhere."""
    if not zero_gpu():
        return fn
    import spaces

    return spaces.GPU(duration=duration)(fn)


@dataclass
class Channel:
    """Both directions of one conversation between the web process and its model work: audio chunks and the end
    of the audio in (`send_audio`, `end_audio`), records and the end of the session out (`send_record`).

    In one process two queues; on ZeroGPU the model side runs in the lease's process, which reaches these queues
    through a `multiprocessing.Manager` (`Channel.shared`)."""

    audio: queue.Queue = field(default_factory=queue.Queue)  # (samples, rate), or None: the audio ended
    records: queue.Queue = field(default_factory=queue.Queue)  # BlockRecord, or (None, end reason) at the end

    @classmethod
    def shared(cls, manager) -> Channel:
        """A channel whose queues live in `manager` (a started `multiprocessing.Manager()`): usable from a lease."""
        return cls(manager.Queue(), manager.Queue())

    def send_audio(self, samples, sample_rate: int) -> None:
        self.audio.put((samples, sample_rate))

    def end_audio(self) -> None:
        self.audio.put(None)


_process_workers: dict[int, object] = {}  # pid -> this process's StreamWorker (a lease's process keeps its own)


def process_worker(pipe):
    """This process's `StreamWorker` on `pipe`, started on first use: on ZeroGPU, inside the first lease of the
    process that holds the GPU (the web process never starts one); elsewhere, the server's shared worker."""
    from portrait_rt.serving.worker import StreamWorker

    pid = os.getpid()
    if pid not in _process_workers:
        _process_workers[pid] = StreamWorker(pipe)
    return _process_workers[pid]


def converse(open_session: Callable, channel: Channel, poll_s: float = 0.01) -> str:
    """One conversation's model work: a worker session from `open_session()` (a `WorkerSession`), fed from
    `channel.audio` until its end, its records put on `channel.records`, then `(None, reason)`. Returns the reason.

    Runs inside the conversation's lease on ZeroGPU (`gpu_lease(converse)`), as it is elsewhere."""
    session = open_session()
    audio_open = True
    try:
        while True:
            while audio_open:
                try:
                    item = channel.audio.get(timeout=poll_s) if not session.ended else None
                except queue.Empty:
                    break
                if item is None:
                    session.close()
                    audio_open = False
                else:
                    session.push(*item)
            try:
                record = session.get(timeout=poll_s)
            except queue.Empty:
                continue
            if record is None:
                break
            channel.records.put(record)
    finally:
        session.cancel()
    channel.records.put((None, session.end_reason))
    return session.end_reason
