"""Actor identity: the (type name, key) pair that names an actor forever.

An actor is never created or found; it is addressed. ``ActorId`` is that address, and its
``stable_hash`` is what placement uses, so it must be identical in every process and version
(xxhash of a canonical encoding, never Python's salted ``hash()``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import xxhash

from raygrain.actors._errors import InvalidCallError

__all__ = ["ActorId", "ActorKey"]

ActorKey = str | int


# What to write instead, for the key types users of Orleans and others reach for first.
_KEY_HINTS = {
    "UUID": " (use str(key): a UUID names the same actor wherever its text does)",
    "tuple": " (a compound key: join its parts into one str, e.g. f'{tenant}/{order}')",
    "bool": " (True and 1 would name the same actor)",
}


@dataclass(frozen=True, slots=True)
class ActorId:
    """The address of one actor: its registered type name and its key (str or int)."""

    type_name: str
    key: ActorKey
    # Computed once: every call routes by the hash, on the caller and again on the silo, and
    # every durable write is keyed by the canonical bytes.
    _hash: int = field(init=False, repr=False, compare=False, default=0)
    _canonical: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        # bool is an int subclass but True and 1 would then name the same actor: refuse it.
        if not isinstance(self.key, (str, int)) or isinstance(self.key, bool):
            raise InvalidCallError(
                f"actor key for {self.type_name!r} must be str or int, "
                f"got {type(self.key).__name__}{_KEY_HINTS.get(type(self.key).__name__, '')}"
            )
        if not isinstance(self.type_name, str):
            raise InvalidCallError(f"actor type name must be str, got {self.type_name!r}")
        tag = "s" if isinstance(self.key, str) else "i"
        canonical = f"{self.type_name}\x00{tag}\x00{self.key}".encode("utf-8", "surrogatepass")
        object.__setattr__(self, "_canonical", canonical)
        object.__setattr__(self, "_hash", int(xxhash.xxh3_64_intdigest(canonical)))

    def canonical(self) -> bytes:
        """A byte string that differs for every distinct id (``"1"`` and ``1`` differ)."""
        return self._canonical

    def stable_hash(self) -> int:
        """A 64-bit hash that is the same in every process, machine and version."""
        return self._hash

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return f"{self.type_name}/{self.key}"
