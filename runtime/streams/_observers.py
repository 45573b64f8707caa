"""Observers: objects of a client (or an activation) that actors push notifications to.

An ``ObserverRegistry`` belongs to one endpoint (a client's or a silo's ``Caller``): it keeps
the observed objects by id and receives the pushes for them. A push is one message with no
reply (a response with a negative call id, on the path responses already take to that
endpoint), so it costs the actor nothing to wait for and reaches a vanished observer nowhere:
the transport drops it. Pushes to one observer arrive in the order one sender made them.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from typing import Any

from raygrain.actors import (
    ConfigurationError,
    ObserverRef,
    SerializationError,
    decode,
)
from raygrain.runtime.kernel import Caller, Response, get_logger

__all__ = ["ObserverRegistry"]


class ObserverRegistry:
    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self._objects: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        caller.on_notice = self._receive

    @classmethod
    def of(cls, caller: Caller) -> ObserverRegistry:
        hook = caller.on_notice
        owner = getattr(hook, "__self__", None)
        return owner if isinstance(owner, ObserverRegistry) else cls(caller)

    def add(self, target: object) -> ObserverRef:
        if target is None or isinstance(target, (str, bytes, int, float, ObserverRef)):
            raise ConfigurationError(
                f"an observer is an object with methods to call, got {type(target).__name__}"
            )
        observer_id = uuid.uuid4().hex
        self._objects[observer_id] = target
        return ObserverRef(self.caller.address, observer_id)

    def remove(self, observer: ObserverRef | str) -> bool:
        observer_id = observer.observer_id if isinstance(observer, ObserverRef) else observer
        return self._objects.pop(observer_id, None) is not None

    def __len__(self) -> int:
        return len(self._objects)

    def _receive(self, response: Response) -> None:
        try:
            observer_id, method, args = decode(response.payload)
        except SerializationError as exc:
            get_logger().warning("observer_notice_malformed", error=repr(exc))
            return
        target = self._objects.get(observer_id)
        if target is None:
            get_logger().info("observer_notice_unknown", observer=observer_id, method=method)
            return
        function = getattr(target, method, None) if not method.startswith("_") else None
        if not callable(function):
            get_logger().warning("observer_method_missing", observer=observer_id, method=method)
            return
        try:
            result = function(*args)
        except Exception as exc:
            get_logger().warning("observer_failed", observer=observer_id, error=repr(exc))
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            get_logger().warning("observer_failed", error=repr(task.exception()))
