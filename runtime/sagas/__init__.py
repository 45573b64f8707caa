"""Durable sagas: long-running work across actors, each step committed before the next, with
idempotency keys, retries with backoff, and compensation in reverse order.

A saga instance is a virtual actor (a ``Saga`` subclass) whose state is its progress; the
``SagaService`` extension drives it and resumes it after a failure, and the ``SagaIndex``
actors list the sagas of a type and wake the live ones. See docs/sagas.md.
"""

from raygrain.runtime.sagas._definition import Retry, Step, step
from raygrain.runtime.sagas._extension import SagaService, SagaSettings
from raygrain.runtime.sagas._index import SagaIndex
from raygrain.runtime.sagas._operator import ATTENTION, abort_saga, resume_saga, saga_statuses
from raygrain.runtime.sagas._record import SagaPhase, SagaStatus, StepContext
from raygrain.runtime.sagas._saga import Saga

__all__ = [
    "ATTENTION",
    "Retry",
    "Saga",
    "SagaIndex",
    "SagaPhase",
    "SagaService",
    "SagaSettings",
    "SagaStatus",
    "Step",
    "StepContext",
    "abort_saga",
    "resume_saga",
    "saga_statuses",
    "step",
]
