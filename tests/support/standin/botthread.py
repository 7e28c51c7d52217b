"""Run a discord.py client in a thread with its own event loop, so a test can drive the stand-in (whose
control API blocks) while the bot keeps answering.  Bots under test in other processes don't need this."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from .server import close_loop


class BotThread:
    def __init__(self, make_client: Callable[[], discord.Client], token: str) -> None:
        self._make_client = make_client
        self._token = token
        self.client: discord.Client | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._created = threading.Event()
        self.error: BaseException | None = None

    def start(self, ready_timeout: float = 15.0) -> discord.Client:
        self._thread = threading.Thread(target=self._run, name="discord-client", daemon=True)
        self._thread.start()
        if not self._created.wait(ready_timeout):
            raise TimeoutError("client was not created")
        assert self.client is not None
        self.call(self.client.wait_until_ready(), timeout=ready_timeout)
        return self.client

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop

        async def main() -> None:
            self.client = self._make_client()
            self._created.set()
            async with self.client:
                await self.client.start(self._token)

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # noqa: BLE001 - kept for the test to inspect
            self.error = exc
            self._created.set()
        finally:
            close_loop(loop)

    def call(self, coro: Awaitable[Any], timeout: float = 15.0) -> Any:
        """Run `coro` on the client's loop and return its result (exceptions are re-raised here)."""
        if self.loop is None:
            raise RuntimeError("not started")
        if self.error is not None:
            raise RuntimeError("the client stopped") from self.error
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self, timeout: float = 10.0) -> None:
        if self.client is not None and self.loop is not None and not self.loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(self.client.close(), self.loop).result(timeout)
            except Exception:  # noqa: BLE001 - best effort on teardown
                pass
        if self._thread is not None:
            self._thread.join(timeout)

