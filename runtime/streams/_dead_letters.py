"""Dead letters: events a consumer raised on ``max_attempts`` times, set aside in the log.

A dead letter is an event of the log stream ``$dead-letters|<namespace>`` (category
``$dead-letters``) whose event id names the consumer, the subscription and the event, so a
retried set-aside appends it once. Replaying one delivers the event to its consumer once more
as a turn (``StreamEvent.replay`` is True; its position is not touched) and, when that turn
commits, appends a ``replayed`` marker: the list shows it as replayed from then on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from raygrain.actors import ActorId, DeadLetter, InvalidStreamError, StreamId, decode, encode
from raygrain.runtime.kernel import get_logger
from raygrain.runtime.streams._consumer import Cursor, Held
from raygrain.runtime.streams._log import DEAD_LETTERS, event_log, new_event
from raygrain.runtime.streams._service import StreamServiceBase

__all__ = ["DeadLetters"]

_PAGE = 1_000


class DeadLetters:
    def __init__(self, service: StreamServiceBase) -> None:
        self.service = service

    async def add(
        self, consumer: ActorId, cursor: Cursor, held: Held, attempts: int, error: str
    ) -> None:
        """Store ``held`` as a dead letter of ``consumer``'s ``cursor``, after ``attempts``
        failed deliveries (the last with ``error``). (Given, not read from the cursor: a fast
        one's letter is written after the cursor moved on.)"""
        position, data, event_id = held
        stream = cursor.stream
        letter_id = f"{consumer}|{cursor.subscription}|{stream.log_name()}|{position or event_id}"
        get_logger().error(
            "stream_event_dead_lettered",
            actor=str(consumer),
            stream=str(stream),
            position=position,
            attempts=attempts,
            error=error,
        )
        log = event_log(self.service.storage)
        if log is None:
            return  # a fast stream on a provider without a log: the log line is all there is
        record = [
            stream.namespace,
            stream.key,
            position,
            consumer.type_name,
            consumer.key,
            cursor.subscription,
            error,
            attempts,
            event_id,
            data,
        ]
        event = new_event("dead-letter", encode(record), letter_id)
        await log.append(f"{DEAD_LETTERS}|{stream.namespace}", DEAD_LETTERS, None, [event])

    async def replayed(self, letter: DeadLetter) -> None:
        log = event_log(self.service.storage)
        assert log is not None
        marker = new_event("replayed", encode(letter.id), f"replayed|{letter.id}")
        await log.append(f"{DEAD_LETTERS}|{letter.stream.namespace}", DEAD_LETTERS, None, [marker])

    async def list(self, namespace: str | None) -> list[DeadLetter]:
        """Every dead letter (of ``namespace``), oldest first."""
        log = event_log(self.service.storage)
        if log is None:
            raise InvalidStreamError(
                f"the storage provider ({type(self.service.storage).__name__}) has no event "
                "log, so it keeps no dead letters"
            )
        letters: dict[str, DeadLetter] = {}
        replayed: set[str] = set()
        after = 0
        while True:
            page = await log.read_category(DEAD_LETTERS, after, _PAGE)
            for stored in page:
                if stored.type == "replayed":
                    replayed.add(decode(stored.data))
                elif stored.type == "dead-letter":
                    letter = _letter(stored.event_id, decode(stored.data))
                    if namespace is None or letter.stream.namespace == namespace:
                        letters[letter.id] = letter
            if len(page) < _PAGE:
                break
            after = page[-1].position
        return [replace(letter, replayed=letter.id in replayed) for letter in letters.values()]


def _letter(letter_id: str, record: list[Any]) -> DeadLetter:
    namespace, key, position, type_name, consumer_key, subscription, error, attempts = record[:8]
    return DeadLetter(
        letter_id,
        StreamId(namespace, key),
        position,
        ActorId(type_name, consumer_key),
        subscription,
        error,
        attempts,
        decode(record[9]),
        record[8],
    )
