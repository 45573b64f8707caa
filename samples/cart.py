"""An expiring shopping cart: a timer while the cart is in memory, a reminder that outlives it.

Each cart keeps its items (durable state). While a cart is active, a timer re-prices it every
half second (an in-memory chore: it stops when the cart goes idle, and never keeps it in
memory). Every change (re)registers a durable reminder; when it fires and the cart has not been
touched for ``--ttl`` seconds, the cart empties itself and drops the reminder. The reminder
works whether or not the cart is in memory, and across a restart of the whole cluster: the
second cart below expires in a cluster started after the first one closed.

    python -m samples.cart [--db cart.db] [--ttl 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field

from raygrain import Actor, Cluster, ReminderSettings, ReminderTick, read_only

PRICES = {"apple": 0.5, "bread": 2.25, "coffee": 7.0}


@dataclass
class CartState:
    items: dict[str, int] = field(default_factory=dict)
    touched: float = 0.0  # wall-clock time of the last change
    ttl: float = 60.0
    total: float = 0.0


class Cart(Actor[CartState], name="samples.Cart"):
    async def on_activate(self) -> None:
        # A timer dies with the activation; re-pricing only matters while someone shops.
        self.timers.every(0.5, self.reprice, name="reprice")

    async def reprice(self) -> None:
        self.state.total = sum(PRICES.get(item, 1.0) * n for item, n in self.state.items.items())

    async def add(self, item: str, count: int, ttl: float) -> None:
        self.state.items[item] = self.state.items.get(item, 0) + count
        self.state.touched, self.state.ttl = time.time(), ttl
        await self.reprice()
        # Registering again replaces the reminder: it now fires ttl from this change.
        await self.reminders.register("expire", due=ttl, period=ttl)

    async def on_reminder(self, name: str, tick: ReminderTick) -> None:
        if name == "expire" and time.time() - self.state.touched >= self.state.ttl:
            self.state.items.clear()
            self.state.total = 0.0
            await self.reminders.unregister("expire")

    @read_only
    async def items(self) -> dict[str, int]:
        return dict(self.state.items)


async def _wait_until_empty(cart: Cart, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not await cart.items():
            return True
        await asyncio.sleep(0.1)
    return False


async def main(db: str, ttl: float) -> int:
    storage = f"sqlite:///{db}"
    settings = ReminderSettings(minimum_period=min(ttl, 60.0))  # short periods for the demo
    failures = 0
    async with Cluster.local(actors=[Cart], storage=storage, reminders=settings) as cluster:
        alice = cluster.get(Cart, "alice")
        await alice.add("apple", 3, ttl)
        await alice.add("coffee", 1, ttl)
        print(f"alice's cart: {await alice.items()}")
        expired = await _wait_until_empty(alice, ttl * 5)
        print(f"alice's cart expired: {'OK' if expired else 'FAILED'}")
        failures += not expired
        await cluster.get(Cart, "bob").add("bread", 2, ttl)
        print("bob's cart has bread; the cluster stops now")
    async with Cluster.local(actors=[Cart], storage=storage, reminders=settings) as cluster:
        bob = cluster.get(Cart, "bob")
        expired = await _wait_until_empty(bob, ttl * 5)
        print(f"bob's cart expired after a restart: {'OK' if expired else 'FAILED'}")
        failures += not expired
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="cart.db")
    parser.add_argument("--ttl", type=float, default=1.0, help="seconds a cart lives unchanged")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.db, arguments.ttl)))
