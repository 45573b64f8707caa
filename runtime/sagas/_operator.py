"""What an operator does with the sagas that need a person: list the STUCK ones (a
compensation failed for good) and the PARKED ones (their definition changed while they ran),
then resume them (after fixing the cause, or deploying code of their version) or abort them.

These work by the saga type's name, so a client that does not import the saga classes (the
``raygrain sagas`` command) uses them as well as code that does (``Saga.attention``)::

    for status in await saga_statuses(cluster, "trip.BookTrip"):  # stuck and parked
        print(status.saga, status.phase, status.error)
    await resume_saga(cluster, "trip.BookTrip", "trip-42")
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

from raygrain.actors import (
    ActorKey,
    ActorRef,
    InvalidArgumentsError,
    RaygrainError,
    UnknownActorTypeError,
)
from raygrain.runtime.sagas._index import INDEX_SHARDS, INDEX_TYPE, shard_key
from raygrain.runtime.sagas._record import SagaPhase, SagaStatus

__all__ = ["ATTENTION", "abort_saga", "resume_saga", "saga_statuses"]

# The phases where a saga waits for a person.
ATTENTION: tuple[SagaPhase, ...] = (SagaPhase.STUCK, SagaPhase.PARKED)
# The index records a parked saga as such, but only once it was activated under the changed
# code: a saga it still holds as running or compensating may be parked too (status() says).
_MAYBE_PARKED = (SagaPhase.RUNNING, SagaPhase.COMPENSATING)
# The id asked for its status to tell a saga type from a typo (never started: stores nothing).
_PROBE = "raygrain.saga-type-probe"


class _References(Protocol):
    """``Cluster`` or an actor's ``self.actors``."""

    def ref(self, type_name: str, key: ActorKey) -> ActorRef: ...


async def saga_statuses(
    cluster: _References, type_name: str, phases: Iterable[SagaPhase] = ATTENTION
) -> list[SagaStatus]:
    """The exact status of each saga of the type ``type_name`` that is in one of ``phases``
    (default: STUCK or PARKED), ordered by id. The saga index finds the candidates; each
    one's ``status()`` decides (the index may lag a step behind)."""
    wanted = frozenset(phases)
    for phase in wanted:
        if not isinstance(phase, SagaPhase):
            raise InvalidArgumentsError(f"saga_statuses: {phase!r} is not a SagaPhase")
    if not isinstance(type_name, str) or not type_name:
        raise InvalidArgumentsError(f"saga_statuses: bad saga type name {type_name!r}")
    asked = set(wanted)
    if SagaPhase.PARKED in wanted:
        asked.update(_MAYBE_PARKED)
    try:
        shards = await asyncio.gather(
            *(
                cluster.ref(INDEX_TYPE, shard_key(type_name, n)).entries(None)
                for n in range(INDEX_SHARDS)
            )
        )
    except UnknownActorTypeError:
        raise InvalidArgumentsError(
            f"saga_statuses: this cluster has no saga type (asked for {type_name!r})"
        ) from None
    candidates = sorted(
        {key for shard in shards for key, phase in shard if SagaPhase(phase) in asked}, key=repr
    )
    if not candidates:
        await _check_saga_type(cluster, type_name)
    found = await asyncio.gather(*(cluster.ref(type_name, key).status() for key in candidates))
    return [status for status in found if status.phase in wanted]


async def _check_saga_type(cluster: _References, type_name: str) -> None:
    """An index that lists nothing says nothing of a misspelt type name: ask the type itself
    (the status of an id never started, which stores nothing) so that a typo is an error,
    not an empty list an operator reads as "all is well"."""
    try:
        probe = await cluster.ref(type_name, _PROBE).status()
    except UnknownActorTypeError as exc:
        raise InvalidArgumentsError(f"saga_statuses: {exc}") from None
    except RaygrainError as exc:
        raise InvalidArgumentsError(
            f"saga_statuses: {type_name!r} is not a saga type ({type(exc).__name__})"
        ) from None
    if not isinstance(probe, SagaStatus):
        raise InvalidArgumentsError(f"saga_statuses: {type_name!r} is not a saga type")


async def resume_saga(cluster: _References, type_name: str, saga: ActorKey) -> SagaStatus:
    """Resume one saga: a STUCK saga retries its compensations; a PARKED (or backing-off)
    saga is tried now rather than at its next wake. Raises ``SagaVersionError`` while the
    code serving it is not of its version, ``UnknownSagaError`` if it was never started."""
    status: SagaStatus = await cluster.ref(type_name, saga).resume()
    return status


async def abort_saga(
    cluster: _References, type_name: str, saga: ActorKey, reason: str = "aborted by an operator"
) -> SagaStatus:
    """Abort one running saga: it stops going forward and compensates its completed steps.
    A parked saga raises ``SagaVersionError`` (its compensations are another definition's:
    deploy its version first); an ended or stuck one stays as it is (``resume_saga`` retries
    a stuck saga's compensations)."""
    status: SagaStatus = await cluster.ref(type_name, saga).abort(reason)
    return status
