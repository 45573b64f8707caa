"""The method a stream delivery turn runs: one per consumer method name, made once.

A delivery turn (``_consumer.DurableTurn``) is no call from a caller: the kernel runs it as
the ``ActorMethod`` made here, a one-way method that awaits the function it is given (the
cursor's delivery of held events to the consumer's method ``name``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from raygrain.actors import ActorMethod, MethodOptions

__all__ = ["delivery_method"]


async def _call(instance: Any, function: Callable[[], Awaitable[None]]) -> None:
    await function()


_SIGNATURE = inspect.Signature(
    [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
        inspect.Parameter("function", inspect.Parameter.POSITIONAL_ONLY),
    ]
)


@functools.lru_cache(maxsize=4096)
def delivery_method(name: str) -> ActorMethod:
    return ActorMethod(name, _call, MethodOptions(one_way=True), _SIGNATURE, 1)
