"""The bot's blocking calls run on bounded executors of their own (bot/toolkit.py): slow reads of commands can't
take the threads a /dream needs to be queued inside Discord's 3 seconds."""

from __future__ import annotations

import asyncio
import threading
import time

from bot import toolkit


def test_slow_command_calls_leave_a_dream_its_thread():
    release = threading.Event()

    async def main():
        # Every command thread, and as many again waiting for one, held by a slow read.
        slow = [asyncio.ensure_future(toolkit.command(release.wait, 30)) for _ in range(2 * toolkit.COMMAND_THREADS)]
        await asyncio.sleep(0.1)
        t0 = time.perf_counter()
        got = await asyncio.wait_for(toolkit.submit(lambda: "queued"), 2.0)
        took = time.perf_counter() - t0
        # The default executor (asyncio.to_thread: the relay, the live status) is not theirs either.
        await asyncio.wait_for(asyncio.to_thread(lambda: None), 2.0)
        release.set()
        await asyncio.gather(*slow)
        return got, took

    got, took = asyncio.run(main())
    assert got == "queued" and took < 0.5
