"""Metrics on an in-process cluster: a workload, then the Prometheus endpoint scraped over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import types
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raygrain.actors import (
    Actor,
    ActorCallTimeout,
    ActorId,
    ConfigurationError,
    DeactivationReason,
    InconsistentStateError,
    ReminderTick,
    StorageError,
    TransactionAbortedError,
    TransactionInDoubtError,
    call_timeout,
)
from raygrain.runtime import Cluster, ManualClock, ReminderSettings
from raygrain.runtime.metrics import OVERFLOW, Kind, MetricRegistry, MetricsSettings
from raygrain.runtime.metrics._catalog import calls_of
from raygrain.runtime.metrics._registry import FLUSH_AT
from raygrain.storage import MemoryStorage, SqliteStorage, StateRecord, StateWrite
from tests.app import Vault
from tests.runtime.time_helpers import step


class Rejected(Exception):
    pass


@dataclass
class Tally:
    count: int = 0


class Meter(Actor[Tally], name="metrics.Meter"):
    async def add(self, amount: int) -> int:
        self.state.count += amount
        return self.state.count

    async def fail(self, kind: str) -> None:
        raise (ValueError if kind == "value" else Rejected)(kind)

    async def dawdle(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    @call_timeout(0.2)
    async def stall(self, name: str) -> None:
        await STALLS.setdefault(name, asyncio.Event()).wait()


STALLS: dict[str, asyncio.Event] = {}


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the endpoint, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def test_a_workload_moves_the_scraped_counters_and_histograms_by_its_size(
    tmp_path: Path,
) -> None:
    async with Cluster.local(
        actors=[Meter], silos=2, storage=f"sqlite:///{tmp_path / 'state.db'}", metrics_port=0
    ) as cluster:
        assert cluster.metrics is not None and cluster.metrics.port
        meters = [cluster.get(Meter, f"m{i}") for i in range(10)]
        await asyncio.gather(*(m.add(1) for m in meters for _ in range(10)))  # 100 writes
        for kind in ("value", "value", "value", "rejected"):
            with pytest.raises((ValueError, Rejected)):
                await meters[0].fail(kind)
        with pytest.raises(ActorCallTimeout):
            await meters[1].stall("t1")
        STALLS["t1"].set()

        samples = await asyncio.to_thread(scrape, cluster.metrics.port)

    meter = {"type": "metrics.Meter"}
    for side in ("caller", "callee"):
        add = {**meter, "side": side, "method": "add"}
        assert total(samples, "raygrain_calls_total", **add) == 100
        assert total(samples, "raygrain_call_duration_seconds_count", **add) == 100
        assert total(samples, "raygrain_call_duration_seconds_bucket", **add, le="+Inf") == 100
        assert total(samples, "raygrain_call_duration_seconds_sum", **add) > 0
        failing = {**meter, "side": side, "method": "fail"}
        assert total(samples, "raygrain_call_errors_total", **failing, error="ValueError") == 3
        assert total(samples, "raygrain_call_errors_total", **failing, error="Rejected") == 1
        assert total(samples, "raygrain_call_errors_total", **add) == 0
    # A timeout is the caller's error; the turn itself ended well (after the caller left).
    stall = {**meter, "method": "stall"}
    assert total(samples, "raygrain_call_errors_total", **stall, error="ActorCallTimeout") == 1
    # Cumulative buckets never go down, and each silo is a series of its own.
    buckets = sorted(
        (float(dict(ls)["le"]), v)
        for (n, ls), v in samples.items()
        if n == "raygrain_call_duration_seconds_bucket"
        and {("side", "callee"), ("method", "add"), ("silo", "silo-0")} <= ls
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert {dict(ls)["silo"] for (n, ls) in samples if n == "raygrain_calls_total"} >= {
        "silo-0",
        "silo-1",
        "client",
    }
    assert total(samples, "raygrain_activations", **meter) == 10
    assert total(samples, "raygrain_activations_created_total", **meter) == 10
    assert total(samples, "raygrain_activation_duration_seconds_count", **meter) == 10
    # Storage: 10 reads (activations), 100 queued writes, in batches of 100 records in all.
    storage = {"provider": "SqliteStorage"}
    assert (
        total(samples, "raygrain_storage_operation_seconds_count", **storage, operation="read")
        == 10
    )
    assert (
        total(samples, "raygrain_storage_operation_seconds_count", **storage, operation="write")
        == 100
    )
    assert total(samples, "raygrain_storage_errors_total") == 0
    assert total(samples, "raygrain_storage_batch_size_sum", **storage) == 100
    assert 1 <= total(samples, "raygrain_storage_batch_size_count", **storage) <= 100
    assert total(samples, "raygrain_membership_silos", status="active") == 2 * 2  # per silo


async def test_a_provider_used_by_a_second_cluster_reports_its_batches_there(
    tmp_path: Path,
) -> None:
    storage = SqliteStorage(str(tmp_path / "state.db"))
    try:
        # A cluster built and never started leaves no observer on the provider (it was
        # registered with the wrapper, and took the next cluster's batches).
        Cluster.local(actors=[Meter], silos=2, storage=storage)
        assert storage.batch_observers == []
        for cluster_number in (1, 2):
            async with Cluster.local(actors=[Meter], silos=2, storage=storage) as cluster:
                assert cluster.metrics is not None
                await asyncio.gather(*(cluster.get(Meter, f"b{i}").add(1) for i in range(20)))
                value = cluster.metrics.value
                assert value("raygrain_storage_batch_size_sum") == 20, cluster_number
                assert value("raygrain_storage_batch_size_count") >= 1, cluster_number
            assert storage.batch_observers == [], cluster_number
    finally:
        await storage.aclose()


class RefusesQueuedWrites(MemoryStorage):
    """Queues writes (``storage.QueuedWrites``) and answers the second and later with a
    ``StorageError``, on the event loop after ``queue_write`` returned, as a server would."""

    queued = 0

    def queue_write(
        self,
        actor_id: ActorId,
        data: bytes,
        expected_etag: str | None,
        done: Callable[[str | Exception], object],
    ) -> None:
        self.queued += 1
        if self.queued == 1:
            written = asyncio.ensure_future(self.write(actor_id, data, expected_etag))
            written.add_done_callback(lambda task: done(task.exception() or task.result()))
        else:
            asyncio.get_running_loop().call_soon(done, StorageError("disk full"))


async def test_a_queued_write_is_timed_and_its_failure_counted_and_told_to_the_turn() -> None:
    storage = RefusesQueuedWrites()
    async with Cluster.local(actors=[Meter], silos=1, storage=storage) as cluster:
        meter = cluster.get(Meter, "q")
        assert await meter.add(1) == 1
        with pytest.raises(StorageError, match="disk full"):
            await meter.add(5)
        assert storage.queued == 2
        assert cluster.metrics is not None
        value = cluster.metrics.value
        timed = "raygrain_storage_operation_seconds_count"
        assert value(timed, provider="RefusesQueuedWrites", operation="write") == 2
        errors = "raygrain_storage_errors_total"
        assert value(errors, operation="write", error="StorageError") == 1
        assert value(errors) == 1


async def test_sqlite_times_its_queued_writes_and_counts_a_conflict_and_a_failed_batch(
    tmp_path: Path,
) -> None:
    # SQLite times queued writes itself, a batch at a time (storage.TimedWrites): each silo
    # sharing the file gets its own writes' durations, failures included.
    async with (
        SqliteStorage(tmp_path / "timed.db") as storage,
        Cluster.local(actors=[Meter], silos=1, storage=storage) as first,
        Cluster.local(actors=[Meter], silos=1, storage=storage) as second,
    ):
        assert first.metrics is not None and second.metrics is not None
        timed = "raygrain_storage_operation_seconds_count"
        errors = "raygrain_storage_errors_total"
        assert await first.get(Meter, "x").add(1) == 1
        assert await second.get(Meter, "x").add(10) == 11  # activated from the first's write
        # The first silo's activation is stale now: its write is refused (a conflict in a
        # batch that committed).
        with pytest.raises(InconsistentStateError, match="metrics.Meter/x"):
            await first.get(Meter, "x").add(100)
        assert first.metrics.value(timed, operation="write") == 2
        assert first.metrics.value(errors, operation="write") == 1
        assert second.metrics.value(timed, operation="write") == 1
        assert second.metrics.value(errors) == 0

        # A whole batch failing (the file refusing the transaction) is timed and counted too.
        apply = storage._apply

        async def refuse(batch: Any) -> Any:
            storage._apply = apply  # type: ignore[method-assign]
            raise sqlite3.OperationalError("disk I/O error")

        storage._apply = refuse  # type: ignore[method-assign]
        with pytest.raises(StorageError, match="disk I/O error"):
            await second.get(Meter, "y").add(1)
        assert second.metrics.value(timed, operation="write") == 2
        assert second.metrics.value(errors, operation="write", error="StorageError") == 1
        assert await second.get(Meter, "y").add(2) == 2  # nothing of the failed write stayed
        assert second.metrics.value(timed, operation="write") == 3
        assert first.metrics.value(timed, operation="write") == 2


class CountingQueuedWrites(SqliteStorage):
    """A subclass wrapping ``queue_write`` (as a fault-injecting one would)."""

    queued = 0

    def queue_write(
        self,
        actor_id: ActorId,
        data: bytes,
        expected_etag: str | None,
        done: Callable[[str | Exception], object],
    ) -> None:
        self.queued += 1
        super().queue_write(actor_id, data, expected_etag, done)


async def test_a_subclass_wrapping_queue_write_sees_every_timed_write(tmp_path: Path) -> None:
    async with (
        CountingQueuedWrites(tmp_path / "counted.db") as storage,
        Cluster.local(actors=[Meter], silos=1, storage=storage) as cluster,
    ):
        assert cluster.metrics is not None
        assert await cluster.get(Meter, "c").add(1) == 1
        assert await cluster.get(Meter, "c").add(2) == 3
        assert storage.queued == 2
        timed = "raygrain_storage_operation_seconds_count"
        assert cluster.metrics.value(timed, provider="CountingQueuedWrites", operation="write") == 2


async def test_deactivations_are_counted_by_reason() -> None:
    async with Cluster.local(actors=[Meter], silos=1) as cluster:
        await cluster.get(Meter, "d").add(1)
        silo = cluster.silos[0]
        await silo.activations[next(iter(silo.activations))].deactivate(
            DeactivationReason.REQUESTED
        )
        assert cluster.metrics is not None
        assert (
            cluster.metrics.value(
                "raygrain_deactivations_total", type="metrics.Meter", reason="requested"
            )
            == 1
        )
        assert cluster.metrics.value("raygrain_activations", type="metrics.Meter") == 0


async def test_metrics_off_records_nothing_and_refuses_a_port() -> None:
    async with Cluster.local(actors=[Meter], silos=1, metrics=False) as cluster:
        await cluster.get(Meter, "x").add(1)
        assert cluster.metrics is None
    with pytest.raises(ConfigurationError, match="metrics_port"):
        Cluster.local(actors=[Meter], metrics=False, metrics_port=0)
    with pytest.raises(ConfigurationError, match="metrics_port"):
        Cluster.local(actors=[Meter], metrics_port=-1)
    with pytest.raises(ConfigurationError, match="metrics_port needs metrics on"):
        Cluster.local(actors=[Meter], metrics=MetricsSettings(enabled=False), metrics_port=0)


@pytest.mark.parametrize(
    ("settings", "label"),
    [
        (True, "local"),
        (MetricsSettings(slow_turn_seconds=0.5), "local"),
        (MetricsSettings(deployment="staging"), "staging"),
    ],
    ids=["metrics=True", "settings without a deployment", "settings naming one"],
)
async def test_the_deployment_label_is_local_in_process_unless_the_settings_name_one(
    settings: bool | MetricsSettings, label: str
) -> None:
    async with Cluster.local(actors=[Meter], silos=1, metrics=settings) as cluster:
        assert cluster.metrics is not None
        await cluster.get(Meter, "dep").add(1)
        text = cluster.metrics.text()
    assert set(re.findall(r'deployment="([^"]*)"', text)) == {label}


async def test_transactions_are_counted_by_outcome_and_reason() -> None:
    async with Cluster.local(actors=[Vault], silos=2) as cluster:
        a, b = cluster.get(Vault, "a"), cluster.get(Vault, "b")
        async with cluster.transaction():
            await a.add(1, 10)
            await b.add(1, 10)
        with pytest.raises(TransactionAbortedError, match="could not prepare"):
            async with cluster.transaction():
                await a.add(2, 10)
                with pytest.raises(RuntimeError):
                    await b.add_then_fail(2, 10)
        assert cluster.metrics is not None
        value = cluster.metrics.value
        assert value("raygrain_transactions_total", outcome="committed") == 1
        assert value("raygrain_transactions_total", outcome="aborted", reason="prepare_failed") == 1
        assert value("raygrain_transactions_total") == 2


class LostReply(MemoryStorage):
    """Stores a transaction's writes, then loses the reply; reads fail from then on, so the
    coordinator cannot learn whether they were stored (the commit is in doubt)."""

    armed = False
    reads_fail = False

    async def write_many(self, writes: Sequence[StateWrite]) -> list[str]:
        etags = await super().write_many(writes)
        if self.armed and len(writes) > 1:
            self.armed, self.reads_fail = False, True
            raise StorageError("connection reset")
        return etags

    async def read(self, actor_id: ActorId) -> StateRecord:
        if self.reads_fail:
            raise StorageError("still down")
        return await super().read(actor_id)


async def test_an_in_doubt_commit_is_counted_as_in_doubt_not_aborted() -> None:
    storage = LostReply()
    async with Cluster.local(actors=[Vault], silos=1, storage=storage) as cluster:
        a, b = cluster.get(Vault, "a"), cluster.get(Vault, "b")
        storage.armed = True
        with pytest.raises(TransactionInDoubtError):
            async with cluster.transaction():
                await a.add(1, 10)
                await b.add(1, 10)
        assert cluster.metrics is not None
        value = cluster.metrics.value
        assert value("raygrain_transactions_total", outcome="in_doubt") == 1
        assert value("raygrain_transactions_total", outcome="aborted") == 0
        assert value("raygrain_transactions_total") == 1


class Sleeper(Actor[None], name="metrics.Sleeper"):
    async def wake_every(self, period: float) -> None:
        await self.reminders.register("wake", due=period, period=period)

    async def on_reminder(self, name: str, tick: ReminderTick) -> None:
        pass


async def test_reminder_lateness_is_recorded_as_each_tick_starts() -> None:
    clock = ManualClock()
    async with Cluster.local(
        actors=[Sleeper], silos=2, clock=clock, reminders=ReminderSettings(minimum_period=0.5)
    ) as cluster:
        assert cluster.metrics is not None
        value = cluster.metrics.value
        await cluster.get(Sleeper, "s").wake_every(1.0)  # first tick at t=1, then 2, 3, ...
        await step(cluster, clock, 1.0)  # on time
        await step(cluster, clock, 1.75)  # t=2.75: the tick of t=2, 0.75 s late
        await step(cluster, clock, 0.5)  # t=3.25: the tick of t=3, 0.25 s late
        late = "raygrain_reminder_lateness_seconds"
        assert value(f"{late}_count", type="metrics.Sleeper") == 3
        assert value(f"{late}_sum", type="metrics.Sleeper") == 1.0
        assert value(f"{late}_bucket", type="metrics.Sleeper", le="0.0001") == 1
        assert value(f"{late}_bucket", type="metrics.Sleeper", le="0.25") == 2
        assert value(f"{late}_bucket", type="metrics.Sleeper", le="0.5") == 2
        assert value(f"{late}_bucket", type="metrics.Sleeper", le="1.0") == 3


async def test_turns_longer_than_the_threshold_count_as_slow() -> None:
    settings = MetricsSettings(slow_turn_seconds=0.05)
    async with Cluster.local(actors=[Meter], silos=1, metrics=settings) as cluster:
        meter = cluster.get(Meter, "slow")
        for _ in range(3):
            await meter.dawdle(0.06)  # (a sleep of 0.06 s lasts at least that long)
        for _ in range(FLUSH_AT + 5):  # more than a batch: counted as the batch is counted
            await meter.dawdle(0.0)
        metrics = cluster.metrics
        assert metrics is not None
        labels = {"type": "metrics.Meter", "method": "dawdle"}
        slow = metrics.value("raygrain_slow_turns_total", **labels)
        turns = metrics.value("raygrain_call_duration_seconds_count", side="callee", **labels)
    assert turns == FLUSH_AT + 8
    # Every dawdle(0.06) is slow; a dawdle(0.0) may be too only on a machine stalling 50 ms.
    assert 3 <= slow < turns


def test_a_label_takes_at_most_max_label_values_and_then_other() -> None:
    registry = MetricRegistry({"silo": "s"}, max_label_values=3)
    family = registry.add("raygrain_test_total", "test", Kind.COUNTER, ("method",))
    for i in range(10):
        family.counter(f"m{i}").inc()
    values = {sample.labels["method"]: sample.value for sample in family.samples()}
    assert values == {"m0": 1, "m1": 1, "m2": 1, OVERFLOW: 7}


async def _ping(self: Actor[None]) -> str:
    return "pong"


MANY_TYPES = [
    types.new_class(
        f"Many{i}",
        (Actor[None],),
        {"name": f"metrics.Many{i}"},
        lambda ns: ns.update({"ping": _ping, "__module__": __name__}),
    )
    for i in range(8)
]


async def test_gauges_read_at_export_take_at_most_max_label_values_too() -> None:
    settings = MetricsSettings(max_label_values=3)
    async with Cluster.local(actors=MANY_TYPES, silos=1, metrics=settings) as cluster:
        assert cluster.metrics is not None
        for actor_type in MANY_TYPES:
            await cluster.get(actor_type, "k").ping()
        text = cluster.metrics.text()
    by_name: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("silo") == "silo-0" and "type" in sample.labels:
                by_name.setdefault(sample.name, {})[sample.labels["type"]] = sample.value
    for name in ("raygrain_activations", "raygrain_mailbox_length"):
        assert len(by_name[name]) <= 3 + 1 and OVERFLOW in by_name[name], name
    activations = by_name["raygrain_activations"]
    assert sum(activations.values()) == 8 and activations[OVERFLOW] == 8 - 3


def test_a_histogram_counts_its_pending_values_into_le_buckets_when_read() -> None:
    registry = MetricRegistry({"silo": "s"})
    family = registry.add("raygrain_test_seconds", "test", Kind.HISTOGRAM, (), (1.0, 2.0))
    child = family.histogram()
    for value in (0.5, 1.0, 1.5, 2.0, 3.0, 3.0):  # a value equal to a bound is in its bucket
        child.observe(value)
    assert child.snapshot() == ((2, 2, 2), 11.0)
    child.observe(0.1)  # recorded after a read: counted by the next
    assert (child.counts, child.sum, child.count) == ([3, 2, 2], 11.1, 7)
    [sample] = registry.families["raygrain_test_seconds"].samples()
    assert (sample.counts, sample.sum) == ((3, 2, 2), 11.1)


def test_a_histogram_counts_its_pending_values_once_enough_wait() -> None:
    child = MetricRegistry({}).add("raygrain_t", "t", Kind.HISTOGRAM, (), (1.0,)).histogram()
    for _ in range(FLUSH_AT):
        child.observe(2.0)
    assert len(child.pending) == FLUSH_AT  # not yet: a batch is counted once it is full
    child.observe(0.5)
    assert child.pending == [] and child.snapshot() == ((1, FLUSH_AT), 2.0 * FLUSH_AT + 0.5)


class ChangedWhileRead(dict):  # type: ignore[type-arg]
    """A dict that the silo's loop changes while a scrape's thread reads it: on the first read
    of it (items, values, keys or iteration), ``victim`` is removed after the first entry."""

    def __init__(self, source: dict[Any, Any], victim: Any) -> None:
        super().__init__(source)
        self.victim = victim

    def _reading(self, view: Iterable[Any]) -> Iterator[Any]:
        for item in view:
            if self.victim is not None:
                self.pop(self.victim)
                self.victim = None
            yield item

    def items(self) -> Any:
        return self._reading(dict.items(self))

    def values(self) -> Any:
        return self._reading(dict.values(self))

    def keys(self) -> Any:
        return self._reading(dict.keys(self))

    def __iter__(self) -> Iterator[Any]:
        return self._reading(dict.keys(self))


async def test_a_scrape_reads_activations_again_when_they_change_under_it() -> None:
    async with Cluster.local(actors=[Meter], silos=1, metrics_port=0) as cluster:
        assert cluster.metrics is not None and cluster.metrics.port
        await asyncio.gather(*(cluster.get(Meter, f"r{i}").add(1) for i in range(3)))
        silo = cluster.silos[0]
        activations = silo.activations
        silo.activations = ChangedWhileRead(activations, next(iter(activations)))
        try:  # (an HTTP 500 fails the scrape)
            samples = await asyncio.to_thread(scrape, cluster.metrics.port)
        finally:
            silo.activations = activations
    # One activation was collected as the scrape read them: it counts those left.
    assert total(samples, "raygrain_activations", type="metrics.Meter") == 2


def test_calls_are_read_again_when_the_series_change_under_them() -> None:
    duration = MetricRegistry({}).add("raygrain_t", "t", Kind.HISTOGRAM, ("method",), (1.0,))
    for method in ("a", "b", "c"):
        duration.histogram(method).observe(0.5)
    duration.children = ChangedWhileRead(duration.children, ("b",))
    assert calls_of(duration)() == {("a",): 1.0, ("c",): 1.0}


def test_settings_are_a_value_object() -> None:
    assert MetricsSettings().enabled and MetricsSettings(enabled=False) != MetricsSettings()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("enabled", "no"),
        ("enabled", 1),
        ("deployment", ""),
        ("deployment", 5),
        ("slow_turn_seconds", "1"),
        ("slow_turn_seconds", 0),
        ("slow_turn_seconds", float("nan")),
        ("slow_turn_seconds", True),
        ("max_label_values", 0),
        ("max_label_values", -5),
        ("max_label_values", 2.5),
        ("export_period", 0),
        ("export_period", -1.0),
        ("export_period", float("inf")),
    ],
    ids=lambda v: repr(v),
)
def test_bad_settings_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"MetricsSettings.{field} must be"):
        MetricsSettings(**{field: value})


def _metric_names() -> set[str]:
    from raygrain.runtime.metrics import Metrics

    return set(Metrics(MetricsSettings()).registry.families)


def _exposed_names(name: str, kind: Kind) -> list[str]:
    """The names a family takes once exported: its family name as OpenMetrics and Ray's
    exporter write it (a counter without "_total"), and its samples' names."""
    if kind is Kind.COUNTER:
        base = name.removesuffix("_total")
        return [base, f"{base}_total", f"{base}_created"]
    if kind is Kind.HISTOGRAM:
        return [name, *(f"{name}_{suffix}" for suffix in ("bucket", "count", "sum", "created"))]
    return [name]


def test_no_two_metrics_share_a_name_once_exported() -> None:
    from raygrain.runtime.metrics import Metrics

    owners: dict[str, list[str]] = {}
    for family in Metrics(MetricsSettings()).registry.families.values():
        for exposed in _exposed_names(family.name, family.kind):
            owners.setdefault(exposed, []).append(family.name)
    assert {name: by for name, by in owners.items() if len(by) > 1} == {}


async def test_an_openmetrics_scrape_keeps_the_activations_gauge_and_counter_apart() -> None:
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )

    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with Cluster.local(actors=[Meter], silos=1, metrics_port=0) as cluster:
        assert cluster.metrics is not None and cluster.metrics.port
        await cluster.get(Meter, "om").add(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{cluster.metrics.port}/metrics", headers={"Accept": accept}
        )

        def fetch() -> str:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return str(reply.read().decode())

        text = await asyncio.to_thread(fetch)
    samples = {
        (s.name, s.labels.get("type")): s.value
        for family in openmetrics_families(text)  # (a name exposed twice fails to parse)
        for s in family.samples
    }
    assert samples[("raygrain_activations", "metrics.Meter")] == 1
    assert samples[("raygrain_activations_created_total", "metrics.Meter")] == 1


def test_the_docs_table_lists_every_metric_and_only_those() -> None:
    text = (Path(__file__).parents[2] / "docs" / "observability.md").read_text()
    documented = set(re.findall(r"^\| `(raygrain_\w+)` \|", text, re.MULTILINE))
    assert documented == _metric_names()


def test_the_grafana_dashboard_queries_only_metrics_that_exist() -> None:
    path = Path(__file__).parents[2] / "docs" / "grafana" / "raygrain.json"
    dashboard = json.loads(path.read_text())
    queried = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"ray_(raygrain_\w+)", target["expr"])
    }
    assert queried and queried <= _metric_names()
