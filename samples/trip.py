"""Trip booking with durable sagas: a flight, then a hotel and a car in parallel, then payment.

Each trip is a ``BookTrip`` saga (a virtual actor keyed by the trip id). Its steps call three
actor types (``Airline``, ``Hotel``, ``CarRental``) and a fake external payment provider, each
with the step's idempotency key. Things go wrong at random: services are briefly unavailable
(retried with backoff), hotels sell out and cards are declined (terminal: the saga compensates
what it booked, newest first), and the payment provider sometimes charges and then times out
(the outcome is unknown: the retry, with the same key, does not charge twice).

At the end the sample prints each trip's outcome and checks the invariant: a completed trip
holds exactly one flight, hotel room, car and charge; a compensated one holds none, and no
booking or charge belongs to no completed trip (no orphan bookings).

    python -m samples.trip [--trips 40] [--seed 7] [--db trip.db]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
from collections import Counter
from dataclasses import dataclass, field

from raygrain import (
    Actor,
    Cluster,
    IdempotencyKeys,
    Retry,
    Saga,
    SagaFailedError,
    TerminalError,
    idempotent,
    read_only,
    step,
)

RNG = random.Random(7)  # reseeded by --seed
FLAKY = 0.15  # chance that a service is briefly unavailable


class Unavailable(Exception):
    """A service could not be reached; the call did nothing (retried)."""


class SoldOut(TerminalError):
    """No room, seat or car left (not retried: the trip is compensated)."""


class CardDeclined(TerminalError):
    """The payment provider refused the card."""


@dataclass
class Inventory:
    bookings: dict[str, str] = field(default_factory=dict)  # idempotency key -> trip id
    issued: int = 0
    applied: IdempotencyKeys = field(default_factory=IdempotencyKeys)


class Inventoried(Actor[Inventory]):
    """What an airline, a hotel and a car rental have in common: reserve once per key, cancel
    (which also fences the key, so a late duplicate of the reservation does nothing)."""

    capacity = 1_000
    prefix = "X"

    @idempotent
    async def reserve(self, key: str, trip: str) -> str:
        if RNG.random() < FLAKY:
            raise Unavailable(f"{self.context.id} is busy")
        if len(self.state.bookings) >= self.capacity:
            raise SoldOut(f"{self.context.id} is full")
        self.state.bookings[key] = trip
        self.state.issued += 1
        return f"{self.prefix}-{self.context.key}-{self.state.issued}"

    async def cancel(self, key: str) -> None:
        self.state.bookings.pop(key, None)
        self.state.applied.record(key)

    @read_only
    async def bookings(self) -> dict[str, str]:
        return self.state.bookings


class Airline(Inventoried, name="samples.Airline"):
    prefix = "F"


class Hotel(Inventoried, name="samples.Hotel"):
    capacity = 12  # two hotels, fewer rooms than trips: some trips cannot be booked
    prefix = "H"


class CarRental(Inventoried, name="samples.CarRental"):
    prefix = "C"


class PaymentProvider:
    """A fake external payment service with idempotency keys (as Stripe's API has): a charge
    repeated with its key is not charged again; a refund voids the key for good."""

    def __init__(self) -> None:
        self.charges: dict[str, tuple[str, int]] = {}  # key -> (trip, amount)
        self.receipts: dict[str, str] = {}
        self.voided: set[str] = set()
        self.refunded: dict[str, tuple[str, int]] = {}

    async def charge(self, key: str, trip: str, amount: int) -> str:
        await asyncio.sleep(0)  # (a network call)
        if RNG.random() < FLAKY:
            raise ConnectionError("payment provider unreachable")
        if key not in self.charges and key not in self.voided:
            if RNG.random() < 0.1:
                raise CardDeclined(f"card declined for {trip}")
            self.charges[key] = (trip, amount)
            self.receipts[key] = f"P-{len(self.receipts) + 1}"
        if RNG.random() < FLAKY:
            raise TimeoutError("payment provider timed out (it may have charged)")
        return self.receipts.get(key, "void")

    async def refund(self, key: str) -> None:
        self.voided.add(key)
        charged = self.charges.pop(key, None)
        if charged is not None:
            self.refunded[key] = charged


PAYMENTS = PaymentProvider()


@dataclass
class Trip:
    traveller: str
    airline: str
    city: str
    hotel: str
    price: int


class BookTrip(Saga[Trip], name="samples.BookTrip"):
    # Fast retries for a demo (the default is 1 s doubling up to 100 s, 10 attempts).
    retry_policy = Retry(first_delay=0.01, max_delay=0.2, max_attempts=8)

    @step
    async def flight(self, trip: Trip) -> str:
        return await self.actors.get(Airline, trip.airline).reserve(
            self.idempotency_key, trip.traveller
        )

    @flight.compensate
    async def cancel_flight(self, trip: Trip, booking: str | None) -> None:
        await self.actors.get(Airline, trip.airline).cancel(self.idempotency_key)

    @step(group="stay")
    async def hotel(self, trip: Trip) -> str:
        return await self.actors.get(Hotel, trip.hotel).reserve(
            self.idempotency_key, trip.traveller
        )

    @hotel.compensate
    async def cancel_hotel(self, trip: Trip, booking: str | None) -> None:
        await self.actors.get(Hotel, trip.hotel).cancel(self.idempotency_key)

    @step(group="stay")
    async def car(self, trip: Trip) -> str:
        return await self.actors.get(CarRental, trip.city).reserve(
            self.idempotency_key, trip.traveller
        )

    @car.compensate
    async def cancel_car(self, trip: Trip, booking: str | None) -> None:
        await self.actors.get(CarRental, trip.city).cancel(self.idempotency_key)

    @step
    async def payment(self, trip: Trip) -> str:
        return await PAYMENTS.charge(self.idempotency_key, trip.traveller, trip.price)

    @payment.compensate
    async def refund(self, trip: Trip, receipt: str | None) -> None:
        await PAYMENTS.refund(self.idempotency_key)  # (receipt None: the charge is in doubt)


ACTORS = [Airline, Hotel, CarRental, BookTrip]


def plan_trips(count: int) -> dict[str, Trip]:
    return {
        f"trip-{n:03}": Trip(
            traveller=f"trip-{n:03}",
            airline=RNG.choice(["AF", "KL"]),
            city="Lisbon",
            hotel=RNG.choice(["Lisbon-Alfama", "Lisbon-Baixa"]),
            price=RNG.randrange(300, 2000),
        )
        for n in range(count)
    }


async def run(count: int, db: str) -> None:
    trips = plan_trips(count)
    async with Cluster.local(actors=ACTORS, silos=3, storage=f"sqlite:///{db}") as cluster:
        await asyncio.gather(*(cluster.get(BookTrip, t).start(trip) for t, trip in trips.items()))
        outcomes: dict[str, str] = {}
        for trip_id in trips:
            saga = cluster.get(BookTrip, trip_id)
            try:
                booked = await saga.result()
                outcomes[trip_id] = "completed"
                detail = ", ".join(f"{k} {v}" for k, v in booked.items())
            except SagaFailedError as failed:
                outcomes[trip_id] = failed.phase
                detail = failed.reason
            print(f"{trip_id}  {outcomes[trip_id]:<11}  {detail}")
        held = {
            kind: await cluster.get(cls, key).bookings()
            for kind, cls, key in [
                ("flight AF", Airline, "AF"),
                ("flight KL", Airline, "KL"),
                ("hotel Lisbon-Alfama", Hotel, "Lisbon-Alfama"),
                ("hotel Lisbon-Baixa", Hotel, "Lisbon-Baixa"),
                ("car Lisbon", CarRental, "Lisbon"),
            ]
        }
    check(trips, outcomes, held)


def check(
    trips: dict[str, Trip], outcomes: dict[str, str], held: dict[str, dict[str, str]]
) -> None:
    """The invariant: completed trips hold one of everything, the others nothing."""
    tally = Counter(outcomes.values())
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))
    problems: list[str] = []
    holdings: dict[str, Counter[str]] = {t: Counter() for t in trips}
    for kind, bookings in held.items():
        for trip in bookings.values():
            holdings[trip][kind.split()[0]] += 1
    for trip_id, trip in trips.items():
        charged = [k for k, (who, _) in PAYMENTS.charges.items() if who == trip.traveller]
        holdings[trip_id]["payment"] += len(charged)
        want = 1 if outcomes[trip_id] == "completed" else 0
        for kind in ("flight", "hotel", "car", "payment"):
            if holdings[trip_id][kind] != want:
                problems.append(
                    f"{trip_id} ({outcomes[trip_id]}) holds {holdings[trip_id][kind]} {kind}"
                )
    if "stuck" in tally:
        problems.append(f"{tally['stuck']} trip(s) stuck")
    refunds = len(PAYMENTS.refunded)
    print(f"charges kept {len(PAYMENTS.charges)}, refunded {refunds}")
    if problems:
        raise SystemExit("INVARIANT BROKEN: " + "; ".join(problems))
    print("no orphan bookings: OK")
    print("every completed trip holds one flight, room, car and charge: OK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--db", default=None, help="SQLite file (default: a temporary one)")
    args = parser.parse_args()
    if args.trips < 1:
        parser.error("--trips must be at least 1")
    RNG.seed(args.seed)
    if args.db:
        asyncio.run(run(args.trips, args.db))
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.trips, os.path.join(tmp, "trip.db")))


if __name__ == "__main__":
    main()
