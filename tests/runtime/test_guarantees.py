"""The runtime's guarantees on an in-process cluster of three silos (DESIGN.md, "Semantics")."""

from __future__ import annotations

import asyncio
import copy
import re
import zlib
from collections.abc import Callable

import pytest

from raygrain.actors import Actor, ActorCallTimeout, DeactivationReason, DeadlockError, read_only
from raygrain.runtime import Cluster, ManualClock
from raygrain.runtime.kernel import Response
from tests import app
from tests.app import BankAccount, Chain, ContextUser, Ephemeral, Recorder, Reentrant, Worker
from tests.helpers import activation_of, bounded, still_pending, wait_until

Key = Callable[[str], str]


async def test_first_call_activates_and_state_persists_across_calls(
    any_cluster: Cluster, key: Key
) -> None:
    alice = any_cluster.get(BankAccount, key("alice"))
    assert await alice.deposit(100) == 100
    assert await alice.deposit(50) == 150
    assert await alice.balance() == 150


@pytest.mark.parametrize(
    "odd",
    [
        lambda unique: f"{unique} \ud800 lone surrogate",
        lambda unique: f"{unique} ключ\x00🔑",
        lambda unique: 2**70 + zlib.crc32(unique.encode()),  # beyond what msgpack carries
        lambda unique: -(2**70) - zlib.crc32(unique.encode()),
    ],
    ids=["lone_surrogate", "unicode_nul", "int_beyond_64_bits", "negative_int_beyond_64_bits"],
)
async def test_any_valid_key_names_a_reachable_actor(
    any_cluster: Cluster, key: Key, odd: Callable[[str], str | int]
) -> None:
    # On Ray such a key once failed the whole batch of messages it travelled in (every call in
    # it got SiloUnavailableError), and its state writes failed at the storage server.
    account = any_cluster.get(BankAccount, odd(key("odd")))
    neighbour = any_cluster.get(BankAccount, key("neighbour"))
    assert await asyncio.gather(account.deposit(5), neighbour.deposit(1)) == [5, 1]
    assert await account.balance() == 5


async def test_single_activation_per_identity_across_silos(any_cluster: Cluster, key: Key) -> None:
    # The same key reached at once from the client and from actors hosted on every silo.
    recorder = any_cluster.get(Recorder, key("one"))
    callers = [any_cluster.get(Chain, key(f"c{i}")) for i in range(30)]
    hosts = await asyncio.gather(*(c.where() for c in callers))
    ids = await asyncio.gather(
        recorder.instance_id(), *(c.relay(recorder, "instance_id") for c in callers)
    )
    assert len(set(ids)) == 1
    if any_cluster.silos:  # in-process: look inside the silos too
        assert Recorder.activations == 1
        hosting = [s.name for s in any_cluster.silos if recorder.actor_id in s.activations]
        assert len(hosting) == 1
        placed = {any_cluster.silos[0].membership.ring.owner(c.actor_id) for c in callers}
        assert len(placed) == 3, "callers should be spread over all silos"
    else:
        assert len(set(hosts)) == 3, "callers should be spread over the three Ray silos"


async def test_turns_run_one_at_a_time_in_arrival_order(any_cluster: Cluster, key: Key) -> None:
    recorder = any_cluster.get(Recorder, key("turns"))
    await asyncio.gather(*(recorder.record(str(i)) for i in range(10)))
    expected = [e for i in range(10) for e in (f"start {i}", f"end {i}")]
    assert await recorder.entries() == expected


async def test_always_interleave_runs_during_a_blocked_turn(cluster: Cluster) -> None:
    recorder = cluster.get(Recorder, "interleave")
    waiting = asyncio.ensure_future(recorder.wait_for("g1"))
    await recorder.release("g1")  # would queue behind wait_for without interleaving
    assert await asyncio.wait_for(waiting, 5) == "released"


async def test_non_interleaving_call_waits_for_the_running_turn(cluster: Cluster) -> None:
    recorder = cluster.get(Recorder, "blocked")
    waiting = asyncio.ensure_future(recorder.wait_for("g2"))
    await wait_until(lambda: "g2" in app.GATES, "the first turn to wait on its gate")
    queued = asyncio.ensure_future(recorder.mark("after"))
    activation = activation_of(cluster, recorder)
    await wait_until(lambda: bool(activation.mailbox), "the second call to reach the mailbox")
    # Delivered, and the first turn still holds the gate: the second must not have started.
    assert await still_pending(queued)
    assert ("mark", ("blocked", "after")) not in app.EVENTS
    await recorder.release("g2")
    await bounded(asyncio.gather(waiting, queued), "both turns to end")
    assert ("mark", ("blocked", "after")) in app.EVENTS


async def test_reentrant_class_interleaves_every_call(cluster: Cluster) -> None:
    actor = cluster.get(Reentrant, "r")
    waiting = asyncio.ensure_future(actor.wait_for("g3"))
    await actor.release("g3")
    assert await asyncio.wait_for(waiting, 5) == "released"


async def test_read_only_calls_run_together(cluster: Cluster) -> None:
    recorder = cluster.get(Recorder, "readers")
    # Each call returns only when all three are inside the method at once.
    results = await asyncio.wait_for(
        asyncio.gather(*(recorder.read_barrier("b", 3) for _ in range(3))), 5
    )
    assert results == [0, 0, 0]


async def test_deadlock_a_b_a_is_detected_immediately(any_cluster: Cluster, key: Key) -> None:
    # With an hour's deadline, a DeadlockError (not an ActorCallTimeout, not a hang) shows that
    # the cycle was refused when it formed rather than left to its deadline.
    a = any_cluster.get(Chain, key("a"))
    with pytest.raises(DeadlockError, match="deadlock") as info:
        await bounded(a.with_timeout(3600).call_peer(key("b")), "a -> b -> a")
    assert f"test.Chain/{key('a')}" in str(info.value)
    assert await a.ping() == f"pong from {key('a')}"  # and a keeps serving


async def test_self_call_of_a_non_reentrant_actor_is_a_deadlock(
    any_cluster: Cluster, key: Key
) -> None:
    with pytest.raises(DeadlockError):
        await any_cluster.get(Chain, key("self")).call_self()


async def test_reentrant_actor_may_be_called_back(any_cluster: Cluster, key: Key) -> None:
    actor = any_cluster.get(Reentrant, key("cb"))
    assert await actor.call_back(any_cluster.get(Chain, key("x"))) == "pong"


async def test_a_turn_owns_the_timeouts_it_sets(any_cluster: Cluster, key: Key) -> None:
    recorder = any_cluster.get(Recorder, key("timeouts"))
    assert await recorder.bounded_sleep(0, 5) == "slept"  # set and left without waiting
    assert await recorder.bounded_sleep(5, 0.05) == "timed out"
    assert await recorder.bounded_sleep(5, 0) == "timed out"  # expired before the turn waits
    assert asyncio.current_task() is not None
    assert not asyncio.current_task().cancelling()  # the caller's task was left alone
    assert await recorder.bounded_sleep(0.01, 5) == "slept"


async def test_call_deadline_raises_timeout(any_cluster: Cluster, key: Key) -> None:
    recorder = any_cluster.get(Recorder, key("slow"))
    with pytest.raises(ActorCallTimeout, match=re.escape(f"test.Recorder/{key('slow')}.sleep")):
        await recorder.with_timeout(0.2).sleep(2)


async def test_per_method_timeout_applies(any_cluster: Cluster, key: Key) -> None:
    with pytest.raises(ActorCallTimeout, match="0.2 s"):
        await any_cluster.get(Recorder, key("m")).slow_with_short_timeout()


async def test_cluster_default_timeout_applies() -> None:
    async with Cluster.local(
        actors=[Recorder], default_timeout=0.1, deactivation_timeout=0.1
    ) as cluster:
        with pytest.raises(ActorCallTimeout):
            await cluster.get(Recorder, "d").sleep(5)
        assert isinstance(ActorCallTimeout("x"), TimeoutError)


async def test_late_result_is_dropped_and_actor_keeps_serving(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    caller = cluster._caller
    late: list[tuple[int, bool]] = []  # (call id, whether its caller still waited)
    deliver = caller.deliver_response

    def watch(response: Response) -> None:
        late.append((response.call_id, response.call_id in caller._pending))
        deliver(response)

    monkeypatch.setattr(caller, "deliver_response", watch)
    recorder = cluster.get(Recorder, "late")
    assert await recorder.entries() == []  # active: the next turn starts at once
    late.clear()
    with pytest.raises(ActorCallTimeout):
        await recorder.with_timeout(0.5).wait_for("late-gate")
    assert "late-gate" in app.GATES  # the turn ran (a call expired while queued would not)
    # Another call is waiting when the late reply comes: the reply must not answer it.
    other = asyncio.ensure_future(cluster.get(Recorder, "other").wait_for("other-gate"))
    await wait_until(lambda: "other-gate" in app.GATES, "the other call's turn")
    assert late == []  # nothing answered yet: both turns wait on their gates
    assert await recorder.release("late-gate") is None  # its own answer, not the late one
    await wait_until(lambda: len(late) >= 2, "the timed-out turn's late reply")
    # The release's reply was awaited; the late one came for a call nobody waits for any more.
    assert sorted(waited for _, waited in late) == [False, True]
    assert await still_pending(other), f"the late reply answered another call: {other.result()!r}"
    app.gate("other-gate").set()
    assert await bounded(other, "the other call") == "released"
    assert await recorder.entries() == []
    assert await recorder.wait_for("late-gate") == "released"  # and the actor serves on


async def test_one_way_returns_before_the_turn_runs(cluster: Cluster) -> None:
    recorder = cluster.get(Recorder, "ow")
    blocker = asyncio.ensure_future(recorder.wait_for("ow-gate"))
    assert await asyncio.wait_for(recorder.fire("x"), 5) is None  # accepted, not yet run
    await recorder.release("ow-gate")
    await blocker
    await asyncio.wait_for(app.gate("fired-ow").wait(), 5)
    assert await recorder.entries() == ["fired x"]


async def test_refs_travel_as_arguments_and_results(any_cluster: Cluster, key: Key) -> None:
    a, b = any_cluster.get(Chain, key("ra")), any_cluster.get(Chain, key("rb"))
    assert await a.relay(b, "ping") == f"pong from {key('rb')}"
    returned = await a.pass_ref(b)
    assert returned == b
    assert await returned.ping() == f"pong from {key('rb')}"  # bound to the client on arrival


async def test_a_copy_of_a_reference_stays_bound(cluster: Cluster) -> None:
    """copy.copy and copy.deepcopy (of a reference, or of a structure holding one) gave an
    unbound reference: ClusterClosedError while the cluster was open."""
    ref = cluster.get(Chain, "copied")
    for copied in (copy.copy(ref), copy.deepcopy(ref), copy.deepcopy({"r": [ref]})["r"][0]):
        assert copied == ref
        assert await copied.ping() == "pong from copied"


async def test_stateless_worker_runs_several_activations(cluster: Cluster) -> None:
    worker = cluster.get(Worker, 0)
    calls = [asyncio.ensure_future(worker.hold("w")) for _ in range(4)]
    # Each call blocks until released, so four concurrent calls need four activations.
    await wait_until(
        lambda: sum(len(p) for s in cluster.silos for p in s.workers.values()) == 4,
        "four worker activations",
    )
    app.gate("w").set()
    assert len(set(await asyncio.gather(*calls))) == 4


async def test_stateless_worker_activations_are_capped_per_silo(cluster: Cluster) -> None:
    # max_local_workers=4: the fifth and sixth calls wait for a free activation, not a new one.
    worker = cluster.get(Worker, 1)
    calls = [asyncio.ensure_future(worker.hold("cap")) for _ in range(6)]
    pools = lambda: sum(len(p) for s in cluster.silos for p in s.workers.values())  # noqa: E731
    await wait_until(lambda: pools() == 4, "four worker activations")
    assert await still_pending(asyncio.gather(*calls, return_exceptions=True))
    assert pools() == 4 and not any(c.done() for c in calls)
    app.gate("cap").set()
    ids = await bounded(asyncio.gather(*calls), "the six calls")
    assert len(set(ids)) == 4


async def test_a_stateless_worker_called_back_through_a_chain_gets_another_activation(
    cluster: Cluster,
) -> None:
    """The call back started a new activation of the worker, still activating when it came,
    which was taken for the busy one in the chain: a DeadlockError."""
    worker = cluster.get(Worker, 2)
    assert await worker.round_trip("via")
    assert len(await asyncio.gather(*(worker.round_trip("via") for _ in range(2)))) == 2


class _LoneWorker(Actor[None], name="test.LoneWorker", stateless_worker=True, max_local_workers=1):
    async def on_activate(self) -> None:
        # Back to its own (only) activation, which is waiting in on_activate: a true cycle.
        await self.actors.get(Chain, "relay").relay(
            self.actors.get(_LoneWorker, self.context.key), "quick"
        )

    async def quick(self) -> int:
        return 1


async def test_a_stateless_worker_cycle_back_to_its_only_activation_is_a_deadlock() -> None:
    """The call back reached the activating worker, the chain's own: a DeadlockError, not a
    wait until the call's deadline (the other-activation rule must not cover it)."""
    async with Cluster.local(actors=[_LoneWorker, Chain], default_timeout=60) as local:
        with pytest.raises(DeadlockError):
            await bounded(local.get(_LoneWorker, 1).quick(), "the deadlock to be reported", 30)


class _Reads(Actor[int], name="test.Reads"):
    @read_only
    async def outer(self, via: str) -> str:
        await app.gate("reads").wait()
        back: str = await self.actors.get(Chain, via).relay(
            self.actors.get(_Reads, self.context.key), "inner"
        )
        return back

    @read_only
    async def inner(self) -> str:
        return "inner"

    async def write(self) -> int:
        self.state += 1
        return self.state


async def test_a_read_only_call_back_into_a_read_only_turn_passes_a_queued_writer() -> None:
    """Read-only A.outer -> B -> read-only A.inner, with a write to A queued meanwhile: the
    call back queued behind the writer, which waited for outer, which waited for it
    (a DeadlockError). It runs beside the reader; the writer then runs after it."""
    app.GATES.clear()
    async with Cluster.local(actors=[_Reads, Chain]) as local:
        actor = local.get(_Reads, "r")
        outer = asyncio.ensure_future(actor.outer("via"))
        await wait_until(lambda: "reads" in app.GATES, "the read-only turn to start")
        write = asyncio.ensure_future(actor.write())
        assert await still_pending(write)  # (queued behind the reader)
        app.gate("reads").set()
        assert await bounded(outer, "the read-only chain") == "inner"
        assert await bounded(write, "the queued write") == 1


class _Crossing(Actor[int], name="test.Crossing"):
    """Read-only turns that hold at a gate, then read the other actor, which reads back."""

    @read_only
    async def read_across(self, other: str, hops: int) -> int:
        if hops == 2:
            await app.gate(f"crossing-{self.context.key}").wait()
        if hops == 0:
            return 0
        peer = self.actors.get(_Crossing, other)
        return 1 + int(await peer.read_across(self.context.key, hops - 1))

    async def write(self) -> int:
        self.state += 1
        return self.state


async def test_read_only_chains_crossing_two_actors_with_writers_queued_do_not_hang() -> None:
    """A.read -> B.read -> A.read and B.read -> A.read -> B.read at once, with a write queued
    on each: the second hop of each chain queued behind the other actor's writer, which
    waited for that actor's reader, which waited for the first chain: every call hung until
    its deadline, a deadlock the chains could not show (Orleans runs such readers beside the
    running ones). A read-only call made from a turn joins the running readers."""
    app.GATES.clear()
    async with Cluster.local(actors=[_Crossing], default_timeout=60) as local:
        a, b = local.get(_Crossing, "a"), local.get(_Crossing, "b")
        chains = [asyncio.ensure_future(a.read_across("b", 2))]
        chains.append(asyncio.ensure_future(b.read_across("a", 2)))
        await wait_until(
            lambda: {"crossing-a", "crossing-b"} <= set(app.GATES), "both readers to start"
        )
        writes = [asyncio.ensure_future(a.write()), asyncio.ensure_future(b.write())]
        assert await still_pending(writes[0]) and await still_pending(writes[1])
        app.gate("crossing-a").set()
        app.gate("crossing-b").set()
        assert await bounded(asyncio.gather(*chains), "the crossing read-only chains") == [2, 2]
        assert await bounded(asyncio.gather(*writes), "the queued writes") == [1, 1]


async def test_idle_activation_is_collected_by_the_fake_clock(
    cluster: Cluster, clock: ManualClock
) -> None:
    eph = cluster.get(Ephemeral, "e")
    first = await eph.touch()
    clock.advance(5)
    assert await cluster.collect_idle() == 0  # touched 5 s ago; idle_timeout is 10 s
    clock.advance(11)
    assert await cluster.collect_idle() == 1
    assert ("ephemeral-deactivate", ("e", DeactivationReason.IDLE)) in app.EVENTS
    assert not any(eph.actor_id in s.activations for s in cluster.silos)
    assert first  # (the first activation answered)
    await eph.touch()
    assert app.EVENTS.count(("ephemeral-activate", "e")) == 2  # the next call activated anew


async def test_a_read_only_call_of_a_reentrant_actor_leaves_it_idle(
    cluster: Cluster, clock: ManualClock
) -> None:
    # A read-only method of a reentrant class runs as an interleaved turn, and must end as one:
    # counted as a reader at its end, the activation never looked idle again (never collected,
    # and a shutdown waited out the whole deactivation timeout for it).
    actor = cluster.get(app.Reentrant, "reader")
    assert await actor.entries() == []
    assert await actor.ping() == "pong"
    clock.advance(16 * 60)  # past the default idle timeout
    assert await cluster.collect_idle() == 1


async def test_periodic_collection_runs_on_the_clock(clock: ManualClock) -> None:
    async with Cluster.local(
        actors=[Ephemeral], silos=1, clock=clock, collection_period=30
    ) as cluster:
        await cluster.get(Ephemeral, "p").touch()
        silo = cluster.silos[0]
        clock.advance(29)
        assert silo.collections == 0  # the collector sleeps on the clock, not in real time
        clock.advance(1)
        await silo.wait_for_collection(1)  # idle for 30 s, over its 10 s idle_timeout
        assert silo.stats()["activations"] == 0
    assert ("ephemeral-deactivate", ("p", DeactivationReason.IDLE)) in app.EVENTS


async def test_deactivate_on_idle_and_reactivation(cluster: Cluster) -> None:
    recorder = cluster.get(Recorder, "leaver")
    await recorder.record("1")
    await recorder.leave()
    await wait_until(
        lambda: not any(recorder.actor_id in s.activations for s in cluster.silos),
        "the activation that asked to leave to be gone",
    )
    assert ("deactivate", ("leaver", DeactivationReason.REQUESTED)) in app.EVENTS
    assert await recorder.entries() == ["start 1", "end 1"]  # state survived
    assert Recorder.activations == 2


class _LeavesLater(Actor[None], name="test.LeavesLater"):
    async def leave_when_done(self) -> None:
        # A background job the turn starts and does not await: it asks to leave when done.
        async def job() -> None:
            await app.gate(f"job-{self.context.key}").wait()
            self.context.deactivate_on_idle()

        self.job = asyncio.ensure_future(job())

    async def on_deactivate(self, reason: DeactivationReason) -> None:
        app.EVENTS.append(("deactivate", (self.context.key, reason)))


async def test_deactivate_on_idle_asked_outside_a_turn_takes_effect() -> None:
    """Asked by a task the actor left running, after its turn had ended, it waited for a turn
    to end that was not coming: the activation stayed until idle collection or the next call
    (Orleans' DeactivateOnIdle deactivates an idle grain at once)."""
    app.GATES.clear()
    app.EVENTS.clear()
    async with Cluster.local(actors=[_LeavesLater]) as local:
        actor = local.get(_LeavesLater, "l")
        await actor.leave_when_done()
        app.gate("job-l").set()
        await wait_until(
            lambda: ("deactivate", ("l", DeactivationReason.REQUESTED)) in app.EVENTS,
            "the idle activation that asked to leave to deactivate",
        )
        await wait_until(
            lambda: not any(actor.actor_id in silo.activations for silo in local.silos),
            "the activation to be gone",
        )


async def test_aclose_deactivates_every_activation() -> None:
    cluster = Cluster.local(actors=app.ALL_ACTORS, silos=2)
    async with cluster:
        for key in ("x", "y", "z"):
            await cluster.get(Recorder, key).record("1")
    deactivated = [e for e in app.EVENTS if e[0] == "deactivate"]
    assert sorted(k for k, _ in (e[1] for e in deactivated)) == ["x", "y", "z"]
    assert all(reason is DeactivationReason.SHUTDOWN for _, reason in (e[1] for e in deactivated))
    assert all(s.stats()["activations"] == 0 for s in cluster.silos)


async def test_context_variables_set_in_a_turn_stay_in_that_turn(
    any_cluster: Cluster, key: Key
) -> None:
    # As if each turn were a task of its own: nothing a turn sets is seen by later turns (of the
    # same actor or another), and nothing flows in from the caller's context.
    token = app.USER_VAR.set("the caller's")
    try:
        users = [any_cluster.get(ContextUser, key(f"u{i}")) for i in range(20)]
        # Three calls per actor at once: the later ones queue, and start on runner tasks.
        seen = await asyncio.gather(
            *(user.swap(f"{i}.{n}") for n in range(3) for i, user in enumerate(users))
        )
        # on_activate ran in the activation started by the first of those calls.
        activated = await asyncio.gather(*(user.activation_saw() for user in users))
    finally:
        app.USER_VAR.reset(token)
    assert set(seen) == {"unset"}
    assert set(activated) == {"unset"}


async def test_deactivation_hooks_do_not_see_the_turn_that_asked_for_them(cluster: Cluster) -> None:
    app.EVENTS.clear()
    user = cluster.get(ContextUser, "leaver")
    await user.leave("the leaving turn's")
    await wait_until(
        lambda: any(e[0] == "context-user-deactivate" for e in app.EVENTS), "on_deactivate"
    )
    assert [e for e in app.EVENTS if e[0] == "context-user-deactivate"] == [
        ("context-user-deactivate", "unset")
    ]


async def test_decimal_arithmetic_in_turns_leaves_their_runners_in_service(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The decimal module creates a context variable on first use; a runner whose turn left a
    # variable in its context retires (see TurnRunners.run), so without care every Decimal turn
    # would cost a new task.
    from raygrain.runtime.kernel._runners import TurnRunners

    created = []
    new_runner = TurnRunners._new_runner
    monkeypatch.setattr(
        TurnRunners, "_new_runner", lambda self: created.append(1) or new_runner(self)
    )
    users = [cluster.get(ContextUser, f"dec{i}") for i in range(20)]

    async def burst() -> list[str]:
        return await asyncio.gather(
            *(user.decimal_sum(["0.1", "0.2"]) for _ in range(5) for user in users)
        )

    assert set(await burst()) == {"0.3"}
    warmed_up = len(created)
    for _ in range(5):
        assert set(await burst()) == {"0.3"}
    assert len(created) - warmed_up <= 10, f"{len(created) - warmed_up} runners created"


async def test_a_turn_that_cancels_its_own_task_leaves_the_silo_serving(cluster: Cluster) -> None:
    # A turn runs as (or on) its runner task: cancelling "its own task" cancels that runner, which
    # must then not take further turns (it would fail them, or leave their callers waiting).
    users = [cluster.get(ContextUser, f"cancel{i}") for i in range(6)]
    await asyncio.gather(*(user.swap("") for user in users))  # active, with idle runners
    assert await users[0].cancel_own_task() == "returned"
    for user in users[1:]:
        assert await asyncio.wait_for(user.swap("x"), 5) == "unset"
