"""``raygrain status``'s figures: rates over the interval from two samples of ``stats()``."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from raygrain.runtime import Cluster
from raygrain.runtime.cli._status import rates, render
from tests.app import Chain


def _sample(silos: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``collect`` makes of the silos' ``stats()`` on Ray."""
    controller = {"ok": True, "answer_ms": 3.0, "view_version": 7}
    return {
        "controller": controller,
        "silos": [{"status": "active", "node": "local", **s} for s in silos],
    }


async def test_two_samples_give_calls_errors_and_p99_over_the_interval() -> None:
    async with Cluster.local(actors=[Chain], silos=1) as cluster:
        before = await cluster.stats()
        chain = cluster.get(Chain, "s")
        for i in range(100):
            await chain.echo(i)
        after = await cluster.stats()
    before[0]["time"], after[0]["time"] = 100.0, 102.0  # two seconds apart
    (silo,) = rates(_sample(before), _sample(after))["silos"]
    assert silo["calls_per_s"] == 50.0  # 100 turns in 2 s
    assert silo["errors_per_s"] == 0.0
    assert 0 < silo["p99_ms"] <= 30_000
    assert silo["storage_health"] == "ok"
    assert "test.Chain" in silo["types"] and silo["uptime_s"] > 0 and silo["version"]
    assert "turn_buckets" not in silo
    console = Console(width=100, record=True)
    console.print(render("demo", rates(_sample(before), _sample(after))))
    text = console.export_text()
    assert "view version 7" in text and "50.0" in text and "silo-0" in "".join(text.split())


def test_an_unreachable_silo_and_controller_are_shown_as_such() -> None:
    figures = _sample([{"silo": "raygrain-silo-x", "status": "active", "node": "n1",
                        "error": "GetTimeoutError"}])  # fmt: skip
    console = Console(width=200, record=True)
    console.print(render("demo", rates(figures, figures)))
    assert "unreachable:GetTimeoutError" in "".join(console.export_text().split())
    down = {"controller": {"ok": False, "error": "ActorDiedError"}, "silos": []}
    console.print(render("demo", down))
    assert "controller unreachable (ActorDiedError)" in console.export_text()


def test_a_p99_above_the_last_bucket_is_valid_json_and_shown_as_above_it() -> None:
    bounds = [0.5, 60.0]

    def silo(at: float, slow_turns: int) -> dict[str, Any]:
        return {"silo": "raygrain-silo-0", "time": at, "turns": slow_turns, "turn_errors": 0,
                "turn_buckets": [0, 0, slow_turns], "turn_bounds": bounds,
                "storage_errors": 0}  # fmt: skip

    figures = rates(_sample([silo(0.0, 0)]), _sample([silo(2.0, 3)]))  # 3 turns over 60 s
    (row,) = figures["silos"]
    assert (row["p99_ms"], row["p99_above_ms"]) == (None, 60_000)

    def no_constants(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    assert json.loads(json.dumps(figures), parse_constant=no_constants) == figures
    console = Console(width=100, record=True)
    console.print(render("demo", figures))
    assert ">60000" in console.export_text()


def test_a_silo_restarted_between_the_samples_shows_no_negative_rate() -> None:
    """Its counts start again from zero: the rates over the two samples were negative."""

    def silo(at: float, turns: int) -> dict[str, Any]:
        return {"silo": "raygrain-silo-0", "time": at, "turns": turns, "turn_errors": 0,
                "turn_buckets": [turns, 0, 0], "turn_bounds": [0.5, 60.0],
                "storage_errors": 0}  # fmt: skip

    (row,) = rates(_sample([silo(0.0, 500)]), _sample([silo(2.0, 20)]))["silos"]
    assert row.get("calls_per_s") is None and row.get("errors_per_s") is None
