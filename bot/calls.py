"""Where a bot's blocking calls run. Redis and the image store are synchronous clients, so a call runs on a
thread; which threads decides what can hold up what.

asyncio.to_thread shares the event loop's one default executor among everything: a few slow reads (a
command that reads much, a store that hangs) would take its threads and the next /dream would wait for one,
past Discord's 3-second window. So commands get executors of their own, bounded:

    submit    /dream and the buttons that queue: limits, backpressure, the enqueue
    command   every other command's and button's reads and writes (/dreamqueue, /cancel, /dreamadmin,
              /dreamstats, /dreamhelp, Info, Delete, votes)
    picture   decoding a member's picture (dreamcore.image_in): up to a gigabyte at its peak for the largest
              picture allowed, so two at a time, and never on a thread a command is waiting for

and the result relay and the live status keep the default executor, so a flood of results never takes a
thread a member is waiting on either. Each pool's size bounds how many calls of its kind run at once; more
wait their turn in it (each Redis call gives up after redisconn.BOT_READ_TIMEOUT_S, so a turn is short).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# How long a command's or a button's reads and writes may hold up its answer (each Redis call gives up
# sooner, after redisconn.BOT_READ_TIMEOUT_S): past it, the member hears that the store is unreachable.
READ_TIMEOUT_S = 2.0

SUBMIT_THREADS = 16
COMMAND_THREADS = 8

_submit = ThreadPoolExecutor(max_workers=SUBMIT_THREADS, thread_name_prefix="submit")
_command = ThreadPoolExecutor(max_workers=COMMAND_THREADS, thread_name_prefix="command")
PICTURE_THREADS = 2
_picture = ThreadPoolExecutor(max_workers=PICTURE_THREADS, thread_name_prefix="picture")


async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    # In a copy of the caller's context, as asyncio.to_thread runs it: a message made on the thread is in the
    # language of the command that asked (dreamcore.i18n).
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool, call)


async def submit(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A call that queues a dream."""
    return await _run(_submit, fn, *args, **kwargs)


async def command(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Any other call a command or a button makes."""
    return await _run(_command, fn, *args, **kwargs)


async def in_time(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A command's or a button's call that must answer within READ_TIMEOUT_S (asyncio.TimeoutError past it)."""
    return await asyncio.wait_for(command(fn, *args, **kwargs), READ_TIMEOUT_S)


async def picture(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Decoding a member's picture."""
    return await _run(_picture, fn, *args, **kwargs)
