"""A chat service: rooms are actors, connected clients are observers, messages are a stream.

Posting to a room publishes the message to the room's durable stream ``("chat", room)``: once
``post`` returns, the message is in the log. The room is the stream's implicit consumer: it
keeps the recent history in its state (each message exactly once, even across crashes, since
the stream position commits with the state) and pushes each message to the clients in the
room, which joined with an observer (``cluster.streams.observer(inbox)``). A client that goes
away without leaving is dropped when its membership is not renewed (``ObserverSet``); the room
never gets an error for it. A late joiner reads the history.

    python -m samples.chat [--db chat.db] [--messages 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field

from raygrain import (
    Actor,
    Cluster,
    ObserverRef,
    ObserverSet,
    StreamEvent,
    implicit_subscription,
    read_only,
)

HISTORY = 50


@dataclass
class RoomState:
    history: list[str] = field(default_factory=list)  # "user: text", the last HISTORY


@implicit_subscription("chat")
class ChatRoom(Actor[RoomState], name="samples.ChatRoom"):
    def __init__(self) -> None:
        # Connected clients live in memory: they renew their membership (join again) within
        # the expiry, and come back by themselves after the room is reactivated.
        self.members = ObserverSet(expiry=30.0)

    async def join(self, inbox: ObserverRef) -> list[str]:
        self.members.subscribe(inbox)
        return list(self.state.history)

    async def leave(self, inbox: ObserverRef) -> None:
        self.members.unsubscribe(inbox)

    async def post(self, user: str, text: str) -> int:
        # Durable: returned means stored in the log; the room consumes it as a turn.
        position = await self.streams.get("chat", self.context.key).publish(f"{user}: {text}")
        assert position is not None
        return position

    async def on_stream_event(self, event: StreamEvent) -> None:
        line = str(event.data)
        self.state.history = [*self.state.history, line][-HISTORY:]
        self.members.notify("message", self.context.key, line)

    @read_only
    async def history(self) -> list[str]:
        return list(self.state.history)


class Inbox:
    """A connected client's screen: what the room pushed to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.arrived = asyncio.Event()

    def message(self, room: str, line: str) -> None:
        self.lines.append(line)
        self.arrived.set()

    async def wait_for(self, count: int) -> None:
        while len(self.lines) < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 10)


async def main(db: str, messages: int) -> int:
    ok = True
    async with Cluster.local(actors=[ChatRoom], silos=2, storage=f"sqlite:///{db}") as cluster:
        room = cluster.get(ChatRoom, "lobby")
        inboxes = [Inbox("alice"), Inbox("bob"), Inbox("carol")]
        refs = [cluster.streams.observer(inbox) for inbox in inboxes]
        history_before = len(await room.history())
        for ref in refs:
            await room.join(ref)
        await room.post("alice", "hello, everyone")
        await inboxes[2].wait_for(1)
        # carol's client vanishes without leaving: the room keeps pushing, nobody errs.
        cluster.streams.delete_observer(refs[2])
        for n in range(messages):
            await room.post("bob" if n % 2 else "alice", f"message {n}")
        expected = ["alice: hello, everyone"] + [
            f"{'bob' if n % 2 else 'alice'}: message {n}" for n in range(messages)
        ]
        for inbox in inboxes[:2]:
            await inbox.wait_for(len(expected))
            good = inbox.lines == expected
            ok &= good
            print(
                f"{inbox.name} received {len(inbox.lines)} messages in order: "
                f"{'OK' if good else 'WRONG ' + repr(inbox.lines)}"
            )
        print(f"carol (gone) received {len(inboxes[2].lines)} before vanishing")
        late = Inbox("dave")
        history = await room.join(cluster.streams.observer(late))
        good = history[history_before:] == expected
        ok &= good
        print(f"dave joined late and read the history: {'OK' if good else 'WRONG'}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="chat.db", help="SQLite file (default: chat.db)")
    parser.add_argument("--messages", type=int, default=5)
    options = parser.parse_args()
    sys.exit(asyncio.run(main(options.db, options.messages)))
