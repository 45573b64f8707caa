"""Orders, event-sourced, with two read models and each consistency level of a query.

The write model is ``Order``, an event-sourced actor: its methods raise events (``Placed``,
``ItemAdded``, ``Shipped``, ``Cancelled``), its state is the fold of its own stream, and a
command's reply comes once its events are durable. Two projections read the orders' feed:
``CustomerOrders`` (per customer: open orders and money spent) and ``Revenue`` (per product:
units and revenue of shipped orders). Then the sample queries them:

- strong: through the order itself (the write model), always current;
- eventual: a read model as it is, maybe a little behind;
- read-your-writes: with the token a command returned, the query waits for that write;
- monotonic reads: through a ``Session``, never older than what the session has already seen.

    python -m samples.orders [--orders 200] [--db orders.db]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
from dataclasses import dataclass, field
from typing import Any

from raygrain import (
    Cluster,
    EventSourcedActor,
    Projection,
    Rows,
    Session,
    StoredEvent,
    Written,
    read_only,
)

PRODUCTS = {"tea": 4, "mug": 9, "kettle": 30}


@dataclass
class OrderState:
    customer: str = ""
    items: dict[str, int] = field(default_factory=dict)
    status: str = "new"  # new -> open -> shipped | cancelled


@dataclass
class Placed:
    customer: str


@dataclass
class ItemAdded:
    product: str
    quantity: int
    unit_price: int


@dataclass
class Shipped:
    pass


@dataclass
class Cancelled:
    reason: str


OrderEvent = Placed | ItemAdded | Shipped | Cancelled


class Order(EventSourcedActor[OrderState, OrderEvent], name="orders.Order", snapshot_every=50):
    def apply(self, state: OrderState, event: OrderEvent) -> OrderState:
        if isinstance(event, Placed):
            state.customer, state.status = event.customer, "open"
        elif isinstance(event, ItemAdded):
            state.items[event.product] = state.items.get(event.product, 0) + event.quantity
        elif isinstance(event, Shipped):
            state.status = "shipped"
        elif isinstance(event, Cancelled):
            state.status = "cancelled"
        return state

    async def place(self, customer: str, items: dict[str, int]) -> Written | None:
        if self.state.status != "new":
            raise ValueError(f"order {self.context.key} was placed already")
        self.raise_event(Placed(customer))
        for product, quantity in items.items():
            if product not in PRODUCTS or quantity < 1:
                raise ValueError(f"no such item: {quantity} x {product}")  # nothing is kept
            self.raise_event(ItemAdded(product, quantity, PRODUCTS[product]))
        return await self.confirm_events()  # durable; the token is for read-your-writes

    async def ship(self) -> Written | None:
        if self.state.status != "open":
            raise ValueError(f"order {self.context.key} is {self.state.status}")
        self.raise_event(Shipped())
        return await self.confirm_events()

    async def cancel(self, reason: str) -> Written | None:
        if self.state.status != "open":
            raise ValueError(f"order {self.context.key} is {self.state.status}")
        self.raise_event(Cancelled(reason))
        return await self.confirm_events()

    @read_only
    async def summary(self) -> dict[str, Any]:
        total = sum(PRODUCTS[p] * q for p, q in self.state.items.items())
        return {"customer": self.state.customer, "status": self.state.status, "total": total}


def _order_key(stored: StoredEvent) -> str:
    return stored.stream.split("/", 1)[1]


class CustomerOrders(Projection, name="orders.CustomerOrders", sources=[Order]):
    """Per customer: the open orders and the money spent on shipped ones."""

    async def when(self, event: Any, stored: StoredEvent, rows: Rows) -> None:
        order = _order_key(stored)
        if isinstance(event, Placed):
            rows.put(f"order:{order}", {"customer": event.customer, "total": 0})
            row = await rows.get(event.customer, {"open": [], "spent": 0})
            row["open"].append(order)
            rows.put(event.customer, row)
            return
        info = await rows.get(f"order:{order}")
        if isinstance(event, ItemAdded):
            info["total"] += event.quantity * event.unit_price
            rows.put(f"order:{order}", info)
            return
        row = await rows.get(info["customer"])
        row["open"].remove(order)
        if isinstance(event, Shipped):
            row["spent"] += info["total"]
        rows.put(info["customer"], row)


class Revenue(Projection, name="orders.Revenue", sources=[Order]):
    """Per product: units and revenue of shipped orders."""

    async def when(self, event: Any, stored: StoredEvent, rows: Rows) -> None:
        order = _order_key(stored)
        if isinstance(event, ItemAdded):
            lines = await rows.get(f"lines:{order}", [])
            rows.put(f"lines:{order}", [*lines, [event.product, event.quantity, event.unit_price]])
        elif isinstance(event, Shipped):
            for product, quantity, price in await rows.get(f"lines:{order}", []):
                row = await rows.get(product, {"units": 0, "revenue": 0})
                rows.put(
                    product,
                    {
                        "units": row["units"] + quantity,
                        "revenue": row["revenue"] + quantity * price,
                    },
                )
            rows.delete(f"lines:{order}")
        elif isinstance(event, Cancelled):
            rows.delete(f"lines:{order}")


async def main(orders: int, db: str) -> None:
    rng = random.Random(7)
    customers = ["ana", "bo", "cy", "di"]
    async with Cluster.local(
        actors=[Order, CustomerOrders, Revenue], silos=2, storage=f"sqlite:///{db}"
    ) as cluster:
        by_customer, revenue = CustomerOrders.of(cluster), Revenue.of(cluster)
        placed: list[tuple[str, str, int]] = []

        async def one(number: int) -> None:
            key, customer = f"o{number}", rng.choice(customers)
            items = {p: rng.randint(1, 3) for p in rng.sample(sorted(PRODUCTS), 2)}
            await cluster.get(Order, key).place(customer, items)
            total = sum(PRODUCTS[p] * q for p, q in items.items())
            if number % 4 == 3:
                await cluster.get(Order, key).cancel("changed my mind")
            else:
                await cluster.get(Order, key).ship()
                placed.append((key, customer, total))

        await asyncio.gather(*(one(n) for n in range(orders)))

        # strong: through the write model
        first = placed[0]
        summary = await cluster.get(Order, first[0]).summary()
        print(f"strong: order {first[0]} is {summary['status']}, total {summary['total']}")

        # read-your-writes: the command's token makes the query wait for its own write
        written = await cluster.get(Order, "mine").place("ana", {"kettle": 1})
        mine = await by_customer.read("ana", written)
        print(f"read-your-writes: ana's open orders include 'mine': {'mine' in mine.value['open']}")
        assert "mine" in mine.value["open"]

        # eventual: as it is now (cheapest: no wait, maybe behind)
        eventual = await revenue.read("kettle")
        print(f"eventual: kettle revenue {eventual.value} at position {eventual.positions}")

        # monotonic: a session never reads older than it already saw, across read models
        session = Session()
        session.wrote(await cluster.get(Order, "mine").ship())
        spent = await session.read(by_customer, "ana")
        kettle = await session.read(revenue, "kettle")  # waits if Revenue is behind the session
        print(
            f"monotonic: ana spent {spent.value['spent']}, kettles shipped "
            f"{kettle.value['units']} (session at {session.token})"
        )

        expected: dict[str, int] = {}
        for _, customer, total in placed:
            expected[customer] = expected.get(customer, 0) + total
        expected["ana"] = expected.get("ana", 0) + PRODUCTS["kettle"]
        for customer in customers:
            row = (await session.read(by_customer, customer)).value or {"spent": 0}
            assert row["spent"] == expected.get(customer, 0), (customer, row, expected)
        lag = await revenue.lag()
        print(f"lag of Revenue: {lag} events")
        print("read models agree with the write model: OK")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--db", default=None, help="SQLite file (default: a temporary one)")
    args = parser.parse_args()
    if args.db:
        asyncio.run(main(args.orders, args.db))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(args.orders, os.path.join(tmp, "orders.db")))
