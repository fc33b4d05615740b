"""The plumbing every fake server shares: an aiohttp app on 127.0.0.1 at a free port."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Self, TypeVar

from aiohttp import web


def free_port() -> int:
    """A port nothing listens on at the moment (for a server started elsewhere, or one that must be absent)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalServer:
    """Subclasses add their routes in `routes(app)`; `start()` listens, `close()` stops, `async with` does both."""

    _runner: web.AppRunner | None = None
    _port: int | None = None
    client_max_size = 1024**2

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @property
    def host(self) -> str:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._port}"

    async def start(self) -> Self:
        app = web.Application(client_max_size=self.client_max_size)
        self.routes(app)
        # Cancel a handler whose client went away (a timed-out request), as a real server stops working on it,
        # and don't wait long for such handlers on close.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # aiohttp keeps the listening socket here; port 0 means "any free port"
        assert server is not None and server.sockets
        self._port = server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


Server = TypeVar("Server", bound=LocalServer)


def serve_in_thread(server: Server) -> Iterator[Server]:
    """Run `server` on its own event-loop thread, for code that calls `asyncio.run` in the test's thread (the CLI)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
