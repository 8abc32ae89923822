"""Admission to live streams (`LiveGate`): who runs now, who waits in line and at which place, who is refused."""

from __future__ import annotations

import asyncio


class LiveRefused(Exception):
    """No slot now and the line is full."""


class LiveGate:
    """Admission to live streams: `capacity` run at once; up to `max_waiting` wait in line, first come first served,
    told their place whenever it changes; beyond that, refused. One event loop uses it (no thread locks needed);
    `leave` is synchronous so that a cancelled session still frees its slot."""

    def __init__(self, capacity: int, max_waiting: int):
        self.capacity, self.max_waiting = capacity, max_waiting
        self.active = 0
        self.line: list[object] = []  # tickets of the sessions waiting, first in line first
        self._changed = asyncio.Event()  # set (and replaced) at every change of `active` or `line`

    async def enter(self, on_position) -> None:
        """Wait for a slot, awaiting `on_position(n)` (n = 1: next) whenever the place in line changes; then hold
        the slot until `leave()`. `LiveRefused` if the line is full. Cancel it to leave the line."""
        if self.active >= self.capacity and len(self.line) >= self.max_waiting:
            raise LiveRefused(
                f"Live is busy: all {self.capacity} slot(s) are taken and {len(self.line)} people are waiting; "
                "try again in a minute."
            )
        ticket = object()
        self.line.append(ticket)
        told = None
        try:
            while True:
                changed, place = self._changed, self.line.index(ticket)
                if place == 0 and self.active < self.capacity:
                    break
                if place + 1 != told:
                    told = place + 1
                    await on_position(told)
                if changed is self._changed:  # nothing moved while we told the client
                    await changed.wait()
        finally:
            self.line.remove(ticket)
            self._notify()
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        self._notify()

    def state(self) -> dict:
        return {"capacity": self.capacity, "active": self.active, "waiting": len(self.line)}

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
