"""Membership: the controller that keeps the cluster's view, and how a silo's death is detected."""

from raygrain.runtime.membership._controller import (
    MEMBERSHIP_RECORD,
    ControllerImpl,
    NotLeading,
    SiloDied,
    membership_record,
)
from raygrain.runtime.membership._detection import FailureDetection

__all__ = [
    "MEMBERSHIP_RECORD",
    "ControllerImpl",
    "FailureDetection",
    "NotLeading",
    "SiloDied",
    "membership_record",
]
