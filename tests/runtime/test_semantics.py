"""Guarantees of DESIGN.md ("Semantics") and docs/decisions.md that the older tests left unheld:
copy semantics in-process, requests that expire while queued, deadlocks across silos and the
calls back that are not deadlocks, and how turns are scheduled around running calls,
activation and deactivation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from raygrain.actors import (
    Actor,
    ActorCallTimeout,
    ActorId,
    DeactivationReason,
    DeadlockError,
    always_interleave,
)
from raygrain.runtime import Cluster
from tests import app
from tests.app import Account, BankAccount, Chain, Recorder, SlowLife
from tests.helpers import bounded, still_pending, wait_until

Key = Callable[[str], str]


def _keys_on_distinct_silos(cluster: Cluster, key: Key, count: int) -> list[str]:
    """``count`` Chain keys, each owned by a different silo of the client's view."""
    ring = cluster._caller._membership.ring
    chosen: dict[str, str] = {}
    for i in range(10_000):
        candidate = key(f"k{i}")
        chosen.setdefault(ring.owner(ActorId("test.Chain", candidate)), candidate)
        if len(chosen) == count:
            return list(chosen.values())
    raise AssertionError(f"fewer than {count} silos in the view")


# -- copy semantics -----------------------------------------------------------------------------


async def test_mutating_a_returned_value_leaves_the_actor_state_alone(cluster: Cluster) -> None:
    # In-process, an idle actor's turn runs eagerly in the caller's stack: still, what it
    # returns is a copy, never the state object itself.
    account = cluster.get(BankAccount, "copy-out")
    await account.deposit(10)
    snapshot = await account.snapshot()
    snapshot.balance = 999
    snapshot.history.append(999)
    assert await account.snapshot() == Account(10, [10])


async def test_mutating_an_argument_after_the_call_leaves_the_actor_state_alone(
    cluster: Cluster,
) -> None:
    recorder = cluster.get(Recorder, "copy-in")
    entries = ["a"]
    await recorder.adopt(entries)  # the actor keeps the list it was given as its state
    entries.append("from the caller")
    assert await recorder.entries() == ["a"]
    # And between actors: the calling actor changes what it sent and what it got back.
    assert await cluster.get(Chain, "copier").mutate_after_call(recorder) == ["x"]


# -- deadlines ----------------------------------------------------------------------------------


async def test_a_request_that_expired_while_queued_is_not_run(cluster: Cluster) -> None:
    recorder = cluster.get(Recorder, "expired")
    holder = asyncio.ensure_future(recorder.wait_for("expired-gate"))
    await wait_until(lambda: "expired-gate" in app.GATES, "the first turn to hold the actor")
    with pytest.raises(ActorCallTimeout):
        await recorder.with_timeout(0.2).mark("queued")  # queued behind the held turn
    app.gate("expired-gate").set()
    assert await bounded(holder, "the held turn") == "released"
    await recorder.mark("later")  # the queue has moved past where the expired call was
    marks = [event[1][1] for event in app.EVENTS if event[0] == "mark"]
    assert marks == ["later"], "a call whose caller had given up was run"


# -- deadlocks ----------------------------------------------------------------------------------


async def test_a_three_actor_cycle_across_silos_is_a_deadlock_error(
    any_cluster: Cluster, key: Key
) -> None:
    a, b, c = _keys_on_distinct_silos(any_cluster, key, 3)
    first = any_cluster.get(Chain, a)
    # With an hour's deadline: refused when the cycle closes, not left to time out.
    with pytest.raises(DeadlockError) as info:
        await bounded(first.with_timeout(3600).cycle([b, c, a]), "a -> b -> c -> a")
    assert all(f"test.Chain/{k}" in str(info.value) for k in (a, b, c))
    assert await first.ping() == f"pong from {a}"  # and every actor of the cycle serves on


@pytest.mark.parametrize(
    ("turn", "method", "expected"),
    [
        ("call_back_through", "interleaved_echo", "interleaved: called back"),
        ("read_back_through", "peek", "peeked: called back"),
        ("call_back_through", "note", None),
    ],
    ids=["always_interleave", "read_only_from_a_read_only_turn", "one_way"],
)
async def test_calls_back_that_can_run_are_not_deadlocks(
    any_cluster: Cluster, key: Key, turn: str, method: str, expected: str | None
) -> None:
    # a's turn calls b, which calls a back: an interleaving method starts whatever runs, a
    # read-only one runs beside a read-only turn, and a one-way call only queues.
    a, b = _keys_on_distinct_silos(any_cluster, key, 2)
    actor = any_cluster.get(Chain, a)
    result = await bounded(actor.with_timeout(3600).invoke(turn, b, method), f"{turn} {method}")
    assert result == expected
    if method == "note" and any_cluster.silos:  # in-process: the one-way call ran, after
        await wait_until(lambda: ("note", (a, "called back")) in app.EVENTS, "the one-way call")


# -- scheduling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("holding", ["read_wait", "interleaved_wait"])
async def test_an_exclusive_turn_waits_for_running_read_only_and_interleaved_calls(
    cluster: Cluster, holding: str
) -> None:
    recorder = cluster.get(Recorder, holding)
    held = asyncio.ensure_future(recorder.invoke(holding, "hold"))
    await wait_until(lambda: (holding, (holding, "hold")) in app.EVENTS, f"{holding} to run")
    exclusive = asyncio.ensure_future(recorder.mark("exclusive"))
    assert await still_pending(exclusive)
    assert ("mark", (holding, "exclusive")) not in app.EVENTS
    app.gate("hold").set()
    await bounded(asyncio.gather(held, exclusive), "both calls")
    assert ("mark", (holding, "exclusive")) in app.EVENTS


async def test_calls_arriving_during_activation_wait_for_it_then_start_in_arrival_order(
    cluster: Cluster,
) -> None:
    actor = cluster.get(SlowLife, "arriving")
    app.gate("deactivate-arriving").set()  # (on_deactivate holds the cluster's close otherwise)
    exclusive = asyncio.ensure_future(actor.mark("exclusive"))
    await wait_until(lambda: ("slow-activating", "arriving") in app.EVENTS, "on_activate")
    interleaved = asyncio.ensure_future(actor.interleaved_mark("interleaved"))
    assert await still_pending(asyncio.gather(exclusive, interleaved))
    assert [e for e in app.EVENTS if e[0].startswith("slow-") and "mark" in e[0]] == []
    app.gate("activate-arriving").set()
    await bounded(asyncio.gather(exclusive, interleaved), "the calls after activation")
    marks = [e for e in app.EVENTS if e[0] in ("slow-mark", "slow-interleaved-mark")]
    # (docs/decisions.md, "Interleaving": as on an active actor, the plain call that came first
    # starts first, and the interleaving one does not wait behind it.)
    assert marks == [
        ("slow-mark", ("arriving", "exclusive")),
        ("slow-interleaved-mark", ("arriving", "interleaved")),
    ]


async def test_a_call_arriving_during_deactivation_runs_on_the_next_activation(
    cluster: Cluster,
) -> None:
    actor = cluster.get(SlowLife, "leaving")
    app.gate("activate-leaving").set()
    await actor.mark("before")
    await actor.leave()
    await wait_until(
        lambda: ("slow-deactivating", ("leaving", DeactivationReason.REQUESTED)) in app.EVENTS,
        "on_deactivate",
    )
    arriving = asyncio.ensure_future(actor.mark("during"))
    try:
        assert await still_pending(arriving)  # not run by the activation on its way out
        assert ("slow-mark", ("leaving", "during")) not in app.EVENTS
    finally:
        app.gate("deactivate-leaving").set()
    await bounded(arriving, "the call that arrived during deactivation")
    assert app.EVENTS.count(("slow-activating", "leaving")) == 2
    assert await actor.entries() == ["before", "during"]  # on the state the first one stored


# -- tasks a turn leaves running ------------------------------------------------------------------

_LEFT: dict[str, asyncio.Event] = {}


def _left_gate(name: str) -> asyncio.Event:
    return _LEFT.setdefault(name, asyncio.Event())


class Starter(Actor[None], name="test.semantics.Starter"):
    """Starts a task that outlives the turn (or ``on_activate``) and calls back through B."""

    async def on_activate(self) -> None:
        if self.context.id.key == "from-activate":
            self.task = asyncio.ensure_future(self._call_back_later())

    async def leave_task(self) -> None:
        self.task = asyncio.ensure_future(self._call_back_later())

    async def _call_back_later(self) -> str:
        await _left_gate(f"go-{self.context.id.key}").wait()
        return await self.actors.get(Bouncer, 1).bounce(self.context.id.key)

    async def hold(self) -> str:
        await _left_gate(f"release-{self.context.id.key}").wait()
        return "held"

    async def hello(self) -> str:
        return "hello"

    @always_interleave
    async def outcome(self) -> str:
        try:
            return await self.task
        except Exception as exc:
            return repr(exc)


class Bouncer(Actor[None], name="test.semantics.Bouncer"):
    async def bounce(self, key: str) -> str:
        return await self.actors.get(Starter, key).hello()


@pytest.mark.parametrize("key", ["from-turn", "from-activate"])
async def test_a_task_left_running_calls_back_as_from_outside_the_ended_turn(key: str) -> None:
    # The task inherits the context of the turn (or on_activate) that started it, call chain
    # included. Once that has ended, nothing waits on the task through it: its call back into
    # the actor, busy in a later turn, waits for that turn; it is not a deadlock.
    _LEFT.clear()
    async with Cluster.local(actors=[Starter, Bouncer], silos=1) as cluster:
        starter = cluster.get(Starter, key)
        await starter.leave_task() if key == "from-turn" else await starter.hello()
        holding = asyncio.ensure_future(starter.hold())
        activation = cluster.silos[0].activations[starter.actor_id]
        await wait_until(lambda: activation.exclusive, "the later turn to start")
        _left_gate(f"go-{key}").set()
        # The call back reaches the busy actor: queued behind the later turn (not refused,
        # which ended the task at once).
        task = activation.instance.task
        await wait_until(lambda: activation.queued() > 0 or task.done(), "the call back")
        _left_gate(f"release-{key}").set()
        assert await bounded(holding, "the later turn") == "held"
        assert await bounded(starter.outcome(), "the task") == "hello"


# -- a caller that gives up -----------------------------------------------------------------------


class _Slow(Actor[list[str]], name="test.Slow"):
    async def append_after(self, tag: str, gate_name: str) -> int:
        await app.gate(gate_name).wait()
        self.state.append(tag)
        return len(self.state)

    async def tags(self) -> list[str]:
        return self.state


async def test_a_caller_that_is_cancelled_leaves_its_call_running() -> None:
    """As an Orleans call without a cancellation token: cancelling the task that awaits a call
    (a timeout around it, a task group failing) ends that wait only. The turn, started in the
    caller's stack, runs on, commits and answers nobody; a call queued behind it runs too; the
    caller keeps no record of either."""
    app.GATES.clear()
    async with Cluster.local(actors=[_Slow]) as local:
        actor = local.get(_Slow, "s")
        first = asyncio.ensure_future(actor.append_after("first", "slow"))
        await wait_until(lambda: "slow" in app.GATES, "the first turn to start")
        queued = asyncio.ensure_future(actor.append_after("queued", "slow"))
        assert await still_pending(queued)
        first.cancel()
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        with pytest.raises(asyncio.CancelledError):
            await queued
        app.gate("slow").set()

        async def both_ran() -> bool:
            return await actor.tags() == ["first", "queued"]

        await wait_until(both_ran, "the abandoned turns to run")
        assert not local._caller._pending
