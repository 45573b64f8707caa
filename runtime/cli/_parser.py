"""The ``raygrain`` command line's grammar: its commands, their options and help, and the
checks of option values that make a bad one a usage error (exit 2) before anything reaches
Ray. ``_main`` runs what it parses."""

from __future__ import annotations

import argparse
import math

from raygrain.actors import ConfigurationError
from raygrain.runtime.cli._sagas import add_parser as add_sagas_parser
from raygrain.runtime.kernel import installed_version

__all__ = ["build_parser", "deployment_name"]

DESCRIPTION = (
    "The raygrain command: run silos on a Ray cluster, inspect them, stop them, benchmark."
)

_EPILOG = """\
deployments: every deployment has a name (--name, default "default"); its silos, controller and
storage live in the Ray namespace raygrain-NAME, and 'down --name' stops only that one.
'status' without --name lists the deployments on that Ray.

logging: RAYGRAIN_LOG_LEVEL (or 'up --log-level') sets the silos' level (default warning).

exit codes:
  0  success
  1  no such deployment on that Ray (status, down, sagas), or a saga refused (sagas)
  2  bad arguments or configuration (e.g. an actor module that does not import)
  3  cannot connect to Ray at the address, or Ray refused the connection's credentials
     (Ray's token authentication, on by default for 'ray start': set RAY_AUTH_MODE=token
     here and give the cluster's token, the file ~/.ray/auth_token or RAY_AUTH_TOKEN; or
     RAY_AUTH_MODE=disabled both for 'ray start' and here, on a trusted machine)
add --debug to any command to see the full traceback of an error."""


ADDRESS_HELP = (
    "Ray address: host:port, ray://host:10001, or auto (the default: RAY_ADDRESS when set, "
    "else the Ray started on this machine)"
)


def _log_level(text: str) -> str:
    if text.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is no log level (debug, info, warning, error, critical)"
        )
    return text.lower()


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds > 0")
    return seconds


def deployment_name(text: str) -> str:
    """``--name``: a bad one is a usage error (exit 2), not a deployment that is not there."""
    from raygrain.runtime.ray_host import namespace_of

    try:
        namespace_of(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class _Parser(argparse.ArgumentParser):
    """The top-level parser: an unknown option is reported by the command it was given to
    (``raygrain status: error: unrecognized arguments: --nmae``, under that command's usage),
    not by the top level, whose usage does not show the command's options."""

    commands: dict[str, argparse.ArgumentParser]

    def parse_command(self, argv: list[str]) -> argparse.Namespace:
        args, extra = self.parse_known_args(argv)
        if extra:
            told = self.commands.get(args.command, self)
            told.error(f"unrecognized arguments: {' '.join(extra)}")
        return args


def build_parser() -> _Parser:
    parser = _Parser(
        prog="raygrain",
        description=DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"raygrain {installed_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a detached deployment of silos on a Ray cluster")
    up.add_argument("--address", default="auto", help=ADDRESS_HELP)
    up.add_argument(
        "--name",
        default="default",
        type=deployment_name,
        help="the deployment's name (default: default)",
    )
    up.add_argument(
        "--log-level",
        default=None,
        type=_log_level,
        help="the silos' log level (debug, info, warning, error; default: RAYGRAIN_LOG_LEVEL)",
    )
    up.add_argument("--actors", action="append", required=True, help="module with actor classes")
    up.add_argument("--silos-per-node", type=int, default=1, help="silos on each node (default: 1)")
    up.add_argument(
        "--storage",
        default="sqlite:///raygrain-state.db",
        help="where state lives: a storage URL (default: sqlite:///raygrain-state.db in this"
        " directory, behind a storage server on this node)",
    )
    up.add_argument(
        "--no-storage-server",
        action="store_true",
        help="every silo opens --storage itself (SQLite: one machine only) instead of reaching"
        " it through a storage server (always so for a postgresql:// URL)",
    )
    up.add_argument(
        "--direct",
        action="store_true",
        dest="deprecated_direct",
        help="deprecated spelling of --no-storage-server (it is not about --transport)",
    )
    up.add_argument(
        "--transport",
        choices=["direct", "ray"],
        default="direct",
        help="data plane for calls: the silos' own connections (direct, the default) or Ray"
        " actor calls",
    )
    up.add_argument(
        "--tracing-setup",
        default=None,
        metavar="MODULE:FUNCTION",
        help="called once in each silo process before it serves, to configure OpenTelemetry"
        " there (as TracingSettings(setup=...) of Cluster.ray)",
    )
    up.add_argument("--tls-cert", default=None, help="certificate the silos present (PEM)")
    up.add_argument("--tls-key", default=None, help="its private key (PEM)")
    up.add_argument("--tls-ca", default=None, help="CA file clients and silos trust")
    status = commands.add_parser("status", help="show silos, nodes, activations and the view")
    status.add_argument("--address", default="auto", help=ADDRESS_HELP)
    status.add_argument(
        "--name",
        default=None,
        type=deployment_name,
        help="one deployment's silos (default: list the deployments)",
    )
    # (One or the other: --json prints one sample for a script, --watch redraws a table.)
    shown = status.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print the figures as JSON")
    shown.add_argument("--watch", action="store_true", help="redraw every --interval seconds")
    status.add_argument(
        "--interval", type=_interval, default=2.0, help="seconds the rates are measured over"
    )
    down = commands.add_parser("down", help="stop one deployment's silos gracefully")
    down.add_argument("--address", default="auto", help=ADDRESS_HELP)
    down.add_argument(
        "--name", default="default", type=deployment_name, help="the deployment (default: default)"
    )
    add_sagas_parser(commands, deployment_name, ADDRESS_HELP)
    # Its options are the suite's own: `raygrain bench --help` lists them.
    commands.add_parser("bench", help="run the benchmark suite", add_help=False)
    parser.commands = dict(commands.choices)
    return parser
