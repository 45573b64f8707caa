"""Trace context across actor calls on an in-process cluster: the caller's span is the parent of
the callee's turn span, across silos; without OpenTelemetry the context is carried unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from raygrain.actors import Actor, ActorId, ConfigurationError
from raygrain.runtime import Cluster
from raygrain.runtime.kernel import Request, pack_batch, unpack_batch
from raygrain.runtime.tracing import (
    TracingSettings,
    current_traceparent,
    format_traceparent,
    parse_traceparent,
)
from tests.app import Vault
from tests.trace_sink import memory_exporter, span_record


class Hop(Actor[None], name="tracing.Hop"):
    async def relay(self, key: str) -> str | None:
        return await self.actors.get(Hop, key).trace_context()

    async def trace_context(self) -> str | None:
        return current_traceparent.get()

    async def fail(self) -> None:
        raise ValueError("no")


def keys_on_two_silos(cluster: Cluster) -> tuple[str, str]:
    ring = cluster.silos[0].membership.ring
    owners: dict[str, str] = {}
    for i in range(100):
        owners.setdefault(ring.owner(ActorId("tracing.Hop", f"k{i}")), f"k{i}")
        if len(owners) == 2:
            return tuple(owners.values())  # type: ignore[return-value]
    raise AssertionError("the ring put 100 keys on one silo")


async def test_client_span_is_the_parent_of_a_turn_whose_call_parents_a_turn_on_another_silo() -> (
    None
):
    exporter = memory_exporter()
    exporter.clear()
    async with Cluster.local(actors=[Hop], silos=2) as cluster:
        first, second = keys_on_two_silos(cluster)
        with trace.get_tracer("test").start_as_current_span("client") as client:
            await cluster.get(Hop, first).relay(second)
    spans = {s["name"]: s for s in map(span_record, exporter.get_finished_spans())}
    a, b = spans["tracing.Hop.relay"], spans["tracing.Hop.trace_context"]
    root = client.get_span_context()
    assert {a["trace_id"], b["trace_id"]} == {root.trace_id}
    assert a["parent_id"] == root.span_id
    assert b["parent_id"] == a["span_id"]
    assert a["attributes"]["raygrain.silo"] != b["attributes"]["raygrain.silo"]
    assert spans["client"]["parent_id"] is None


async def test_a_failed_turn_marks_its_span_as_an_error() -> None:
    exporter = memory_exporter()
    exporter.clear()
    async with Cluster.local(actors=[Hop], silos=1) as cluster:
        with trace.get_tracer("test").start_as_current_span("client"), pytest.raises(ValueError):
            await cluster.get(Hop, "f").fail()
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "tracing.Hop.fail"]
    assert not span.status.is_ok and span.events[0].name == "exception"


async def test_untraced_calls_make_no_spans() -> None:
    exporter = memory_exporter()
    exporter.clear()
    async with Cluster.local(actors=[Hop], silos=2) as cluster:
        first, second = keys_on_two_silos(cluster)
        assert await cluster.get(Hop, first).relay(second) is None
    assert exporter.get_finished_spans() == ()


class Tally(Actor[int], name="tracing.Tally"):
    async def add(self) -> int:
        self.state += 1
        return self.state


@pytest.mark.parametrize("provider", ["MemoryStorage", "SqliteStorage"])
@pytest.mark.parametrize("metrics", [True, False], ids=["metrics on", "metrics off"])
async def test_a_storage_write_span_names_the_provider(
    provider: str, metrics: bool, tmp_path: Path
) -> None:
    exporter = memory_exporter()
    exporter.clear()
    storage = "memory://" if provider == "MemoryStorage" else f"sqlite:///{tmp_path / 's.db'}"
    async with Cluster.local(actors=[Tally], silos=1, storage=storage, metrics=metrics) as cluster:
        with trace.get_tracer("test").start_as_current_span("client"):
            await cluster.get(Tally, "t").add()
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "raygrain.storage.write"]
    assert span.attributes is not None
    assert span.attributes["raygrain.storage.provider"] == provider


async def test_only_traced_transactions_make_spans() -> None:
    exporter = memory_exporter()
    exporter.clear()
    async with Cluster.local(actors=[Vault], silos=2) as cluster:
        a, b = cluster.get(Vault, "a"), cluster.get(Vault, "b")
        await a.add(1, 10)  # a transaction of its own, untraced
        async with cluster.transaction():  # a block, untraced
            await a.add(2, 1)
            await b.add(2, 1)
        assert exporter.get_finished_spans() == ()
        with trace.get_tracer("test").start_as_current_span("client") as client:
            async with cluster.transaction():
                await a.add(3, 1)
                await b.add(3, 1)
    spans = {s["name"]: s for s in map(span_record, exporter.get_finished_spans())}
    commit = spans["raygrain.transaction.commit"]
    assert commit["parent_id"] == client.get_span_context().span_id
    assert spans["raygrain.transaction.prepare"]["parent_id"] == commit["span_id"]


SETUPS_RUN: list[str] = []


def record_setup() -> None:
    """A ``TracingSettings.setup`` (what would configure OpenTelemetry in a silo process)."""
    SETUPS_RUN.append("setup")


async def test_tracing_settings_given_to_a_local_cluster_run_their_setup_once() -> None:
    settings = TracingSettings(setup=f"{__name__}:record_setup")
    async with Cluster.local(actors=[Hop], silos=2, tracing=settings) as cluster:
        assert SETUPS_RUN == ["setup"]  # once per process, before the silos serve
        assert await cluster.get(Hop, "s").trace_context() is None


def test_tracing_settings_given_to_a_ray_cluster_go_in_its_silos_options() -> None:
    settings = TracingSettings(setup="tests.trace_sink:install")
    cluster = Cluster.ray(actors=[Hop], tracing=settings)  # (not started: no Ray needed)
    options = cluster._backend.options  # type: ignore[attr-defined]
    assert options.setting(TracingSettings, None) == settings


@pytest.mark.parametrize("tracing", ["tests.trace_sink:install", TracingSettings, 1])
def test_a_tracing_option_that_is_no_tracing_settings_is_refused(tracing: Any) -> None:
    with pytest.raises(ConfigurationError, match="tracing must be a TracingSettings"):
        Cluster.local(actors=[Hop], tracing=tracing)
    with pytest.raises(ConfigurationError, match="tracing must be a TracingSettings"):
        Cluster.ray(actors=[Hop], tracing=tracing)


@pytest.mark.parametrize("setup", ["tests.trace_sink", ":install", "m:", 5])
def test_a_setup_that_is_no_module_and_function_is_refused(setup: Any) -> None:
    with pytest.raises(ConfigurationError, match="TracingSettings.setup must be"):
        TracingSettings(setup=setup)


async def test_without_opentelemetry_the_context_travels_through_turns_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from raygrain.runtime.tracing import _extension

    monkeypatch.setattr(_extension, "_otel", None)
    parent = format_traceparent(0xABC, 0x123, True)
    async with Cluster.local(actors=[Hop], silos=2) as cluster:
        first, second = keys_on_two_silos(cluster)
        token = current_traceparent.set(parent)
        try:
            assert await cluster.get(Hop, first).relay(second) == parent
        finally:
            current_traceparent.reset(token)
        assert await cluster.get(Hop, first).relay(second) is None  # the next turn starts clean


def test_traceparent_crosses_the_wire_and_old_envelopes_still_decode() -> None:
    parent = format_traceparent(1, 2, False)
    request = Request(1, ActorId("T", "k"), "m", b"", "client-x", 1.0, traceparent=parent)
    plain = Request(2, ActorId("T", "k"), "m", b"", "client-x", 1.0)
    got, got_plain = unpack_batch(pack_batch([request, plain]))
    assert isinstance(got, Request) and got.traceparent == parent
    assert isinstance(got_plain, Request) and got_plain.traceparent is None
    assert len(plain.to_wire()) == 12  # an untraced envelope is the old one, byte for byte


@pytest.mark.parametrize(
    "value",
    ["", "00-xyz", f"00-{'0' * 32}-{'1' * 16}-01", f"00-{'A' * 32}-{'1' * 16}-01", "00-1-2-3"],
    ids=["empty", "short", "zero-trace", "upper-hex", "short-fields"],
)
def test_an_invalid_traceparent_is_ignored(value: Any) -> None:
    assert parse_traceparent(value) is None
