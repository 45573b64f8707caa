"""The silo-side mailbox of a driver-side client (runtime._ray_transport.ClientMailbox): a batch's
reply carries back its own answers, the long poll takes the rest, and neither takes the other's."""

from __future__ import annotations

import asyncio

from raygrain.runtime.kernel import Response
from raygrain.runtime.ray_host import ClientMailbox
from tests.helpers import bounded, still_pending, wait_until


def _answers(*call_ids: int) -> list[Response]:
    return [Response(call_id, True, b"") for call_id in call_ids]


def _ids(responses: list[Response]) -> list[int]:
    return [r.call_id for r in responses]


async def test_a_batch_takes_exactly_its_answers_and_leaves_the_rest_to_the_poll() -> None:
    box = ClientMailbox()
    for response in _answers(7, 1, 8, 2):
        box.put(response)
    assert _ids(await box.take_answers({1, 2}, timeout=1.0)) == [1, 2]
    assert _ids(await box.take(timeout=0.01)) == [7, 8]
    assert await box.take(timeout=0.01) == []


async def test_a_batch_whose_answers_are_all_in_takes_them_at_once() -> None:
    box = ClientMailbox()
    for response in _answers(3, 1, 2):
        box.put(response)
    # An hour's timeout: returning at all shows it did not wait for the timeout.
    taken = await bounded(box.take_answers({1, 2, 3}, timeout=3600), "answers already in")
    assert sorted(_ids(taken)) == [1, 2, 3]
    assert box.messages == []


async def test_late_answers_are_awaited_until_the_timeout_then_go_by_the_poll() -> None:
    box = ClientMailbox()
    box.put(Response(1, True, b""))
    waiting = asyncio.ensure_future(box.take_answers({1, 2, 3}, timeout=3600))
    await wait_until(lambda: box._reserved == {1, 2, 3}, "the batch to wait for its answers")
    box.put(Response(2, True, b""))
    assert await still_pending(waiting)  # 3 is still missing
    box.put(Response(3, True, b""))
    assert sorted(_ids(await bounded(waiting, "the batch's last answer"))) == [1, 2, 3]

    box.put(Response(4, True, b""))
    partial = await box.take_answers({4, 5}, timeout=0.05)  # 5 never comes in time
    assert _ids(partial) == [4]
    box.put(Response(5, True, b""))
    assert _ids(await box.take(timeout=0.01)) == [5]


async def test_the_poll_does_not_take_answers_a_batch_is_waiting_for() -> None:
    box = ClientMailbox()
    box.put(Response(1, True, b""))
    batch = asyncio.ensure_future(box.take_answers({1, 2}, timeout=3600))
    await wait_until(lambda: box._reserved == {1, 2}, "the batch to wait for its answers")
    box.put(Response(9, True, b""))  # someone else's answer: the poll's
    assert _ids(await box.take(timeout=1.0)) == [9]
    box.put(Response(2, True, b""))
    assert sorted(_ids(await bounded(batch, "the batch's answers"))) == [1, 2]


# -- answers for clients that never come for them (issue 16, item 5) ---------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_answers_a_client_never_polls_for_expire_and_its_mailbox_goes() -> None:
    from raygrain.runtime.ray_host import RayTransport

    clock = _Clock()
    transport = RayTransport("silo-a", lambda name: None, answer_ttl=60.0, clock=clock)
    counted: list[int] = []  # what the metric raygrain_client_answers_expired_total is told
    transport.on_answers_expired = counted.append
    try:
        for call_id in range(100):
            transport.reply("client-crashed", Response(call_id, True, b"x" * 1000))
        transport.reply("client-alive", Response(1, True, b""))
        assert transport.sweep_mailboxes() == 0  # young answers stay
        clock.now = 30.0
        assert _ids(await transport.mailbox("client-alive").take(0.01)) == [1]
        clock.now = 61.0
        assert transport.sweep_mailboxes() == 100
        assert transport.answers_expired == 100 and sum(counted) == 100
        clock.now = 122.0
        transport.sweep_mailboxes()
        # The crashed client's mailbox is gone; the live one, polled at 30 s, goes once idle
        # for longer than the answers' lifetime too (it makes a new one when it polls again).
        assert transport.mailboxes == 0
        assert transport.answers_expired == 100
    finally:
        await transport.aclose()


async def test_a_mailbox_keeps_at_most_max_bytes_dropping_the_oldest() -> None:
    box = ClientMailbox(ttl=60.0, max_bytes=10_000, clock=_Clock())
    for call_id in range(50):
        box.put(Response(call_id, True, b"x" * 1000))
    assert _ids(box.messages) == list(range(40, 50))
    assert box.expired == 40
    assert _ids(await box.take(timeout=0.01)) == list(range(40, 50))
