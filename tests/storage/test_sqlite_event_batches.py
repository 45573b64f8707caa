"""SQLite's event log inserts a batch's rows in statements of a few sizes only
(storage/_sqlite_events.py ``_shapes``): every size stays prepared, and every row lands once,
in order, whatever the batch's size."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raygrain.storage import NewEvent, SqliteStorage
from raygrain.storage import _sqlite_events as sqlite_events
from raygrain.storage._sqlite_events import _ROWS_STEP, _shapes

MOST = 512


def _allowed(most: int) -> set[int]:
    sizes = {most}
    sizes.update(range(_ROWS_STEP, most, _ROWS_STEP))
    bit = 1
    while bit < _ROWS_STEP:
        sizes.add(bit)
        bit *= 2
    return sizes


@given(rows=st.integers(0, 20_000), most=st.sampled_from([1, 3, 31, 111, 500, MOST]))
def test_the_shapes_add_up_to_the_rows_and_come_from_a_few_sizes(rows: int, most: int) -> None:
    counts = _shapes(rows, most)
    assert sum(counts) == rows
    assert all(0 < count <= most for count in counts)
    assert set(counts) <= _allowed(most)
    # At most one statement of the rounded rest and one per bit below the step.
    assert len(counts) <= rows // most + 1 + _ROWS_STEP.bit_length()


def test_every_row_count_up_to_the_largest_needs_few_distinct_statements() -> None:
    used = {count for rows in range(3 * MOST) for count in _shapes(rows, MOST)}
    assert len(used) <= MOST // _ROWS_STEP + _ROWS_STEP.bit_length()


async def test_batches_of_any_size_store_every_event_once_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = [1, 2, 31, 32, 33, 95, 511, 512, 513, 777, 1_100]
    counts: list[int] = []
    statement = sqlite_events._statement

    def recorded(text: str, row: str, count: int) -> str:
        counts.append(count)
        return statement(text, row, count)

    monkeypatch.setattr(sqlite_events, "_statement", recorded)
    async with SqliteStorage(tmp_path / "state.db") as storage:
        expected: dict[str, int] = {}
        for round_ in range(2):
            # Each size's appends queued together: one batch (or a few) of that many rows.
            for size in sizes:
                appends = []
                for k in range(size):
                    stream = f"S-{size}-{k % 7}"
                    events = [NewEvent("T", {"n": k}, f"{round_}-{size}-{k}")]
                    appends.append((stream, events))
                for stream, _ in appends:
                    expected[stream] = expected.get(stream, 0) + 1
                # (Appends to one stream in one batch: each expects no particular version.)
                await asyncio.gather(
                    *(storage.append(stream, "S", None, events) for stream, events in appends)
                )
        feed = await storage.read_category("S", 0, 100_000)
        assert [event.position for event in feed] == list(range(1, len(feed) + 1))
        assert len(feed) == 2 * sum(sizes)
        assert len({(event.stream, event.event_id) for event in feed}) == len(feed)
        for stream, count in expected.items():
            read = await storage.read_stream(stream)
            assert [event.version for event in read] == list(range(1, count + 1))
        # Every INSERT and head upsert was of one of the few statement sizes.
        assert counts and set(counts) <= _allowed(MOST)
        assert sum(counts) > 2 * sum(sizes)  # (every event's row, and the streams' heads)
