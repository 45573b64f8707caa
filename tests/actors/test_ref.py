"""What a reference's calls look like to the user's own tools (warnings, task reprs)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from raygrain.runtime import Cluster
from tests.app import Chain


async def test_a_call_never_awaited_warns_with_the_methods_name() -> None:
    """A call whose ``await`` was forgotten warned "coroutine 'Caller.invoke' was never
    awaited", naming the runtime's function, not what the user wrote."""
    async with Cluster.local(actors=[Chain]) as cluster:
        ref = cluster.get(Chain, "k")
        with pytest.warns(RuntimeWarning, match=r"coroutine 'ping' was never awaited"):
            ref.ping()  # type: ignore[unused-coroutine]  # (the forgotten await)
            gc.collect()
        with pytest.warns(RuntimeWarning, match=r"coroutine 'echo' was never awaited"):
            cluster.ref("test.Chain", "k").invoke("echo", 1)  # type: ignore[unused-coroutine]
            gc.collect()
        task = asyncio.ensure_future(ref.ping())
        assert "coro=<ping()" in repr(task)
        assert await task == "pong from k"
