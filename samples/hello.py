"""Hello, virtual actors: a greeter per name that remembers how often it was greeted.

Run it twice: the counts continue, because each greeter's state lives in a SQLite file
(``hello.db`` in the current directory, or the path given as the first argument).

    python -m samples.hello [path/to/hello.db]
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

from raygrain import Actor, Cluster, read_only


@dataclass
class Greetings:
    count: int = 0


class Greeter(Actor[Greetings], name="samples.Greeter"):
    async def greet(self, greeting: str) -> str:
        self.state.count += 1  # durable before greet() returns
        return f"{greeting}, {self.context.key}! (greeting number {self.state.count})"

    @read_only
    async def count(self) -> int:
        return self.state.count


async def main(db_path: str) -> None:
    async with Cluster.local(actors=[Greeter], silos=2, storage=f"sqlite:///{db_path}") as cluster:
        for name in ("world", "Orleans", "Ray"):
            print(await cluster.get(Greeter, name).greet("Hello"))
        total = sum(await asyncio.gather(*(cluster.get(Greeter, n).count() for n in ("world",))))
        print(f"'world' has been greeted {total} time(s) across runs (state in {db_path})")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "hello.db"))
