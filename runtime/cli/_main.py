"""The raygrain command: run silos on a Ray cluster, inspect them, stop them, benchmark.

raygrain up --address auto --actors my.module [--silos-per-node 1] [--storage URL]
            [--transport direct|ray] [--tls-cert FILE --tls-key FILE [--tls-ca FILE]]
raygrain status --address auto
raygrain down --address auto
raygrain bench [--quick] [--only NAME] [--local] [--ray ADDRESS] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import sys
from importlib import metadata
from typing import Any

from rich.table import Table

from raygrain.actors import Actor, ConfigurationError, RaygrainError
from raygrain.runtime.cli._table import Column, render_table, table_console

__all__ = ["main"]


def _actor_classes(module_names: list[str]) -> list[type[Actor[Any]]]:
    # Like uvicorn or celery: the user's modules are importable from where they run the command.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found: list[type[Actor[Any]]] = []
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(f"cannot import actor module {name!r}: {exc}") from None
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, Actor) and value is not Actor and value.__module__ == name:
                found.append(value)
    if not found:
        raise ConfigurationError(f"no Actor subclasses found in {', '.join(module_names)}")
    return found


async def _up(args: argparse.Namespace) -> int:
    from raygrain.runtime.kernel import SiloOptions
    from raygrain.runtime.ray_host import DirectPlane, RayLaunch, ensure_ray, find_silos, launch
    from raygrain.runtime.wire import TLSFiles

    actor_types = _actor_classes(args.actors)
    ensure_ray(args.address, local_code=True)
    if find_silos():
        raise ConfigurationError("raygrain silos are already running; 'raygrain down' first")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigurationError("--tls-cert and --tls-key go together")
    tls = TLSFiles(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    spec = RayLaunch(
        tuple(actor_types),
        args.silos_per_node,
        args.storage if args.storage.startswith("sqlite:") and args.direct else None,
        args.storage,
        detached=True,
        transport=args.transport,
        plane=DirectPlane(tls=tls),
    )
    handles = await launch(spec, SiloOptions())
    silos = sorted(n for n in handles if n.startswith("raygrain-silo-"))
    print(f"started {len(silos)} silo(s) hosting {', '.join(c.__name__ for c in actor_types)}:")
    for name in silos:
        print(f"  {name}")
    return 0


async def _status(args: argparse.Namespace) -> int:
    import ray

    from raygrain.runtime.kernel import view_from_wire
    from raygrain.runtime.ray_host import CONTROLLER_NAME, NAMESPACE, ensure_ray

    ensure_ray(args.address, local_code=False)
    try:
        controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        print("no raygrain cluster is running on this Ray cluster")
        return 1
    view = view_from_wire(await controller.get_view.remote())
    nodes = await controller.silo_nodes.remote()
    rows = []
    for name, status in sorted(view.silos):
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
            stats = await asyncio.wait_for(handle.stats.remote(), 10)
        except Exception as exc:  # an unreachable silo is part of the status, not a failure
            stats = {"error": type(exc).__name__}
        rows.append({"silo": name, "status": status.value, "node": nodes.get(name, "?"), **stats})
    if args.json:
        print(json.dumps({"view_version": view.version, "silos": rows}, indent=2))
        return 0
    table_console().print(_status_table(view.version, rows))
    return 0


def _status_table(view_version: int, rows: list[dict[str, Any]]) -> Table:
    columns = [
        Column("silo", max_width=44),  # folds: the end of a silo's name tells two apart
        Column("status"),
        Column("node", overflow="ellipsis", max_width=14),
        Column("activations", justify="right"),
        Column("calls", justify="right"),
    ]
    cells = [
        (r["silo"], r["status"], r["node"], r.get("activations"), r.get("calls_received"))
        for r in rows
    ]
    title = f"membership view version {view_version}, {len(rows)} silo(s)"
    return render_table(columns, cells, title=title)


async def _down(args: argparse.Namespace) -> int:
    from raygrain.runtime.ray_host import ensure_ray, find_silos, stop_everything

    ensure_ray(args.address, local_code=False)
    silos = find_silos()
    await stop_everything()
    print(f"stopped {len(silos)} silo(s); their state is durable in storage")
    return 0


def _version() -> str:
    try:
        return metadata.version("raygrain")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raygrain", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"raygrain {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start detached silos on a Ray cluster")
    up.add_argument("--address", default="auto", help="Ray address (default: auto)")
    up.add_argument("--actors", action="append", required=True, help="module with actor classes")
    up.add_argument("--silos-per-node", type=int, default=1)
    up.add_argument("--storage", default="sqlite://raygrain-state.db")
    up.add_argument(
        "--direct",
        action="store_true",
        help="every silo opens the SQLite file itself (one machine) instead of a storage server",
    )
    up.add_argument(
        "--transport",
        choices=["direct", "ray"],
        default="direct",
        help="data plane: the silos' own connections (direct, default) or Ray actor calls",
    )
    up.add_argument("--tls-cert", default=None, help="certificate the silos present (PEM)")
    up.add_argument("--tls-key", default=None, help="its private key (PEM)")
    up.add_argument("--tls-ca", default=None, help="CA file clients and silos trust")
    status = commands.add_parser("status", help="show silos, nodes, activations and the view")
    status.add_argument("--address", default="auto")
    status.add_argument("--json", action="store_true")
    down = commands.add_parser("down", help="stop the silos gracefully")
    down.add_argument("--address", default="auto")
    # Its options are the suite's own: `raygrain bench --help` lists them.
    commands.add_parser("bench", help="run the benchmark suite", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        try:
            # Imported by name: the runtime does not depend on the benchmark suite.
            suite = importlib.import_module("raygrain.benchmarks._suite")
        except ImportError:
            print(
                "raygrain bench needs the benchmarks package: run it from a raygrain checkout "
                "(python -m raygrain.benchmarks works there too)",
                file=sys.stderr,
            )
            return 2
        return int(suite.main(argv[1:], prog="raygrain bench"))
    args = _parser().parse_args(argv)
    handler = {"up": _up, "status": _status, "down": _down}[args.command]
    try:
        return asyncio.run(handler(args))
    except RaygrainError as exc:
        print(f"raygrain {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
