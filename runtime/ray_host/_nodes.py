"""Silos follow Ray's node list: every live node keeps ``silos_per_node`` silos of a deployment.

The controller runs a ``NodeFollower``: about once a second it lists Ray's live nodes and the
silos of its deployment that are live or starting on each, and starts the missing ones. A node
that joins (an autoscaler's, or one added by hand) gets its silos within a few seconds; a node
whose silo died or was declared dead gets a new one. It never stops a silo: leaving is the
silos' own business (graceful leave, or death detection).

A silo that exists on a node but has not joined the view yet (one being started by hand with
``create_silo``, or by a controller that died before the silo joined) counts towards the node's
``silos_per_node`` for up to the start timeout: starting another beside it would leave the
node with one silo too many, for good (the follower never stops one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

from raygrain.runtime.kernel import get_logger

__all__ = ["NodeFollower"]

FOLLOW_PERIOD = 1.0  # seconds between two looks at Ray's node list
_START_TIMEOUT = 60.0  # a silo that has not started by then is given up (its node went away?)


class NodeFollower:
    """Keeps ``per_node`` silos on every node that ``list_nodes`` reports alive.

    ``live_silos_on(node_id)`` counts the deployment's silos on a node that are not dead;
    ``start_silo(node_id, index)`` starts one and returns its name once it serves;
    ``joining_on(node_id)`` (asked only when a node seems to lack silos) names the silos that
    exist on the node but are not in the view yet.
    """

    def __init__(
        self,
        per_node: int,
        list_nodes: Callable[[], Awaitable[Iterable[str]]],
        live_silos_on: Callable[[str], int],
        start_silo: Callable[[str, int], Awaitable[str]],
        joining_on: Callable[[str], Awaitable[Iterable[str]]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_node = per_node
        self._list_nodes = list_nodes
        self._live_silos_on = live_silos_on
        self._start_silo = start_silo
        self._joining_on = joining_on
        self._clock = clock
        # node id -> {silo name: when first seen joining}
        self._joining_since: dict[str, dict[str, float]] = {}
        self._starting: dict[str, int] = {}  # node id -> silos being started there
        self._filling: dict[str, asyncio.Task[list[str]]] = {}  # node id -> its fill under way
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self.halted = False
        # Why silos failed to start, newest last (a few): what a launch that started none
        # tells its user.
        self.failures: list[str] = []

    async def fill(self) -> list[str]:
        """Start the silos missing on every live node now; returns the names started (by this
        fill, or by the one under way on a node, whose silos it waits for)."""
        nodes = list(await self._list_nodes())
        started = await asyncio.gather(*(self._fill_once(n) for n in nodes))
        return [name for names in started for name in names]

    def _fill_once(self, node_id: str) -> asyncio.Future[list[str]]:
        """The node's fill under way (the background loop's, say: a client's first call wakes
        it), or a new one. A second fill beside it would find the node lacking nothing (its
        silos being started) and report none started, as if none could be."""
        task = self._filling.get(node_id)
        if task is None or task.done():
            task = self._filling[node_id] = asyncio.ensure_future(self._fill_node(node_id))
        return asyncio.shield(task)

    def _lacking(self, node_id: str) -> int:
        return self.per_node - self._live_silos_on(node_id) - self._starting.get(node_id, 0)

    async def _joining(self, node_id: str) -> int:
        """How many silos on ``node_id`` are on their way into the view (seen for less than
        the start timeout: one that never joins stops counting)."""
        if self._joining_on is None:
            return 0
        names = set(await self._joining_on(node_id))
        now = self._clock()
        seen = self._joining_since.setdefault(node_id, {})
        for name in [n for n in seen if n not in names]:
            del seen[name]  # joined, or gone
        return sum(1 for name in names if now - seen.setdefault(name, now) < _START_TIMEOUT)

    async def _fill_node(self, node_id: str) -> list[str]:
        if self._lacking(node_id) <= 0 or self.halted:
            return []
        joining = await self._joining(node_id)
        # (Counted again after the await: the view may have changed, or a fill begun.)
        missing = self._lacking(node_id) - joining
        if missing <= 0 or self.halted:
            return []
        self._starting[node_id] = self._starting.get(node_id, 0) + missing
        base = self._live_silos_on(node_id)
        try:
            results = await asyncio.gather(
                *(
                    asyncio.wait_for(self._start_silo(node_id, base + i), _START_TIMEOUT)
                    for i in range(missing)
                ),
                return_exceptions=True,
            )
        finally:
            self._starting[node_id] -= missing
        names = [r for r in results if isinstance(r, str)]
        for error in (r for r in results if isinstance(r, BaseException)):
            get_logger().warning("silo_start_failed", node=node_id, error=repr(error))
            self.failures = [*self.failures[-4:], _reason(error)]
        if names:
            get_logger().info("silos_started_on_node", node=node_id, silos=names)
        return names

    def follow(self) -> None:
        """Keep following the node list in the background (until ``halt``)."""
        if self._loop is None and not self.halted:
            self._loop = asyncio.ensure_future(self._follow())

    async def _follow(self) -> None:
        while not self.halted:
            await asyncio.sleep(FOLLOW_PERIOD)
            try:
                nodes = list(await self._list_nodes())
            except Exception as exc:
                get_logger().warning("node_list_failed", error=repr(exc))
                continue
            for node_id in nodes:
                # Each node on its own: a slow start on one does not hold back the others.
                filling = self._filling.get(node_id)
                if (filling is None or filling.done()) and not self.halted:
                    task = asyncio.ensure_future(self._fill_quietly(node_id))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _fill_quietly(self, node_id: str) -> None:
        try:
            await self._fill_once(node_id)
        except Exception as exc:
            get_logger().warning("node_fill_failed", node=node_id, error=repr(exc))

    def halt(self) -> None:
        """Stop following (the deployment is going down: start nothing more)."""
        self.halted = True
        if self._loop is not None:
            self._loop.cancel()
        for task in [*self._tasks, *self._filling.values()]:
            task.cancel()


def _reason(error: BaseException) -> str:
    """One line on why a silo did not start: Ray's errors carry the whole remote traceback,
    whose last line is the cause."""
    if isinstance(error, asyncio.TimeoutError):
        return f"it did not start within {_START_TIMEOUT:.0f} s"
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
