"""The ``raygrain`` command: its face (``--version``, a status table that fits 100 columns),
and ``up``/``status``/``down`` against the test session's Ray: ``up`` starts a deployment of
long-running silos of its own beside the session's, clients come and go with
``Cluster.connect`` while the silos (and the actors' state) stay, and ``down`` stops them. That
test runs every command and client in a child process, as a user does, and stops the
deployment itself if a command failed before ``down``, so nothing outlives the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import raygrain
from raygrain.runtime.cli import MAX_WIDTH, table_console
from raygrain.runtime.cli._status import render

MAIN = "import sys; from raygrain.runtime.cli import main; sys.exit(main())"


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-c", MAIN, "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"raygrain {raygrain.__version__}"


@pytest.fixture
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal of 100 columns or more (pytest-xdist's workers set COLUMNS to the width of
    the terminal pytest runs in, 80 when that is no terminal)."""
    monkeypatch.setenv("COLUMNS", "120")


@pytest.mark.usefixtures("wide_terminal")
def test_status_table_fits_100_columns_and_aligns() -> None:
    silos = [
        {
            "silo": f"raygrain-silo-{'f' * 56}-{i}-ab12cd3{i}",
            "status": "active",
            "node": "f" * 56,  # a Ray node id
            "activations": 10**i,
            "uptime_s": 600.0,
            "calls_per_s": 1234.5 * i,
            "errors_per_s": 0.0,
            "p99_ms": 2.5,
            "storage_health": "ok",
            "types": ["app.Account", "app.Cart"],
            "version": "0.1.0",
        }
        for i in range(3)
    ]
    silos.append({"silo": "raygrain-silo-dead", "status": "dead", "node": "?", "error": "X"})
    controller = {"ok": True, "answer_ms": 2.0, "view_version": 7}
    console = table_console()
    with console.capture() as captured:
        console.print(render("demo", {"controller": controller, "silos": silos}))
    lines = [line.rstrip() for line in captured.get().splitlines()]
    assert lines[0].startswith("deployment demo: controller ok") and "view version 7" in lines[0]
    assert lines[1].split()[:3] == ["silo", "status", "node"]
    assert all(len(line) <= MAX_WIDTH for line in lines), max(map(len, lines))
    squeezed = "".join("\n".join(lines[3:]).split())  # folded cells, joined again
    for silo in silos:
        assert str(silo["silo"])[-10:] in squeezed  # a long name folds; its end stays
    assert "dead" in squeezed and "unreachable:" in squeezed


@pytest.mark.usefixtures("wide_terminal")
def test_status_table_shows_each_type_whole_on_a_line_of_its_own() -> None:
    # Joined with ", ", the types wrapped mid-name in their narrow column: 'lib.TitleCount'
    # left its comma on a line of its own, 'raygrain.SagaIndex' broke after 'SagaI'.
    types = ["lib.Book", "lib.Borrow", "lib.TitleCount", "raygrain.SagaIndex"]
    silo = {"silo": "raygrain-silo-c7043a5d97ee-0-3fefd0", "status": "active", "node": "f" * 56,
            "activations": 57, "uptime_s": 100.0, "calls_per_s": 0.0, "errors_per_s": 0.0,
            "p99_ms": None, "storage_health": "ok", "types": types, "version": "0.1.0"}  # fmt: skip
    controller = {"ok": True, "answer_ms": 5.0, "view_version": 1}
    console = table_console()
    with console.capture() as captured:
        console.print(render("lib", {"controller": controller, "silos": [silo]}))
    cells = [line.rstrip()[-14:].strip() for line in captured.get().splitlines()[3:]]
    assert cells == ["lib.Book", "lib.Borrow", "lib.TitleCount", "raygrain 0.1.0"], cells


ROOT = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT = 240  # a bound against a hang: startup takes seconds on a quiet machine

# A client that calls inside a span of its own, and prints the trace's id.
_TRACED_CLIENT = """
import asyncio, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from raygrain.runtime import Cluster
from tests.app import BankAccount

trace.set_tracer_provider(TracerProvider())

async def main():
    async with Cluster.connect(sys.argv[1], actors=[BankAccount], name="cli") as cluster:
        with trace.get_tracer("cli-test").start_as_current_span("client") as span:
            await cluster.get(BankAccount, "cli-traced").deposit(1)
    print(span.get_span_context().trace_id)

asyncio.run(main())
"""

_CLIENT = """
import asyncio, sys
from raygrain.runtime import Cluster
from tests.app import BankAccount

async def main():
    async with Cluster.connect(sys.argv[1], actors=[BankAccount], name="cli") as cluster:
        print(await cluster.get(BankAccount, "cli").deposit(int(sys.argv[2])))

asyncio.run(main())
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def _raygrain(*args: str) -> subprocess.CompletedProcess[str]:
    return _run("-c", "import sys; from raygrain.runtime.cli import main; sys.exit(main())", *args)


# On the session's Ray (three nodes, its own "default" deployment): starting a Ray of its own
# for this test cost CI about 12 s.
@pytest.mark.ray
@pytest.mark.slow
def test_up_status_connect_and_down_against_long_running_silos(
    ray_silos: Any, tmp_path: Path
) -> None:
    import asyncio

    import ray

    from raygrain.runtime.ray_host import stop_everything
    from tests.trace_sink import SETUP, SINK_NAME, SINK_NAMESPACE, SpanSink

    address, nodes = ray_silos.address, len(ray_silos.node_ids)
    sink = ray.remote(SpanSink).options(name=SINK_NAME, namespace=SINK_NAMESPACE).remote()
    try:
        up = _raygrain(
            "up", "--address", address, "--actors", "tests.app", "--name", "cli",
            "--storage", f"sqlite:///{tmp_path / 'state.db'}", "--tracing-setup", SETUP,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr[-3000:]
        assert f"deployment 'cli': started {nodes} silo(s) hosting" in up.stdout, up.stdout
        assert "BankAccount" in up.stdout

        listed = _raygrain("status", "--address", address, "--json")
        assert listed.returncode == 0, listed.stderr[-3000:]
        names = [d["name"] for d in json.loads(listed.stdout)["deployments"]]
        assert "cli" in names and "default" in names, names
        status = _raygrain("status", "--address", address, "--name", "cli", "--json")
        assert status.returncode == 0, status.stderr[-3000:]
        silos = json.loads(status.stdout)["silos"]
        assert [s["status"] for s in silos] == ["active"] * nodes, silos

        # Clients come and go; the silos, and the actor's state, stay.
        for amount, balance in ((5, 5), (7, 12)):
            client = _run("-c", _CLIENT, address, str(amount))
            assert client.returncode == 0, client.stderr[-3000:]
            assert client.stdout.strip().splitlines()[-1] == str(balance)

        # --tracing-setup ran in each silo process: a traced call's turn span reaches the sink.
        traced = _run("-c", _TRACED_CLIENT, address)
        assert traced.returncode == 0, traced.stderr[-3000:]
        trace_id = int(traced.stdout.strip().splitlines()[-1])
        deadline = time.monotonic() + 60
        while not any(
            s["trace_id"] == trace_id and s["name"] == "test.BankAccount.deposit"
            for s in ray.get(sink.all.remote())
        ):
            assert time.monotonic() < deadline, "no span of the traced call reached the sink"
            time.sleep(0.1)

        again = _raygrain("up", "--address", address, "--actors", "tests.app", "--name", "cli")
        assert again.returncode != 0 and "already running" in again.stderr

        down = _raygrain("down", "--address", address, "--name", "cli")
        assert down.returncode == 0, down.stderr[-3000:]
        assert f"deployment 'cli': stopped {nodes} silo(s)" in down.stdout
        gone = _raygrain("status", "--address", address, "--name", "cli")
        assert gone.returncode != 0 and "no raygrain deployment named 'cli'" in gone.stderr
    finally:
        ray.kill(sink)
        asyncio.run(stop_everything("cli"))  # (nothing left to stop once 'down' succeeded)


def test_up_spells_storage_and_transport_apart_and_the_old_spelling_still_works(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from raygrain.runtime.cli import main

    with pytest.raises(SystemExit) as done:
        main(["up", "--help"])
    assert done.value.code == 0
    helped = " ".join(capsys.readouterr().out.split())  # (argparse wraps to the terminal)
    assert "--no-storage-server" in helped and "--transport {direct,ray}" in helped
    assert "deprecated spelling of --no-storage-server" in helped
    # Refused later (no such module), so nothing reaches Ray; the old flag is named first.
    assert main(["up", "--actors", "no_such_module_here", "--direct"]) == 2
    assert "--direct is deprecated, use --no-storage-server" in capsys.readouterr().err


def test_bad_arguments_are_one_line_errors_before_anything_reaches_ray(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from raygrain.runtime.cli import main

    for argv, said in (
        (["status", "--interval", "inf"], "'inf' is not a finite number of seconds > 0"),
        (["status", "--watch", "--interval", "nan"], "'nan' is not a finite number"),
        (["status", "--json", "--watch"], "not allowed with argument --json"),
        (["up", "--actors", "tests.app", "--log-level", "bogus"], "'bogus' is no log level"),
        # (A bad name was 'no raygrain deployment named ...', exit 1, from down and sagas.)
        (["down", "--name", "bad name"], "deployment name must be"),
        (["sagas", "--type", "t", "--name", "a/b"], "deployment name must be"),
        (["status", "--name=-x"], "deployment name must be"),
    ):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2, argv
        assert said in capsys.readouterr().err
    # TLS files that are not there: refused before launching (it used to launch, every silo
    # failing to start, and say "started 0 silo(s)").
    missing = str(tmp_path / "nope.pem")
    argv = ["up", "--actors", "tests.app", "--tls-cert", missing, "--tls-key", missing]
    assert main(argv) == 2
    assert f"TLS certificate file {missing!r}: no such file" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    argv = ["up", "--actors", "tests.app", "--tls-cert", str(garbage), "--tls-key", str(garbage)]
    assert main(argv) == 2
    assert "unusable" in capsys.readouterr().err


def test_a_ray_that_answers_but_refuses_us_is_told_apart_from_no_ray() -> None:
    # Ray 2.60 starts `ray start` clusters with token authentication; a shell without its
    # settings connects to a port that answers, then Ray refuses it, saying so only in its
    # own log lines. The one-line error points at the settings rather than at 'ray start'.
    import socket

    from raygrain.runtime.cli._main import _check_reachable, _describe_ray_failure

    with socket.create_server(("127.0.0.1", 0)) as server:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        assert _check_reachable(address) is True
    assert _check_reachable("auto") is False  # (Ray's to resolve)
    refused = _describe_ray_failure(address, ConnectionError("timed out"), listening=True)
    assert "did not accept the connection" in refused and "RAY_AUTH_MODE=token" in refused
    absent = _describe_ray_failure(address, ConnectionError("timed out"))
    assert "start it with 'ray start --head'" in absent


def test_each_command_reports_its_own_unknown_options_and_documents_its_address(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 'raygrain status --nmae x' was reported by the top level ("raygrain: error: ...", under
    # a usage line without status' options), and only 'up --help' said what --address takes.
    from raygrain.runtime.cli import main

    required = {"up": ["--actors", "tests.app"], "sagas": ["--type", "t.Trip"]}
    for command in ("up", "status", "down", "sagas"):
        with pytest.raises(SystemExit) as done:
            main([command, *required.get(command, []), "--nmae", "x"])
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert f"raygrain {command}: error: " in err and "--nmae x" in err, err
        assert f"usage: raygrain {command} " in err
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--address ADDRESS Ray address: host:port, ray://host:10001, or auto" in text, text
        assert "RAY_ADDRESS when set" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    # (Ray's token authentication is on for 'ray start' clusters and off for clients: a
    # client needs RAY_AUTH_MODE=token as well as the token, which the help left out.)
    assert "set RAY_AUTH_MODE=token" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        pytest.param([], "in the storage server's memory: it is lost when", id="server"),
        pytest.param(["--no-storage-server"], "an actor that moves to another silo", id="silos"),
    ],
)
def test_up_with_storage_in_memory_warns_that_the_state_is_not_kept(
    extra: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # 'raygrain up --storage memory://' started, and 'down' then said "their state is
    # durable"; with --no-storage-server every silo had a memory of its own.
    import socket

    from raygrain.runtime.cli import main

    with socket.socket() as probe:  # (a Ray where nothing listens: the command stops there)
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
        argv = ["up", "--actors", "tests.app", "--storage", "memory://", "--address", address]
        assert main([*argv, *extra]) == 3
    err = capsys.readouterr().err
    assert "raygrain up: warning: --storage memory:// keeps the actors' state in " in err
    assert said in err and "use a sqlite:/// file or a postgresql:// database" in err


def test_a_deployment_that_is_not_running_is_named_beside_those_that_are(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 'status --name shpo' and 'sagas --name shpo' said only that no such deployment runs.
    import ray

    from raygrain.runtime import ray_host
    from raygrain.runtime.cli import _main, main

    def no_actor(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("no such actor")

    monkeypatch.setattr(_main, "_connect", lambda address, local_code: None)
    monkeypatch.setattr(ray_host, "list_deployments", lambda: ["shop", "staging"])
    monkeypatch.setattr(ray, "get_actor", no_actor)
    for argv in (["status"], ["down"], ["sagas", "--type", "t.Trip"]):
        assert main([*argv, "--name", "shpo"]) == 1
        err = capsys.readouterr().err
        assert "no raygrain deployment named 'shpo' on this Ray (running: shop, staging)" in err


def test_an_actor_module_not_found_says_where_modules_are_looked_for(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raygrain.runtime.cli import main

    (tmp_path / "needs_a_dependency.py").write_text("import no_such_dependency_here\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # (the command adds the directory)
    assert main(["up", "--actors", "my_missing_actors"]) == 2
    err = capsys.readouterr().err
    assert "No module named 'my_missing_actors' (modules are imported from the current " in err
    assert str(tmp_path) in err
    # A module that is there but misses a dependency: no word about directories.
    assert main(["up", "--actors", "needs_a_dependency"]) == 2
    err = capsys.readouterr().err
    assert "No module named 'no_such_dependency_here'" in err and "current directory" not in err


@pytest.mark.parametrize("command", ["status", "down", "up --actors tests.app"])
def test_the_default_address_follows_ray_address_and_fails_at_once_where_nothing_listens(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # --address defaults to auto, which Ray resolves by RAY_ADDRESS first; only a given
    # host:port was checked, so a RAY_ADDRESS where nothing listened blocked for minutes.
    import socket

    from raygrain.runtime.cli import main

    with socket.socket() as probe:  # a port nothing listens on (bound, never listening)
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
        monkeypatch.setenv("RAY_ADDRESS", address)
        assert main(command.split()) == 3
    err = capsys.readouterr().err
    assert f"cannot connect to Ray at RAY_ADDRESS={address}" in err, err


def test_up_names_the_types_it_hosts_as_calls_and_status_name_them(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 'up' said "hosting BankAccount, ..." (class names) where 'status', errors and
    # 'raygrain sagas --type' use type names ("test.BankAccount").
    from raygrain.runtime import ray_host
    from raygrain.runtime.cli import _main, main

    async def launched(spec: Any, options: Any) -> dict[str, Any]:
        return {"raygrain-silo-n-0-ab12cd": None, "raygrain-controller": None}

    monkeypatch.setattr(_main, "_connect", lambda address, local_code: None)
    monkeypatch.setattr(ray_host, "launch", launched)
    assert main(["up", "--actors", "tests.app", "--name", "shop"]) == 0
    out = capsys.readouterr().out
    assert "deployment 'shop': started 1 silo(s) hosting " in out
    assert "test.BankAccount, " in out and " BankAccount," not in out


@pytest.mark.parametrize(
    ("setup", "said"),
    [
        ("no_such_module_here:install", "is not an importable 'module:function'"),
        ("tests.trace_sink:no_such_function", "is not an importable 'module:function'"),
        ("tests.trace_sink:SETUP", "is not a function"),
        ("install", "must be 'module:function'"),
    ],
)
def test_up_checks_its_tracing_setup_before_reaching_ray(
    setup: str, said: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from raygrain.runtime.cli import _main, main

    monkeypatch.setattr(_main, "_connect", lambda *a, **k: pytest.fail("Ray was reached"))
    assert main(["up", "--actors", "tests.app", "--tracing-setup", setup]) == 2
    err = capsys.readouterr().err
    assert said in err and setup in err, err
    assert len(err.strip().splitlines()) == 1


def test_up_refuses_actor_classes_the_silos_would_refuse_before_reaching_ray(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A state type that cannot be stored launched the deployment, every silo failed to
    # start with a raw traceback in Ray's logs, and only then came the one-line error.
    from raygrain.runtime.cli import _main, main

    (tmp_path / "locked_actors.py").write_text(
        "import asyncio\n"
        "from dataclasses import dataclass, field\n"
        "from raygrain import Actor\n"
        "@dataclass\n"
        "class S:\n"
        "    lock: asyncio.Lock = field(default_factory=asyncio.Lock)\n"
        "class Locked(Actor[S], name='bad.Locked'):\n"
        "    async def ping(self) -> None: ...\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # (the command adds the directory)
    monkeypatch.setattr(_main, "_connect", lambda *a, **k: pytest.fail("Ray was reached"))
    assert main(["up", "--actors", "locked_actors"]) == 2
    err = capsys.readouterr().err
    assert "raygrain up: bad.Locked: its state type S cannot be stored" in err
    assert len(err.strip().splitlines()) == 1


def test_up_hosts_the_subclasses_of_a_generic_actor_base_not_the_base(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/programming-model.md's generic pattern, class Repo(Actor[T], Generic[T]) and
    # class Carts(Repo[Cart]), in a module given to 'raygrain up': the command took Repo
    # for an actor type too, and every silo (now the command) refused it.
    from raygrain.runtime import ray_host
    from raygrain.runtime.cli import _main, main

    (tmp_path / "generic_actors.py").write_text(
        "from dataclasses import dataclass, field\n"
        "from typing import Generic, TypeVar\n"
        "from raygrain import Actor\n"
        "T = TypeVar('T')\n"
        "@dataclass\n"
        "class Cart:\n"
        "    items: list[str] = field(default_factory=list)\n"
        "class Repo(Actor[T], Generic[T]):\n"
        "    async def size(self) -> int:\n"
        "        return 0\n"
        "class Carts(Repo[Cart], name='gen.Carts'):\n"
        "    pass\n"
    )

    async def launched(spec: Any, options: Any) -> dict[str, Any]:
        assert [c.__name__ for c in spec.actor_types] == ["Carts"]
        return {"raygrain-silo-n-0-ab12cd": None}

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # (the command adds the directory)
    monkeypatch.setattr(_main, "_connect", lambda address, local_code: None)
    monkeypatch.setattr(ray_host, "launch", launched)
    assert main(["up", "--actors", "generic_actors"]) == 0, capsys.readouterr().err
    assert "hosting gen.Carts:" in capsys.readouterr().out


def test_up_of_a_package_that_only_imports_its_actors_names_their_modules(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 'raygrain up --actors shopapp', whose __init__ imports Counter from shopapp.actors,
    # said only "no Actor subclasses found in shopapp".
    from raygrain.runtime.cli import main

    (tmp_path / "shopapp").mkdir()
    (tmp_path / "shopapp" / "__init__.py").write_text("from shopapp.actors import Counter\n")
    (tmp_path / "shopapp" / "actors.py").write_text(
        "from raygrain import Actor, Saga\n"  # (the runtime's own bases are not named)
        "class Counter(Actor[int]):\n"
        "    async def add(self, n: int) -> int:\n"
        "        return n\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # (the command adds the directory)
    assert main(["up", "--actors", "shopapp"]) == 2
    err = capsys.readouterr().err
    assert "no Actor subclasses defined in shopapp (only classes defined in a module" in err
    assert "give --actors shopapp.actors)" in err


def test_a_ray_that_refuses_us_is_still_exit_code_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # (ensure_ray now says why itself, as a ConfigurationError: the command keeps exit 3.)
    from raygrain.actors import ConfigurationError
    from raygrain.runtime import ray_host
    from raygrain.runtime.cli import _main, main

    def refuse(address: Any, local_code: Any = None) -> None:
        raise ConfigurationError("Ray at x did not accept the connection") from ConnectionError(
            "Failed to connect to Ray cluster"
        )

    monkeypatch.setattr(_main, "_check_reachable", lambda address, shown=None: True)
    monkeypatch.setattr(ray_host, "ensure_ray", refuse)
    assert main(["status", "--address", "10.1.2.3:6379"]) == 3
    assert "did not accept the connection" in capsys.readouterr().err


@pytest.mark.ray
async def test_ctrl_c_during_up_leaves_no_half_made_deployment(
    ray_silos: Any, tmp_path: Path
) -> None:
    # It used to leave the deployment's controller and standby running (detached), holding
    # the name: 'up' again was refused, and 'down' was needed to clear it.
    import ray

    from raygrain.runtime.ray_host import CONTROLLER_NAME, namespace_of, stop_everything
    from tests.helpers import wait_until

    def named() -> list[str]:
        entries = ray.util.list_named_actors(all_namespaces=True)
        return [e["name"] for e in entries if e.get("namespace") == namespace_of("interrupted")]

    up = subprocess.Popen(
        [sys.executable, "-c", MAIN, "up", "--address", ray_silos.address, "--name", "interrupted",
         "--actors", "tests.slow_import_app", "--storage", f"sqlite:///{tmp_path / 's.db'}"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # (Ctrl-C reaches it even when this test runs where SIGINT is ignored.)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        # Its controller is there, importing the slow module: the launch is under way.
        await wait_until(lambda: CONTROLLER_NAME in named(), "the launch to start", 120)
        up.send_signal(signal.SIGINT)
        _, err = up.communicate(timeout=COMMAND_TIMEOUT)
        assert up.returncode == 130, err[-3000:]
        assert named() == []
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
        await stop_everything("interrupted")


def test_an_actor_module_that_fails_to_import_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A SyntaxError (or any error the module raises as it imports) used to end the command
    # with a traceback and exit code 1.
    from raygrain.runtime.cli import main

    (tmp_path / "broken_actors.py").write_text("def f(:\n")
    (tmp_path / "raising_actors.py").write_text("raise RuntimeError('no config file')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # (the command adds the directory)
    for module, said in (("broken_actors", "SyntaxError"), ("raising_actors", "no config file")):
        assert main(["up", "--actors", module]) == 2
        err = capsys.readouterr().err
        assert f"cannot import actor module {module!r}" in err and said in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
