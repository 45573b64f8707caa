"""``raygrain sagas``: the sagas of one type that wait for an operator, and what to do with
them.

raygrain sagas --type trip.BookTrip [--name NAME] [--phase stuck|parked|all] [--json]
raygrain sagas --type trip.BookTrip --resume ID [ID ...]   (retry / run under deployed code)
raygrain sagas --type trip.BookTrip --abort ID [ID ...] [--reason TEXT]

``run`` takes any started cluster (a client of a deployment on Ray, or a local one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from raygrain.actors import ActorKey, RaygrainError
from raygrain.runtime.sagas import (
    ATTENTION,
    SagaPhase,
    SagaStatus,
    abort_saga,
    resume_saga,
    saga_statuses,
)

__all__ = ["add_parser", "run"]

# How a listing names the phases it shows ("no stuck or parked saga of type ...").
_SAID = {"stuck": "stuck ", "parked": "parked ", "attention": "stuck or parked ", "all": ""}
_PHASES = {
    "stuck": (SagaPhase.STUCK,),
    "parked": (SagaPhase.PARKED,),
    "attention": ATTENTION,
    "all": tuple(p for p in SagaPhase if p is not SagaPhase.NOT_STARTED),
}


def add_parser(commands: Any, deployment_name: Any = str, address_help: str | None = None) -> None:
    """The ``sagas`` command's parser; ``deployment_name`` checks ``--name``."""
    sagas = commands.add_parser(
        "sagas", help="list stuck and parked sagas of a type; resume or abort them"
    )
    sagas.add_argument("--address", default="auto", help=address_help)
    sagas.add_argument(
        "--name", default="default", type=deployment_name, help="the deployment (default: default)"
    )
    sagas.add_argument("--type", required=True, dest="saga_type", help="the saga type's name")
    sagas.add_argument(
        "--phase",
        choices=sorted(_PHASES),
        default="attention",
        help="which sagas to list (default: attention, i.e. stuck and parked)",
    )
    act = sagas.add_mutually_exclusive_group()
    act.add_argument(
        "--resume",
        nargs="+",
        metavar="ID",
        help="retry a stuck saga's compensations; run a parked one under the deployed code",
    )
    act.add_argument(
        "--abort", nargs="+", metavar="ID", help="stop a running saga and compensate it"
    )
    sagas.add_argument("--reason", default="aborted by an operator", help="(with --abort)")
    sagas.add_argument(
        "--int-ids", action="store_true", help="the IDs are integers (sagas keyed by int)"
    )
    sagas.add_argument("--json", action="store_true", help="print the statuses as JSON")


def _key(text: str, as_int: bool) -> ActorKey:
    if not as_int:
        return text
    try:
        return int(text)
    except ValueError:
        raise RaygrainError(f"--int-ids: {text!r} is not an integer") from None


def _row(status: SagaStatus) -> dict[str, Any]:
    row = dataclasses.asdict(status)
    row["phase"] = status.phase.value
    return row


async def run(cluster: Any, args: argparse.Namespace) -> tuple[int, str]:
    """Do what ``args`` ask on ``cluster``; returns the exit code and the text to print. A
    saga that refuses (``SagaVersionError``: still parked; ``UnknownSagaError``) is reported
    on its line, and the exit code is 1 if any refused."""
    keys = args.resume or args.abort
    if keys:
        lines: list[str] = []
        rows: list[dict[str, Any]] = []
        failed = 0
        for text in keys:
            key = _key(text, args.int_ids)
            try:
                if args.resume:
                    status = await resume_saga(cluster, args.saga_type, key)
                else:
                    status = await abort_saga(cluster, args.saga_type, key, args.reason)
            except RaygrainError as exc:
                failed += 1
                lines.append(f"{text}: refused: {exc}")
                rows.append({"saga": key, "error": f"{type(exc).__name__}: {exc}"})
                continue
            lines.append(f"{text}: {status.phase.value}{_detail(status)}")
            rows.append(_row(status))
        text_out = json.dumps(rows, indent=2, default=str) if args.json else "\n".join(lines)
        return (1 if failed else 0), text_out
    found = await saga_statuses(cluster, args.saga_type, _PHASES[args.phase])
    if args.json:
        return 0, json.dumps([_row(s) for s in found], indent=2, default=str)
    if not found:
        return 0, f"no {_SAID[args.phase]}saga of type {args.saga_type}"
    lines = [f"{len(found)} {_SAID[args.phase]}saga(s) of type {args.saga_type}:"]
    lines += [f"  {s.saga!s}: {s.phase.value}{_detail(s)}" for s in found]
    return 0, "\n".join(lines)


def _detail(status: SagaStatus) -> str:
    parts = []
    if status.current:
        parts.append(f"at {', '.join(status.current)}")
    if status.error:
        parts.append(status.error)
    return f" ({'; '.join(parts)})" if parts else ""
