"""The raygrain command: run silos on a Ray cluster, inspect them, stop them, benchmark.

raygrain up --address auto --actors my.module [--name NAME] [--silos-per-node 1] [--storage URL]
            [--no-storage-server] [--transport direct|ray]
            [--tls-cert FILE --tls-key FILE [--tls-ca FILE]]
raygrain status --address auto [--name NAME] [--watch] [--json] [--interval SECONDS]
raygrain down --address auto [--name NAME]
raygrain sagas --type NAME [--address auto] [--name NAME] [--phase stuck|parked|attention|all]
               [--resume ID ... | --abort ID ...] [--json]
raygrain bench [--quick] [--only NAME] [--local] [--ray ADDRESS] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import socket
import sys
import traceback
from typing import Any

from raygrain.actors import Actor, ConfigurationError, RaygrainError, actor_options
from raygrain.runtime.cli._parser import build_parser as _parser
from raygrain.runtime.cli._table import table_console
from raygrain.runtime.tracing import TracingSettings

__all__ = ["main"]

# Exit codes (listed in `raygrain --help`).
EXIT_OK = 0
EXIT_NOT_RUNNING = 1  # status/down: no such deployment on that Ray
EXIT_CONFIG = 2  # bad arguments or configuration
EXIT_RAY_UNREACHABLE = 3  # cannot connect to Ray, or Ray refused our credentials
_REACH_TIMEOUT = 5.0  # seconds to wait for Ray's port to accept a connection


class RayUnreachable(Exception):
    """Ray could not be reached or refused us: the message is one line saying what to do."""


def _connect(address: str | None, local_code: bool) -> None:
    """Connect to Ray, turning its connection and authentication failures into one line."""
    from raygrain.runtime.ray_host import ensure_ray

    listening = _check_reachable(*_ray_address(address))
    try:
        ensure_ray(address, local_code=local_code)
    except RaygrainError as exc:
        if isinstance(exc.__cause__, ConnectionError):  # Ray refused us (exit code 3)
            raise RayUnreachable(_describe_ray_failure(address, exc.__cause__, listening)) from exc
        raise
    except Exception as exc:
        raise RayUnreachable(_describe_ray_failure(address, exc, listening)) from exc


def _ray_address(address: str | None) -> tuple[str, str]:
    """Where Ray connects for ``--address``, and how errors name it: ``auto`` (the default)
    means ``RAY_ADDRESS`` when that is set, as Ray itself reads it."""
    env = os.environ.get("RAY_ADDRESS")
    if address in (None, "auto") and env and env != "auto":
        return env, f"RAY_ADDRESS={env}"
    return address or "auto", address or "auto"


def _check_reachable(address: str, shown: str | None = None) -> bool:
    """Fail at once when nothing listens at ``host:port``: Ray itself would retry for minutes,
    printing a warning every few seconds. ("auto" is Ray's to resolve; it fails fast.) True
    when something does listen there."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        socket.create_connection((host, int(port)), timeout=_REACH_TIMEOUT).close()
    except OSError as exc:
        raise RayUnreachable(
            f"cannot connect to Ray at {shown or address} "
            f"({exc.strerror or type(exc).__name__}): start it with 'ray start --head', or pass "
            "the right --address (or RAY_ADDRESS)"
        ) from exc
    return True


def _describe_ray_failure(address: str | None, exc: BaseException, listening: bool = False) -> str:
    where = _ray_address(address)[1]
    text = f"{type(exc).__name__}: {exc}"
    lowered = text.lower()
    if (
        "authenticationerror" in lowered
        or "invalidauthtoken" in lowered
        or ("auth" in lowered and "token" in lowered)
    ):
        return (
            f"Ray at {where} refused the connection's credentials (token authentication): "
            "make the cluster's token available (RAY_AUTH_TOKEN, or the file "
            "~/.ray/auth_token), or on a trusted machine start Ray with RAY_AUTH_MODE=disabled"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if listening:
        # Something answers there, yet Ray did not let us in: most often a cluster started
        # with token authentication (Ray 2.60's default for `ray start`) and a shell without
        # its settings, which Ray reports only in its own log lines.
        return (
            f"Ray at {where} did not accept the connection ({first[:200]}): if it runs with "
            "token authentication, set RAY_AUTH_MODE=token in this shell and make the "
            "cluster's token available (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token)"
        )
    return (
        f"cannot connect to Ray at {where} ({first[:200]}): start it with 'ray start --head', "
        "or pass --address (or set RAY_ADDRESS)"
    )


def _tracing_settings(setup: str | None) -> TracingSettings | None:
    """``--tracing-setup``, checked here (that it imports, from where the actor modules do)
    rather than failing every silo in Ray's logs; each silo process calls it."""
    if setup is None:
        return None
    settings = TracingSettings(setup=setup)  # (refuses what is no 'module:function')
    module_name, _, function_name = setup.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:  # (a module's own error at import too)
        raise ConfigurationError(
            f"--tracing-setup {setup!r} is not an importable 'module:function': "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not callable(function):
        raise ConfigurationError(f"--tracing-setup {setup!r} is not a function")
    return settings


def _actor_classes(module_names: list[str]) -> list[type[Actor[Any]]]:
    # Like uvicorn or celery: the user's modules are importable from where they run the command.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found: list[type[Actor[Any]]] = []
    imported: set[str] = set()  # actor modules the given ones import actors from
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # (a module's own error at import too: a SyntaxError...)
            where = ""
            missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
            if missing and (name == missing or name.startswith(f"{missing}.")):
                where = (
                    f" (modules are imported from the current directory, {os.getcwd()}, and the"
                    " installed packages: run the command where the module is)"
                )
            raise ConfigurationError(
                f"cannot import actor module {name!r}: {type(exc).__name__}: {exc}{where}"
            ) from exc
        for _, value in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(value, Actor)
                and value is not Actor
                and value.__module__ == name
                # A generic base (class Repo(Actor[T], Generic[T])) is hosted through the
                # subclasses that name its type (class Carts(Repo[Cart])), not itself.
                and "__actor_state_parameter__" not in value.__dict__
            ):
                found.append(value)
            elif issubclass(value, Actor) and value.__module__ != name:
                imported.add(value.__module__)
    if not found:
        hint = ""
        theirs = sorted(m for m in imported if not m.startswith("raygrain."))
        if theirs:  # (a package's __init__ that imports its actors from its modules, say)
            hint = (
                " (only classes defined in a module are hosted, not those it imports: give "
                f"--actors {' --actors '.join(theirs)})"
            )
        raise ConfigurationError(f"no Actor subclasses defined in {', '.join(module_names)}{hint}")
    return found


async def _up(args: argparse.Namespace) -> int:
    from raygrain.runtime.kernel import ActorRegistry, SiloOptions
    from raygrain.runtime.ray_host import DirectPlane, RayLaunch, launch
    from raygrain.runtime.wire import TLSFiles

    if args.deprecated_direct:
        print(
            "raygrain up: --direct is deprecated, use --no-storage-server (the data plane is "
            "chosen with --transport)",
            file=sys.stderr,
        )
    actor_types = _actor_classes(args.actors)
    tracing = _tracing_settings(args.tracing_setup)
    # The silos would refuse these classes (a state type that cannot be stored, two classes
    # of one name) one by one, in Ray's logs: refuse them here, in one line, as Cluster.ray does.
    ActorRegistry(actor_types)
    # A database every node reaches is used by every silo directly: no storage server.
    direct = args.no_storage_server or args.storage.lower().startswith(("postgresql:", "postgres:"))
    if args.storage.lower().partition("?")[0] in _IN_MEMORY:
        where = "each silo's own memory" if direct else "the storage server's memory"
        print(
            f"raygrain up: warning: --storage {args.storage} keeps the actors' state in {where}:"
            " it is lost when the deployment stops"
            + (", and an actor that moves to another silo loses it" if direct else "")
            + " (use a sqlite:/// file or a postgresql:// database to keep it)",
            file=sys.stderr,
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigurationError("--tls-cert and --tls-key go together")
    tls = TLSFiles(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    if tls is not None:
        tls.check()
    spec = RayLaunch(
        tuple(actor_types),
        args.silos_per_node,
        args.storage if direct else None,
        args.storage,
        detached=True,
        name=args.name,
        log_level=args.log_level,
        transport=args.transport,
        plane=DirectPlane(tls=tls),
    )
    _connect(args.address, local_code=True)
    options = SiloOptions(capabilities=() if tracing is None else (tracing,))
    handles = await launch(spec, options)  # (refuses a name in use; Ctrl-C undoes it)
    silos = sorted(n for n in handles if n.startswith("raygrain-silo-"))
    print(
        f"deployment {args.name!r}: started {len(silos)} silo(s) hosting "
        f"{', '.join(sorted(actor_options(c).name for c in actor_types))}:"  # (as calls name them)
    )
    for name in silos:
        print(f"  {name}")
    return EXIT_OK


async def _status(args: argparse.Namespace) -> int:
    from raygrain.runtime.ray_host import list_deployments

    _connect(args.address, local_code=False)
    if args.name is None:
        return await _list_deployments(args, list_deployments())
    return await _deployment_status(args, args.name)


async def _list_deployments(args: argparse.Namespace, names: list[str]) -> int:
    import ray

    from raygrain.runtime.kernel import view_from_wire
    from raygrain.runtime.ray_host import CONTROLLER_NAME, namespace_of

    rows: list[dict[str, Any]] = []
    for name in names:
        try:
            controller = ray.get_actor(CONTROLLER_NAME, namespace=namespace_of(name))
        except ValueError:  # a launch under way, or one killed half-way ('down' stops it)
            rows.append({"name": name, "error": "no controller"})
            continue
        try:
            view = view_from_wire(await asyncio.wait_for(controller.get_view.remote(), 10))
            rows.append({"name": name, "view_version": view.version, "silos": len(view.active())})
        except Exception as exc:  # an unreachable controller is part of the status
            rows.append({"name": name, "error": type(exc).__name__})
    if args.json:
        print(json.dumps({"deployments": rows}, indent=2))
        return EXIT_OK
    if not rows:
        print("no raygrain deployment is running on this Ray cluster", file=sys.stderr)
        return EXIT_NOT_RUNNING
    print(f"{len(rows)} deployment(s); 'raygrain status --name NAME' for one's silos")
    print(f"{'deployment':32} {'live silos':>10} {'view':>6}")
    for row in rows:
        print(
            f"{row['name']:32} {row.get('silos', row.get('error', '-'))!s:>10} "
            f"{row.get('view_version', '-')!s:>6}"
        )
    return EXIT_OK


async def _deployment_status(args: argparse.Namespace, deployment: str) -> int:
    import ray

    from raygrain.runtime.cli._status import collect, render, watch
    from raygrain.runtime.ray_host import CONTROLLER_NAME, list_deployments, namespace_of

    namespace = namespace_of(deployment)
    try:
        controller = ray.get_actor(CONTROLLER_NAME, namespace=namespace)
    except ValueError:
        if deployment in list_deployments():  # what the listing shows as "no controller"
            message = (
                f"deployment {deployment!r} has no controller: its launch is under way, or was "
                f"killed half-way ('raygrain down --name {deployment}' stops what is left)"
            )
            print(message, file=sys.stderr)
            return EXIT_NOT_RUNNING
        return _not_running(deployment)
    if args.interval <= 0:
        raise ConfigurationError(f"--interval must be a positive number, got {args.interval}")
    console = table_console()
    figures = await watch(
        lambda: collect(controller, namespace), deployment, args.interval, args.watch, console
    )
    # Silos follow Ray's nodes (see NodeFollower): a live node with no active silo yet shows.
    live_nodes = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}  # type: ignore[no-untyped-call]
    covered = {s.get("node_id") for s in figures["silos"] if s.get("status") == "active"}
    without_silo = sorted(live_nodes - covered)
    figures["deployment"] = deployment
    figures["nodes"] = {"alive": len(live_nodes), "without_silo": without_silo}
    if args.json:
        print(json.dumps(figures, indent=2))
        return EXIT_OK
    console.print(render(deployment, figures))
    if without_silo:
        console.print(f"{len(without_silo)} live node(s) still without a silo: {without_silo}")
    return EXIT_OK


async def _down(args: argparse.Namespace) -> int:
    from raygrain.runtime.ray_host import list_deployments, stop_everything

    _connect(args.address, local_code=False)
    if args.name not in list_deployments():
        return _not_running(args.name)
    silos = await stop_everything(args.name)
    print(f"deployment {args.name!r}: stopped {len(silos)} silo(s); their state is durable")
    return EXIT_OK


async def _sagas(args: argparse.Namespace) -> int:
    from raygrain.runtime.cli._sagas import run
    from raygrain.runtime.cluster import Cluster
    from raygrain.runtime.ray_host import list_deployments

    _connect(args.address, local_code=False)
    if args.name not in list_deployments():
        return _not_running(args.name)
    async with Cluster.connect(args.address, name=args.name) as cluster:
        code, text = await run(cluster, args)
    print(text)
    return code


_IN_MEMORY = ("memory://", "sqlite://", "sqlite:///", "sqlite:///:memory:")


def _not_running(name: str) -> int:
    """Say that no deployment of that name runs, and which do (a typo shows itself)."""
    from raygrain.runtime.ray_host import list_deployments

    running = ", ".join(list_deployments()) or "none"
    print(
        f"no raygrain deployment named {name!r} on this Ray (running: {running})",
        file=sys.stderr,
    )
    return EXIT_NOT_RUNNING


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
    args = _parser().parse_command(argv)
    if args.command == "up":
        args.no_storage_server = args.no_storage_server or args.deprecated_direct
    handler = {"up": _up, "status": _status, "down": _down, "sagas": _sagas}[args.command]
    try:
        return asyncio.run(handler(args))
    except KeyboardInterrupt:  # Ctrl-C (status --watch runs until it): no traceback
        print(file=sys.stderr)
        return 130
    except (RaygrainError, RayUnreachable) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"raygrain {args.command}: {exc}", file=sys.stderr)
        return EXIT_RAY_UNREACHABLE if isinstance(exc, RayUnreachable) else EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
