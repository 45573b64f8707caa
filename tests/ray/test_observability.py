"""Observability on Ray: metrics read back from Ray's Prometheus endpoints after a workload, and
a trace from a client span through actor turns on two silo processes."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from prometheus_client.parser import text_string_to_metric_families

from raygrain.actors import SerializationError
from raygrain.runtime import Cluster
from tests import app
from tests.helpers import json_document
from tests.trace_sink import SINK_NAME, SINK_NAMESPACE, SpanSink, memory_exporter

pytestmark = [pytest.mark.ray, pytest.mark.slow]

WAIT_SECONDS = 60.0


def _scrape_nodes() -> list[tuple[str, dict[str, str], float]]:
    """Every sample on every node's Ray metrics endpoint."""
    import ray

    samples = []
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            samples.extend((s.name, s.labels, s.value) for s in family.samples)
    return samples


def _total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, ls, v in samples if n == name and labels.items() <= ls.items())


async def _wait_until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        found = await asyncio.to_thread(check)
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {WAIT_SECONDS:g} s waiting for {what}")
        await asyncio.sleep(0.5)


async def test_call_metrics_appear_on_rays_prometheus_endpoint(ray_silos: Any, key: Any) -> None:
    import ray

    if any(node["MetricsAgentPort"] <= 0 for node in ray.nodes() if node["Alive"]):
        pytest.skip("Ray runs without its metrics agent here: install ray[default]")
    calls = {"type": "test.Chain", "side": "callee"}
    name = "ray_raygrain_calls_total"
    failing = {**calls, "method": "return_unserializable", "error": "SerializationError"}
    before = await asyncio.to_thread(_scrape_nodes)
    echoes = _total(before, name, **calls, method="echo")
    errors = _total(before, "ray_raygrain_call_errors_total", **failing)
    async with Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster:
        chains = [cluster.get(app.Chain, key(f"c{i}")) for i in range(5)]
        for round_ in range(20):
            await asyncio.gather(*(c.echo(round_) for c in chains))  # 100 calls
        for _ in range(3):
            with pytest.raises(SerializationError):
                await chains[0].return_unserializable()
        # Calls between actors: with 10 pairs over 3 silos, some go between silos (by batch).
        peers = [cluster.get(app.Chain, key(f"peer{i}")) for i in range(10)]
        await asyncio.gather(*(chains[i % 5].relay(p, "ping") for i, p in enumerate(peers)))

    def moved() -> list[tuple[str, dict[str, str], float]] | None:
        samples = _scrape_nodes()
        done = (
            _total(samples, name, **calls, method="echo") >= echoes + 100
            and _total(samples, "ray_raygrain_call_errors_total", **failing) >= errors + 3
        )
        return samples if done else None

    samples = await _wait_until(moved, "100 calls and 3 errors on Ray's metrics endpoints")
    # Every series carries the silo and deployment; the histogram counted the calls too.
    series = [ls for n, ls, _ in samples if n == name and ls.get("type") == "test.Chain"]
    assert all(ls["silo"].startswith("raygrain-silo-") and ls["deployment"] for ls in series)
    histogram = "ray_raygrain_call_duration_seconds_count"
    assert _total(samples, histogram, **calls, method="echo") >= echoes + 100
    # The gauge and the counter of activations are two series (the counter's name once
    # clashed with the gauge's when Ray dropped its "_total").
    assert _total(samples, "ray_raygrain_activations", type="test.Chain") >= 5
    assert _total(samples, "ray_raygrain_activations_created_total", type="test.Chain") >= 5
    assert _total(samples, "ray_raygrain_wire_batch_messages_count") > 0


async def test_a_client_span_parents_turns_on_two_silo_processes(ray_silos: Any, key: Any) -> None:
    import ray

    memory_exporter()  # this process's provider, for the client's span
    sink = ray.remote(SpanSink).options(name=SINK_NAME, namespace=SINK_NAMESPACE).remote()
    try:
        async with Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster:
            first = cluster.get(app.Chain, key("first"))
            pid = await first.where()
            for i in range(50):
                second = cluster.get(app.Chain, key(f"second{i}"))
                if await second.where() != pid:
                    break
            else:
                raise AssertionError("50 keys all landed on one silo")
            with trace.get_tracer("test").start_as_current_span("client") as client:
                assert await first.relay(second, "ping") == f"pong from {second.actor_id.key}"
        root = client.get_span_context()

        def traced() -> dict[str, dict[str, Any]] | None:
            spans = [s for s in ray.get(sink.all.remote()) if s["trace_id"] == root.trace_id]
            found = {s["name"]: s for s in spans}
            return found if {"test.Chain.relay", "test.Chain.ping"} <= set(found) else None

        spans = await _wait_until(traced, "the silos' spans of the traced call")
        relay, ping = spans["test.Chain.relay"], spans["test.Chain.ping"]
        assert relay["parent_id"] == root.span_id
        assert ping["parent_id"] == relay["span_id"]
        assert relay["attributes"]["raygrain.silo"] != ping["attributes"]["raygrain.silo"]
    finally:
        ray.kill(sink)


def test_raygrain_status_reports_each_silos_rates_as_json(
    ray_silos: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from raygrain.runtime.cli import main

    status = ["status", "--address", ray_silos.address, "--name", "default", "--json"]
    assert main([*status, "--interval", "0.5"]) == 0
    figures = json_document(capsys.readouterr().out)
    assert figures["controller"]["ok"] and figures["controller"]["view_version"] >= 1
    # (An earlier test may have left a dead silo of a node it removed in the view.)
    silos = [s for s in figures["silos"] if s["status"] == "active"]
    assert len(silos) == 3 and {s["node"] for s in silos} == set(ray_silos.node_ids)
    for silo in silos:
        assert silo["calls_per_s"] >= 0
        assert silo["storage_health"] == "ok" and "test.Chain" in silo["types"]
