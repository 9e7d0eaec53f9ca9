"""The studio under uvicorn, with limits for slow or greedy clients:

- request headers at most 16 KiB (h11's incomplete-event limit: more is answered 400) and complete within
  HEADER_SECONDS of the connection opening or of the previous answer (uvicorn has no such deadline; the protocol
  class below adds it, so a client dribbling a header byte a second cannot hold a connection open);
- an idle keep-alive connection is closed after KEEP_ALIVE_SECONDS;
- at most MAX_CONNECTIONS connections at once (uvicorn answers 503 beyond);
- a body must arrive within dgm.serve.checks.BODY_SECONDS (the app's BodyLimit answers 408).
"""
from __future__ import annotations

from typing import Any

HEADER_SECONDS = 10.0
KEEP_ALIVE_SECONDS = 5
MAX_HEADER_BYTES = 16 * 1024
MAX_CONNECTIONS = 64


def header_deadline_protocol(seconds: float = HEADER_SECONDS):
    """uvicorn's h11 protocol with a deadline for each request's headers: the connection is closed when no request
    has started within `seconds` of it opening or of the last answer."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _deadline = None
        _armed_for: Any = None

        def _arm(self) -> None:
            self._disarm()
            self._armed_for = self.cycle  # a new request replaces the cycle: then the headers came in time
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.cycle is self._armed_for and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            self._arm()
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline


def server_config(app, host: str = "127.0.0.1", port: int = 8000, header_seconds: float = HEADER_SECONDS,
                  log_level: str = "warning"):
    import uvicorn
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=header_deadline_protocol(header_seconds),
                          timeout_keep_alive=KEEP_ALIVE_SECONDS, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                          limit_concurrency=MAX_CONNECTIONS, ws="none")


def run_server(app, host: str, port: int) -> None:
    import uvicorn
    uvicorn.Server(server_config(app, host, port)).run()
