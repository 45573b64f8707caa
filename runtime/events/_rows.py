"""The rows of a projection's read model as one batch of events sees them (``Rows``), and a
row's record id (``row_id``)."""

from __future__ import annotations

from typing import Any, Protocol

from raygrain.actors import ActorId, ActorKey, InvalidCallError, decode, encode

__all__ = ["DELETED", "Rows", "check_row_key", "row_id"]


class _Runner(Protocol):
    """What rows need of their projection's runner (``_runner.ProjectionRunner``)."""

    name: str
    applied_rows: dict[ActorKey, bytes | None]
    cache: dict[ActorKey, Any]

    async def load(self, keys: Any) -> None: ...

    async def row(self, key: ActorKey, default: Any) -> Any: ...


def row_id(projection: str, key: ActorKey) -> ActorId:
    return ActorId(f"raygrain.readmodel:{projection}", key)


def check_row_key(projection: str, key: object) -> None:
    """A row's key is a str or an int (a bool is neither here), as an actor's is."""
    if not isinstance(key, (str, int)) or isinstance(key, bool):
        raise InvalidCallError(
            f"a row key of projection {projection} is a str or an int, "
            f"got {type(key).__name__} {key!r:.80}"
        )


class Rows:
    """The read model's rows as one batch of events sees them: ``await rows.get(key)``,
    ``rows.put(key, value)``, ``rows.delete(key)``. Changes commit with the batch's offsets."""

    def __init__(self, runner: _Runner, probing: bool = False) -> None:
        self._runner = runner
        self.changes: dict[ActorKey, Any] = {}
        # A probing pass (see ProjectionRunner._apply) reads no row it has not loaded: it
        # notes the key and hands back the default, and its changes are thrown away.
        self.missed: set[ActorKey] | None = set() if probing else None

    async def get(self, key: ActorKey, default: Any = None) -> Any:
        check_row_key(self._runner.name, key)
        if key in self.changes:
            value = self.changes[key]
            return default if value is DELETED else decode(encode(value))
        runner = self._runner
        if key not in runner.applied_rows and key not in runner.cache:
            if self.missed is not None:
                self.missed.add(key)
                return default
            await runner.load([key])
        return await runner.row(key, default)

    def put(self, key: ActorKey, value: Any) -> None:
        # A bad key or an unencodable value fails here, in the handler, not at the commit.
        check_row_key(self._runner.name, key)
        encode(value)
        self.changes[key] = value

    def delete(self, key: ActorKey) -> None:
        check_row_key(self._runner.name, key)
        self.changes[key] = DELETED


DELETED = object()
