"""What one call costs, in CPU time and instructions, with many callers (a profiling harness).

Two scenarios, each with N callers over N actors (each caller calls its own actor, closed loop):

- ``inproc``: ``Cluster.local`` (2 silos, metrics on unless ``--no-metrics``), as
  ``calls_bench`` runs it.
- ``durable``: the same, each call a durable write (``SqliteStorage``, fsync, in a temporary
  directory), as ``durable_writes_bench`` runs it; metrics on unless ``--no-metrics``.
- ``events``: as ``durable``, each call one event appended through an event-sourced actor
  (``EventSourcedActor``, snapshots off), as ``events_bench`` runs it.
- ``wire``: a client and a silo over the direct plane (``WireTransport``, loopback TCP), built as
  the Ray host builds them (the silo with every capability's extension, the client with the
  client filters), without Ray. ``--split`` puts the silo in a child process and reports the CPU
  time per call of each side; otherwise both share this process's event loop.

Instructions per call: run under callgrind twice with different ``--calls`` and divide the
difference of the totals by the difference of the calls (start-up cancels out)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python tools/call_cost.py wire --callers 1000 --calls 4
    (then --calls 14; instructions per call = (I14 - I4) / (1000 * 10))

``--profile FILE`` writes a cProfile of the timed part (the client's side with ``--split``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing
import os
import time
from typing import Any

from raygrain.actors import Actor, ActorId, ActorRef


class Ping(Actor[None], name="bench.Ping"):
    async def ping(self, value: int) -> int:
        return value


SECRET = b"s" * 32
# Generous: under callgrind everything runs ~50x slower.
WIRE = {"handshake_timeout": 300.0, "connect_timeout": 300.0}


async def _drive(refs: list[Any], calls: int) -> float:
    async def caller(ref: Any) -> None:
        for i in range(calls):
            await ref.ping(i)

    started = time.perf_counter()
    await asyncio.gather(*(caller(r) for r in refs))
    return time.perf_counter() - started


async def _inproc(callers: int, calls: int, profile: str | None, metrics: bool = True) -> None:
    from raygrain.runtime import Cluster

    async with Cluster.local(actors=[Ping], silos=2, metrics=metrics) as cluster:
        refs = [cluster.get(Ping, k) for k in range(callers)]
        await asyncio.gather(*(r.ping(0) for r in refs))
        await _drive(refs, 2)  # warm every path
        _report("inproc", callers, calls, *await _timed(refs, calls, profile))


class Account(Actor[int], name="bench.Account"):
    async def deposit(self, amount: int) -> int:
        self.state += amount
        return self.state


async def _durable(
    callers: int, calls: int, profile: str | None, metrics: bool = True, events: bool = False
) -> None:
    import tempfile
    from pathlib import Path

    from raygrain.runtime import Cluster
    from raygrain.storage import SqliteStorage

    actor = _event_account() if events else Account
    with tempfile.TemporaryDirectory(prefix="raygrain-cost-") as tmp:
        async with (
            SqliteStorage(Path(tmp) / "state.db", durability="fsync") as storage,
            Cluster.local(actors=[actor], silos=2, storage=storage, metrics=metrics) as cluster,
        ):
            refs = [_Depositing(cluster.get(actor, k)) for k in range(callers)]
            await _drive(refs, 2)  # warm every path
            what = "events" if events else "durable"
            _report(what, callers, calls, *await _timed(refs, calls, profile))


def _event_account() -> type[Actor[Any]]:
    """events_bench's event-sourced account, with no snapshots (one append per call, nothing
    else)."""
    from raygrain.benchmarks.events_bench import EventAccount

    class Account(EventAccount, name="bench.CostEventAccount", snapshot_every=0):
        pass

    return Account


class _Depositing:
    """An account whose ``ping`` is a deposit (so that ``_drive`` makes writes)."""

    def __init__(self, ref: Any) -> None:
        self._ref = ref

    def ping(self, value: int) -> Any:
        return self._ref.deposit(1)


async def _timed(refs: list[Any], calls: int, profile: str | None) -> tuple[float, float]:
    profiler = cProfile.Profile() if profile else None
    cpu = time.process_time()
    if profiler is not None:
        profiler.enable()
    wall = await _drive(refs, calls)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)  # type: ignore[arg-type]
    return wall, time.process_time() - cpu


def _report(what: str, callers: int, calls: int, wall: float, cpu: float, **more: Any) -> None:
    total = callers * calls
    extra = "".join(f", {k} {v}" for k, v in more.items())
    print(
        f"{what}: {callers} callers x {calls} calls: {total / wall:,.0f} calls/s, "
        f"CPU {cpu / total * 1e6:.2f} us/call (this process){extra}",
        flush=True,
    )


async def _start_silo(port_out: Any = None) -> tuple[Any, Any, tuple[str, int]]:
    from raygrain.runtime._capabilities import silo_extensions
    from raygrain.runtime.kernel import (
        ActorRegistry,
        Membership,
        Silo,
        SiloOptions,
        SiloStatus,
        SystemClock,
    )
    from raygrain.runtime.wire import WireOptions, WireTransport
    from raygrain.storage import MemoryStorage

    membership = Membership()
    membership.set_status("silo-1", SiloStatus.ACTIVE)

    async def locate(silo: str) -> None:
        return None

    transport = WireTransport("silo-1", WireOptions(SECRET, **WIRE), locate)
    options = SiloOptions()
    silo = Silo(
        "silo-1",
        ActorRegistry([Ping]),
        MemoryStorage(),
        transport,
        membership,
        SystemClock(),
        options,
        silo_extensions(options),
    )
    transport.bind_silo(silo)
    silo.start()
    address = await transport.listen("127.0.0.1")
    return silo, transport, address


def _client(address: tuple[str, int]) -> tuple[Any, Any]:
    from raygrain.runtime._capabilities import client_filters
    from raygrain.runtime.kernel import (
        ActorRegistry,
        Caller,
        CallSettings,
        Membership,
        SiloStatus,
    )
    from raygrain.runtime.wire import WireOptions, WireTransport

    membership = Membership()
    membership.set_status("silo-1", SiloStatus.ACTIVE)

    async def locate(silo: str) -> tuple[str, int]:
        return address

    transport = WireTransport("client-1", WireOptions(SECRET, **WIRE), locate)
    caller = Caller(
        "client-1",
        transport,
        membership,
        ActorRegistry([Ping]),
        CallSettings(default_timeout=600.0),
        filters=client_filters(metrics=False),
    )
    transport.bind(caller)
    transport.connect("silo-1")
    return caller, transport


async def _wire(callers: int, calls: int, profile: str | None) -> None:
    silo, silo_transport, address = await _start_silo()
    caller, transport = _client(address)
    refs = [ActorRef(ActorId("bench.Ping", k), caller) for k in range(callers)]
    await asyncio.gather(*(r.ping(0) for r in refs))
    await _drive(refs, 2)
    _report("wire (one loop)", callers, calls, *await _timed(refs, calls, profile))
    caller.close()
    await transport.aclose()
    await silo.aclose()
    await silo_transport.aclose()


def _silo_process(pipe: Any, profile: str | None) -> None:
    async def serve() -> None:
        silo, transport, address = await _start_silo()
        pipe.send(address)
        loop = asyncio.get_running_loop()
        profiler = cProfile.Profile() if profile else None
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command == "start":
                if profiler is not None:
                    profiler.enable()
                pipe.send(time.process_time())
            elif command == "stop":
                cpu = time.process_time()
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(profile + ".silo")  # type: ignore[operator]
                pipe.send((cpu, silo.calls_received))
            else:
                break
        await silo.aclose()
        await transport.aclose()

    asyncio.run(serve())


async def _wire_split(callers: int, calls: int, profile: str | None) -> None:
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(
        target=_silo_process, args=(theirs, profile)
    )
    child.start()
    loop = asyncio.get_running_loop()
    address = await loop.run_in_executor(None, ours.recv)
    caller, transport = _client(address)
    refs = [ActorRef(ActorId("bench.Ping", k), caller) for k in range(callers)]
    await asyncio.gather(*(r.ping(0) for r in refs))
    await _drive(refs, 2)
    ours.send("start")
    silo_started = await loop.run_in_executor(None, ours.recv)
    wall, cpu = await _timed(refs, calls, profile)
    ours.send("stop")
    silo_ended, _ = await loop.run_in_executor(None, ours.recv)
    silo_us = (silo_ended - silo_started) / (callers * calls) * 1e6
    _report("wire (split)", callers, calls, wall, cpu, silo_us_per_call=f"{silo_us:.2f}")
    ours.send("exit")
    caller.close()
    await transport.aclose()
    child.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=("inproc", "durable", "events", "wire"))
    parser.add_argument("--callers", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--split", action="store_true", help="the silo in a child process")
    parser.add_argument("--profile", help="write a cProfile of the timed part here")
    parser.add_argument(
        "--no-metrics", action="store_true", help="inproc, durable, events: metrics off"
    )
    args = parser.parse_args()
    os.environ.setdefault("RAYGRAIN_LOG_LEVEL", "WARNING")
    if args.scenario == "inproc":
        run = _inproc(args.callers, args.calls, args.profile, not args.no_metrics)
    elif args.scenario in ("durable", "events"):
        events = args.scenario == "events"
        run = _durable(args.callers, args.calls, args.profile, not args.no_metrics, events)
    elif args.split:
        run = _wire_split(args.callers, args.calls, args.profile)
    else:
        run = _wire(args.callers, args.calls, args.profile)
    asyncio.run(run)


if __name__ == "__main__":
    main()
