"""The kernel: silos, activations and their turns, the caller, messages, the ring, the
registry, the clock and the membership view it routes by.

It imports no other room of the runtime: capabilities plug in through its extension surface.
"""

from raygrain.runtime.kernel._activation import Activation, ActivationState, Delivery
from raygrain.runtime.kernel._caller import Caller, CallSettings, current_chain
from raygrain.runtime.kernel._clock import Clock, ManualClock, SystemClock
from raygrain.runtime.kernel._collector import DEFAULT_GC_THRESHOLD, check_gc_threshold
from raygrain.runtime.kernel._extensions import (
    FLUSH_TIMINGS_AT,
    Admission,
    CallFilter,
    CallObserver,
    CallTimings,
    Extension,
    Guard,
    Ticket,
    Timings,
    TurnEnding,
    TurnScope,
    TurnTimings,
    turn_variable,
)
from raygrain.runtime.kernel._internal import DROPPED, InternalTurn, TurnOutcome, run_as_turn
from raygrain.runtime.kernel._logging import configure_logging, get_logger
from raygrain.runtime.kernel._messages import (
    Malformed,
    Request,
    Response,
    id_from_wire,
    id_to_wire,
    key_from_wire,
    pack,
    pack_batch,
    unpack,
    unpack_batch,
)
from raygrain.runtime.kernel._registry import ActorRegistry
from raygrain.runtime.kernel._ring import ConsistentHashRing
from raygrain.runtime.kernel._silo import Silo, SiloOptions
from raygrain.runtime.kernel._state import StateSlot
from raygrain.runtime.kernel._switching import DEFAULT_SWITCH_INTERVAL, check_switch_interval
from raygrain.runtime.kernel._transport import Endpoint, LocalTransport, SiloEndpoint, Transport
from raygrain.runtime.kernel._version import installed_version
from raygrain.runtime.kernel._view import (
    Membership,
    MembershipView,
    SiloStatus,
    view_from_wire,
    view_to_wire,
)

__all__ = [
    "DEFAULT_GC_THRESHOLD",
    "DEFAULT_SWITCH_INTERVAL",
    "DROPPED",
    "FLUSH_TIMINGS_AT",
    "Activation",
    "ActivationState",
    "ActorRegistry",
    "Admission",
    "CallFilter",
    "CallObserver",
    "CallSettings",
    "CallTimings",
    "Caller",
    "Clock",
    "ConsistentHashRing",
    "Delivery",
    "Endpoint",
    "Extension",
    "Guard",
    "InternalTurn",
    "LocalTransport",
    "Malformed",
    "ManualClock",
    "Membership",
    "MembershipView",
    "Request",
    "Response",
    "Silo",
    "SiloEndpoint",
    "SiloOptions",
    "SiloStatus",
    "StateSlot",
    "SystemClock",
    "Ticket",
    "Timings",
    "Transport",
    "TurnEnding",
    "TurnOutcome",
    "TurnScope",
    "TurnTimings",
    "check_gc_threshold",
    "check_switch_interval",
    "configure_logging",
    "current_chain",
    "get_logger",
    "id_from_wire",
    "id_to_wire",
    "installed_version",
    "key_from_wire",
    "pack",
    "pack_batch",
    "run_as_turn",
    "turn_variable",
    "unpack",
    "unpack_batch",
    "view_from_wire",
    "view_to_wire",
]
