"""The HTTP protocol ``mixopt server`` runs: uvicorn's, plus a deadline on request headers.

uvicorn times out idle keep-alive connections but not a request whose line and headers trickle
in: a client that opens many connections and sends a header byte now and then holds them for as
long as it likes (a slow-header attack), until the connection cap turns everyone else away.
"""

from __future__ import annotations

import asyncio

try:  # the protocol uvicorn's "auto" picks
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - httptools is a dependency; h11 is uvicorn's fallback
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base

__all__ = ["HeaderDeadlineProtocol"]


class HeaderDeadlineProtocol(_Base):
    """Closes a connection whose first request has not finished its headers within
    ``MIXOPT_HEADER_TIMEOUT_S`` of the connection opening."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        from ..settings import get_settings

        super().connection_made(transport)
        self._header_deadline = self.loop.call_later(get_settings().header_timeout_s, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_deadline.cancel()
        super().connection_lost(exc)
