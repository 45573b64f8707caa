"""Helpers the tests share: waiting for a condition with a bound, the deposit workload and its
verification, the transfer invariants, and the oversized-message check.

Tests wait for events, never for time: ``wait_until`` polls a condition and fails with a message
naming what never happened once the bound is past (the bound is a safety net against a hang, not
a timing assertion: a healthy run never comes near it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

from raygrain.actors import (
    ActorCallTimeout,
    InconsistentStateError,
    MessageTooLargeError,
    SiloUnavailableError,
    StorageError,
)
from raygrain.runtime import Cluster
from raygrain.runtime.ray_host import RemoteStorage, StorageServerImpl
from tests import app
from tests.app import BankAccount, Chain

T = TypeVar("T")

BOUND = 30.0  # seconds: far beyond any healthy wait on a busy 2-core machine


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, bound: float = BOUND
) -> None:
    """Return once ``condition()`` (plain or async) is true; fail naming ``what`` after
    ``bound`` seconds. Polls by yielding to the loop first, then every few milliseconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    passes = 0
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if loop.time() > deadline:
            pytest.fail(f"gave up after {bound} s waiting for {what}")
        passes += 1
        await asyncio.sleep(0 if passes < 1000 else 0.005)


async def bounded(awaitable: Awaitable[T], what: str, bound: float = BOUND) -> T:
    """Await ``awaitable``; fail naming ``what`` if it has not finished after ``bound``
    seconds (a hang, not a slow run)."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=bound)
    if not done:  # (not wait_for: ActorCallTimeout is a TimeoutError too)
        task.cancel()
        pytest.fail(f"gave up after {bound} s waiting for {what}")
    return task.result()


def json_document(printed: str) -> Any:
    """The JSON document a command printed, from captured stdout that Ray's log monitor may
    share (it prints worker log lines, "(ControllerActor pid=...) ...", to the driver's
    stdout): the document starts on a line of its own with ``{`` (or ``[``)."""
    lines = printed.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith(("{", "["))), None)
    assert start is not None, f"no JSON document in {printed!r}"
    document, _ = json.JSONDecoder().raw_decode("".join(lines[start:]))
    return document


def without_ray_lines(captured: str) -> str:
    """``captured`` without the worker log lines Ray's log monitor prints into the driver's
    output ("(SiloActor pid=...) ...", often in colour), which may arrive at any moment."""
    return "".join(
        line
        for line in captured.splitlines(keepends=True)
        if not line.lstrip("\x1b[0123456789;m").startswith("(")
    )


def own_log_records(captured: str) -> list[dict[str, Any]]:
    """This process's log records (JSON lines) from captured stderr, which Ray's log monitor
    may share: it prints worker log lines, "(SiloActor pid=...) {...}", to the driver's
    stderr at any moment, from the Ray tests before this one too."""
    return [json.loads(line) for line in captured.splitlines() if line.startswith("{")]


def own_log_count(captured: str, event: str) -> int:
    """How many of this process's log records are ``event``."""
    return sum(1 for record in own_log_records(captured) if record.get("event") == event)


async def still_pending(task: asyncio.Future[Any], passes: int = 50) -> bool:
    """Let the loop run ``passes`` times; True if ``task`` has still not finished (used after
    the event that should hold it up has been proved to have happened)."""
    for _ in range(passes):
        await asyncio.sleep(0)
    return not task.done()


def activation_of(cluster: Cluster, actor: Any) -> Any:
    """(White-box, in-process:) the activation of ``actor`` on whichever silo hosts it."""
    hosts = [
        s.activations[actor.actor_id] for s in cluster.silos if actor.actor_id in s.activations
    ]
    assert len(hosts) == 1, f"{actor.actor_id} is active on {len(hosts)} silos"
    return hosts[0]


async def wait_for_silos(cluster: Cluster, count: int, bound: float = 60.0) -> None:
    """Wait until the client's membership view holds ``count`` silos."""
    membership = cluster._caller._membership

    async def changed() -> None:
        while len(membership.ring) != count:
            await membership.wait_for_view(membership.view.version + 1)

    try:
        await asyncio.wait_for(changed(), bound)
    except TimeoutError:
        pytest.fail(
            f"the view still holds {len(membership.ring)} silos, not {count}, after {bound} s"
        )


async def wait_for_death(cluster: Cluster, name: str, bound: float = 60.0) -> None:
    """Wait until the client's view declares silo ``name`` dead."""
    membership = cluster._caller._membership

    async def declared() -> None:
        while name not in membership.view.dead():
            await membership.wait_for_view(membership.view.version + 1)

    try:
        await asyncio.wait_for(declared(), bound)
    except TimeoutError:
        pytest.fail(f"silo {name} was not declared dead within {bound} s")


async def wait_for_active(cluster: Cluster, name: str, bound: float = 60.0) -> None:
    """Wait until the client's view holds silo ``name`` as active."""
    membership = cluster._caller._membership

    async def joined() -> None:
        while name not in membership.view.active():
            await membership.wait_for_view(membership.view.version + 1)

    await bounded(joined(), f"silo {name} to join", bound)


async def silo_on(cluster: Cluster, node_id: str, bound: float = 60.0) -> str:
    """The name of the deployment's silo on Ray node ``node_id``, once the client's view
    holds it as active."""
    membership = cluster._caller._membership

    async def joined() -> str:
        while True:
            names = [n for n in membership.view.active() if node_id[:12] in n]
            if names:
                return names[0]
            await membership.wait_for_view(membership.view.version + 1)

    return await bounded(joined(), f"a silo on the node {node_id[:12]} to join", bound)


async def no_silo_on(cluster: Cluster, node_id: str, bound: float = 60.0) -> None:
    """Wait until the client's view holds no active silo on Ray node ``node_id``."""
    membership = cluster._caller._membership

    async def gone() -> None:
        while any(node_id[:12] in n for n in membership.view.active()):
            await membership.wait_for_view(membership.view.version + 1)

    await bounded(gone(), f"the silos on the node {node_id[:12]} to leave the view", bound)


@contextlib.asynccontextmanager
async def extra_node(ray_silos: Any, cluster: Cluster) -> AsyncIterator[tuple[Any, str]]:
    """A Ray node added to the session's cluster for one test, and the name of ``cluster``'s
    silo on it (the deployment follows Ray's node list: the node gets its silo by itself).

    Tests wait for that silo by name, never for a count of silos: a count taken while a node
    killed by an earlier test was still in the view waited for a ring size that never came.
    On the way out the node is removed (unless the test killed it), the session's default
    deployment has dropped its silo, and Ray has marked the node dead: the next test finds the
    silos and the nodes the session started with. (Ray takes ~15 s to mark a killed node dead;
    until then it places new actors there too, which then die with it: a test's own actor,
    or a deployment's silo, started in that window was lost.)
    """
    node = ray_silos.nodes.add_node(num_cpus=1)
    try:
        ray_silos.nodes.wait_for_nodes()
        yield node, await silo_on(cluster, node.node_id)
    finally:
        if node in ray_silos.nodes.worker_nodes:  # (remove_node drops a node it removed)
            ray_silos.nodes.remove_node(node, allow_graceful=False)
        async with Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as default:
            await no_silo_on(default, node.node_id)
        await _until_ray_marks_dead(node.node_id)


async def _until_ray_marks_dead(node_id: str, bound: float = 120.0) -> None:
    import ray

    def alive() -> bool:
        return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())  # type: ignore[no-untyped-call]

    deadline = time.monotonic() + bound
    while alive():
        if time.monotonic() > deadline:
            pytest.fail(f"Ray still lists the removed node {node_id[:12]} as alive after {bound} s")
        await asyncio.sleep(0.5)  # (a call to Ray's GCS each time: not every few ms)


# -- the deposit workload -----------------------------------------------------------------------

# Fate unknown: the call may or may not have been applied (never half). A StorageError comes
# from a write whose storage server was unreachable for a moment while a node went away.
# An InconsistentStateError is a write fenced off because a lingering old owner wrote first:
# not applied, and the next call reactivates from storage.
RETRYABLE = (SiloUnavailableError, ActorCallTimeout, StorageError, InconsistentStateError)


class Workload:
    """Deposits with unique amounts, so that every acknowledged write can be found again and a
    write applied twice or half would show. Each failure is counted by its type, so a test can
    bound each (a call hanging to its deadline is an ActorCallTimeout, not a quick
    SiloUnavailableError)."""

    def __init__(self, cluster: Cluster, key: Any, accounts: int, seed: int = 11) -> None:
        self.refs = [cluster.get(BankAccount, key(f"a{i}")) for i in range(accounts)]
        self.acked: dict[str, set[int]] = defaultdict(set)
        self.failures: Counter[str] = Counter()
        self.failed_at: list[tuple[float, str]] = []  # (time.monotonic(), error type)
        self.next_amount = 1
        self.stop = asyncio.Event()
        self.rng = random.Random(seed)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    async def deposit(self, ref: Any) -> bool:
        amount = self.next_amount
        self.next_amount += 1
        try:
            # A deadline far beyond a healthy call on a loaded machine: a timeout is a hang.
            await ref.with_timeout(60).deposit(amount)
        except RETRYABLE as error:
            self.failures[type(error).__name__] += 1  # fate unknown: never half
            self.failed_at.append((time.monotonic(), type(error).__name__))
            return False
        self.acked[str(ref.actor_id.key)].add(amount)
        return True

    async def run(self, workers: int = 20) -> None:
        async def worker() -> None:
            while not self.stop.is_set():
                await self.deposit(self.rng.choice(self.refs))

        await asyncio.gather(*(worker() for _ in range(workers)))

    def acknowledged(self) -> int:
        return sum(len(v) for v in self.acked.values())

    async def until(self, count: int, bound: float = 120.0) -> None:
        await wait_until(
            lambda: self.acknowledged() >= count,
            f"{count} acknowledged deposits (have {self.acknowledged()}, "
            f"failures {dict(self.failures)})",
            bound,
        )

    def bound_failures(self, since: float, within: float = 30.0) -> None:
        """Every failure is a quick, retryable one of the kinds a fault may cause, and fell
        within `within` seconds of the fault (`since`, a time.monotonic()). Their number is not
        bounded: the workers retry at once, so it only measures how fast the machine ran while
        the dead silo was not yet out of the view. What must not happen is a failure of another
        kind (an ActorCallTimeout is a call that hung to its deadline), one before the fault,
        or one long after it (the cluster never settled)."""
        allowed = {"SiloUnavailableError", "StorageError", "InconsistentStateError"}
        assert set(self.failures) <= allowed, dict(self.failures)
        late = [
            (round(t - since, 1), kind)
            for t, kind in self.failed_at
            if not since <= t <= since + within
        ]
        assert not late, f"failures outside {within} s after the fault: {late[:5]}"

    async def verify(self) -> None:
        snapshots = await asyncio.gather(*(r.snapshot() for r in self.refs))
        for ref, state in zip(self.refs, snapshots, strict=True):
            history = state.history
            assert len(history) == len(set(history)), f"{ref.actor_id.key}: a write applied twice"
            assert state.balance == sum(history), f"{ref.actor_id.key}: a half-applied write"
            missing = self.acked[str(ref.actor_id.key)] - set(history)
            assert not missing, (
                f"{ref.actor_id.key}: acknowledged writes lost: {sorted(missing)[:5]}"
            )


# -- transfer invariants ------------------------------------------------------------------------


def check_transfers(
    ledgers: list[Any],
    start: int,
    acknowledged: Mapping[int, tuple[int, ...]] | Iterable[tuple[int, tuple[int, ...]]],
    where: str,
) -> None:
    """Money is conserved, no transfer is applied on one side only, every acknowledged one
    (transfer id -> (src, dst, ...)) is on both sides, and no account is overdrawn."""
    items = acknowledged.items() if isinstance(acknowledged, Mapping) else acknowledged
    assert sum(x.balance for x in ledgers) == start * len(ledgers), f"{where}: money changed"
    seen = Counter(t for x in ledgers for t in x.applied)
    halves = sorted(t for t, n in seen.items() if n != 2)
    assert not halves, f"{where}: transfers applied on one side only: {halves[:5]}"
    for transfer, (src, dst, *_) in items:
        assert transfer in ledgers[src].applied and transfer in ledgers[dst].applied, (
            f"{where}: acknowledged transfer {transfer} lost"
        )
    assert all(x.balance >= 0 for x in ledgers), f"{where}: an account overdrawn"


# -- oversized messages -------------------------------------------------------------------------


async def check_oversized_messages(
    cluster: Cluster, limit: int, key: str = "big", results: bool = True
) -> None:
    """With ``max_message_bytes=limit``: an argument over the limit is refused with
    MessageTooLargeError naming the limit, and so is a result if the silos run with the same
    limit (``results``); a small message still goes through."""
    chain = cluster.get(Chain, key)
    with pytest.raises(MessageTooLargeError, match=f"over the {limit}-byte message limit"):
        await chain.echo(b"x" * (limit + 1024))
    if results:
        with pytest.raises(MessageTooLargeError, match=f"{limit}-byte message limit"):
            await chain.make_bytes(limit + 1024)
    assert await chain.echo(b"x" * 100) == b"x" * 100


# -- storage ------------------------------------------------------------------------------------


class RemoteToInProcessServer(RemoteStorage):
    """``RemoteStorage`` (what silos on Ray use) talking to the storage server's body in this
    process instead of through a Ray actor: the same batches and encoding, without Ray."""

    def __init__(self, spec: str) -> None:
        self.server = StorageServerImpl(spec)
        super().__init__(SimpleNamespace(execute=SimpleNamespace(remote=self.server.execute)))

    async def aclose(self) -> None:
        await super().aclose()
        await self.server.aclose()
