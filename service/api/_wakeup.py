"""Wake-ups for the long-polls (``POST /leases``, ``ask``): the engine calls :meth:`Wakeup.fire`
from any thread when queued work or a study may have changed, and every waiting request looks
again, instead of each polling the database on a timer."""

from __future__ import annotations

import asyncio
import threading


class Wakeup:
    """A broadcast to the coroutines of one event loop, fired from any thread.

    Take :meth:`token` *before* looking at the database, then :meth:`wait` on it: a fire that
    happens in between is not missed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._event = asyncio.Event()
        self.generation = 0
        """How many times it fired: a look at the database taken at one generation stays true until the next."""
        self._pending = False
        self._lock = threading.Lock()

    def token(self) -> asyncio.Event:
        return self._event

    def fire(self) -> None:
        """Thread-safe; fires arriving before the loop ran the last one are merged into it."""
        with self._lock:
            if self._pending:
                return
            self._pending = True
        try:
            self._loop.call_soon_threadsafe(self._fire)
        except RuntimeError:  # the loop is closed: the server is stopping, nobody waits
            pass

    def _fire(self) -> None:
        with self._lock:
            self._pending = False
        self.generation += 1
        self._event.set()
        self._event = asyncio.Event()

    @staticmethod
    async def wait(token: asyncio.Event, timeout: float) -> bool:
        """Wait until ``token`` fires or ``timeout`` seconds pass. Returns whether it fired."""
        if timeout <= 0:
            return token.is_set()
        try:
            await asyncio.wait_for(token.wait(), timeout)
            return True
        except TimeoutError:
            return False
