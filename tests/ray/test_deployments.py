"""Named deployments on one Ray: each has its own silos, controller and storage, serves only its
own actor types, and stopping one (closing its cluster, or `raygrain down --name`) leaves the
others serving. Also Ray's conventions: RAY_ADDRESS, ray:// without the client extra, the CLI's
one-line errors and exit codes, and the log level reaching the silos."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import pytest

from raygrain.actors import (
    Actor,
    ClusterClosedError,
    ConfigurationError,
    SiloUnavailableError,
    UnknownActorTypeError,
    read_only,
)
from raygrain.runtime import Cluster
from tests import app
from tests.helpers import wait_until, without_ray_lines


class Apples(Actor[int], name="test.deployments.Apples"):
    async def add(self, n: int) -> int:
        self.state = (self.state or 0) + n
        return self.state

    @read_only
    async def log_settings(self) -> list[Any]:
        """What the silo hosting this actor was given: its env vars and its logger's level."""
        return [
            os.environ.get("RAYGRAIN_LOG_LEVEL"),
            logging.getLogger("raygrain").level,
            os.environ.get("SHOP_MARK"),
        ]


class Pears(Actor[int], name="test.deployments.Pears"):
    async def add(self, n: int) -> int:
        self.state = (self.state or 0) + n
        return self.state


# -- without Ray ---------------------------------------------------------------------------------


def test_a_cluster_without_a_name_gets_a_unique_one_and_connect_defaults_to_default() -> None:
    first = Cluster.ray(actors=[Apples])
    second = Cluster.ray(actors=[Apples])
    assert first.name and second.name and first.name != second.name
    assert Cluster.ray(actors=[Apples], name="shop").name == "shop"
    assert Cluster.connect(actors=[Apples]).name == "default"


@pytest.mark.parametrize("name", ["", "has space", "-leading", "a/b", "x" * 64], ids=repr)
def test_a_bad_deployment_name_is_refused_before_anything_starts(name: str) -> None:
    with pytest.raises(ConfigurationError, match="deployment name"):
        Cluster.ray(actors=[Apples], name=name)
    with pytest.raises(ConfigurationError, match="deployment name"):
        Cluster.connect(actors=[Apples], name=name)


def test_a_deployments_metrics_carry_its_name_so_two_on_one_ray_keep_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every deployment on Ray labelled its series deployment="default": two deployments with
    # the same actor types (a shop and its staging copy) mixed in every sum by deployment.
    from raygrain.runtime.cli import _main
    from raygrain.runtime.metrics import MetricsSettings
    from raygrain.runtime.ray_host import _deploy

    def label(options: Any) -> str:
        return str(options.setting(MetricsSettings, MetricsSettings()).label)

    assert label(Cluster.ray(actors=[Apples], name="shop")._backend.options) == "shop"  # type: ignore[attr-defined]
    unnamed = Cluster.ray(actors=[Apples])
    assert label(unnamed._backend.options) == unnamed.name  # type: ignore[attr-defined]
    named = MetricsSettings(deployment="mine")
    assert label(Cluster.ray(actors=[Apples], metrics=named)._backend.options) == "mine"  # type: ignore[attr-defined]
    launched: list[Any] = []

    async def launch(spec: Any, options: Any, handles: Any) -> None:
        launched.append(options)

    monkeypatch.setattr(_main, "_connect", lambda address, local_code: None)
    monkeypatch.setattr(_deploy, "_launch", launch)  # (what the launch would start)
    assert _main.main(["up", "--actors", "tests.app", "--name", "staging"]) == 0
    assert [label(options) for options in launched] == ["staging"]


def test_log_level_and_runtime_env_reach_every_actor_of_the_deployment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from raygrain.runtime.ray_host import RayLaunch

    monkeypatch.setenv("RAYGRAIN_LOG_LEVEL", "info")
    env = RayLaunch((Apples,), runtime_env={"env_vars": {"A": "1"}}).actor_runtime_env()
    assert env == {"env_vars": {"A": "1", "RAYGRAIN_LOG_LEVEL": "info"}}
    explicit = RayLaunch((Apples,), log_level="debug").actor_runtime_env()
    assert explicit == {"env_vars": {"RAYGRAIN_LOG_LEVEL": "debug"}}


def test_no_address_means_ray_address_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from raygrain.runtime.ray_host import _launcher, ensure_ray

    seen: list[Any] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.append(kwargs["address"]))
    monkeypatch.setattr(_launcher, "_check_listening", lambda address: None)
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert ensure_ray(None) is False  # joined, not started
    monkeypatch.delenv("RAY_ADDRESS")
    assert ensure_ray(None) is True
    assert seen == ["10.1.2.3:6379", "local"]


def test_connect_to_an_address_where_nothing_listens_fails_at_once(tmp_path: Any) -> None:
    # Ray retries such an address for minutes, blocking the caller's event loop, before it
    # raises its own ConnectionError; the CLI already checked first. (In a process of its
    # own: this one may have joined the session's Ray, and then never calls ray.init.)
    import socket
    import subprocess
    import sys

    program = (
        "import asyncio, sys\n"
        "from raygrain import Cluster, ClusterUnreachableError, ConfigurationError\n"
        "try:\n"
        "    asyncio.run(Cluster.connect(sys.argv[1]).start())\n"
        "except ConnectionError as exc:  # what Ray raises, after minutes\n"
        "    assert isinstance(exc, ClusterUnreachableError), type(exc)\n"
        "    assert isinstance(exc, ConfigurationError), type(exc)\n"
        "    print(exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    with socket.socket() as probe:  # a port nothing listens on (bound, never listening)
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-c", program, address],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,  # (a bound against the minutes Ray would take)
        )
    assert f"cannot connect to Ray at {address}" in done.stdout, done.stderr[-2000:]


def test_a_ray_client_address_without_the_client_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    import ray

    from raygrain.runtime.ray_host import ensure_ray

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n: None if n == "grpc" else real_find_spec(n)
    )
    with pytest.raises(ConfigurationError, match=r"raygrain\[client\]"):
        ensure_ray("ray://head:10001")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("auth", "RAY_AUTH_MODE"),
        ("connection", "ray start --head"),
    ],
)
def test_cli_ray_failures_are_one_line_with_the_fix_and_exit_code_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: str, expected: str
) -> None:
    import ray.exceptions

    from raygrain.runtime import ray_host
    from raygrain.runtime.cli import main

    def refuse(*args: Any, **kwargs: Any) -> bool:
        if error == "auth":
            raise ray.exceptions.AuthenticationError("InvalidAuthToken: token mismatch")
        raise ConnectionError("Could not find any running Ray instance.\nmore\nlines")

    monkeypatch.setattr(ray_host, "ensure_ray", refuse)
    assert main(["status", "--address", "auto"]) == 3
    err = without_ray_lines(capsys.readouterr().err)
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["--debug", "down", "--address", "auto"]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_cli_with_nothing_listening_at_the_address_fails_at_once_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    from raygrain.runtime.cli import main

    with socket.socket() as probe:  # a port nothing listens on (bound, never listening)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        assert main(["status", "--address", f"127.0.0.1:{port}"]) == 3
    err = without_ray_lines(capsys.readouterr().err)
    assert f"cannot connect to Ray at 127.0.0.1:{port}" in err and "ray start --head" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_help_documents_exit_codes_and_deployment_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from raygrain.runtime.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "exit codes" in text and "RAY_AUTH_MODE" in text and "--name" in text


# -- on Ray --------------------------------------------------------------------------------------


@pytest.mark.ray
async def test_two_deployments_serve_their_own_types_and_closing_one_leaves_the_other(
    ray_silos: Any, tmp_path: Any
) -> None:
    from raygrain.runtime.ray_host import find_silos

    default_silos = find_silos("default")
    apples = Cluster.ray(actors=[Apples], name="iso-apples", storage=f"sqlite:///{tmp_path}/a.db")
    pears = Cluster.ray(actors=[Pears], name="iso-pears", storage=f"sqlite:///{tmp_path}/p.db")
    async with apples, pears:
        assert await apples.get(Apples, "k").add(2) == 2
        assert await pears.get(Pears, "k").add(5) == 5
        # Each deployment's silos host only its own types: no joining the other's silos.
        with pytest.raises(UnknownActorTypeError):
            await apples.ref("test.deployments.Pears", "k").add(1)
        with pytest.raises(UnknownActorTypeError):
            await pears.ref("test.deployments.Apples", "k").add(1)
        # A client of a deployment stops nothing when it closes.
        async with Cluster.connect(ray_silos.address, actors=[Pears], name="iso-pears") as c:
            assert await c.get(Pears, "k").add(1) == 6
        assert await pears.get(Pears, "k").add(1) == 7
        await apples.aclose()
        assert find_silos("iso-apples") == []
        assert await pears.get(Pears, "k").add(1) == 8
        assert find_silos("iso-pears")
    assert find_silos("iso-pears") == []
    assert find_silos("default") == default_silos  # the session's deployment was not touched


@pytest.mark.ray
async def test_a_second_launch_under_a_running_name_is_refused(
    ray_silos: Any, tmp_path: Any
) -> None:
    with pytest.raises(ConfigurationError, match="already running"):
        async with Cluster.ray(actors=[Apples], name="default", storage="memory://"):
            pass
    async with Cluster.connect(ray_silos.address, name="default") as session:
        assert await session.stats()  # the session's deployment still serves
        # A client given no classes (they are optional) still calls with one: it joins the
        # client's registry; the deployment checks the call (it used to be refused here).
        assert await session.get(app.Chain, "no-classes-given").ping() == (
            "pong from no-classes-given"
        )
        with pytest.raises(UnknownActorTypeError, match="test.Unregistered"):
            await session.get(app.Unregistered, "k").ping()  # not hosted there


@pytest.mark.ray
async def test_down_with_a_name_stops_only_that_deployment_and_status_lists_them(
    ray_silos: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from raygrain.runtime.cli import main
    from raygrain.runtime.kernel import SiloOptions
    from raygrain.runtime.ray_host import RayLaunch, find_silos, launch, stop_everything

    for name, kind in (("cli-a", Apples), ("cli-b", Pears)):
        spec = RayLaunch(
            (kind,), storage=f"sqlite:///{tmp_path}/{name}.db", detached=True, name=name
        )
        await launch(spec, SiloOptions())
    try:
        assert await asyncio.to_thread(main, ["status", "--address", ray_silos.address]) == 0
        listing = capsys.readouterr().out
        assert "cli-a" in listing and "cli-b" in listing and "default" in listing
        down = ["down", "--address", ray_silos.address, "--name", "cli-a"]
        assert await asyncio.to_thread(main, down) == 0
        assert find_silos("cli-a") == []
        assert await asyncio.to_thread(main, down) == 1  # nothing of that name any more
        async with Cluster.connect(ray_silos.address, actors=[Pears], name="cli-b") as b:
            assert await b.get(Pears, "k").add(3) == 3
        async with Cluster.connect(ray_silos.address, actors=[Apples], name="default") as c:
            assert await c.stats()
    finally:
        await stop_everything("cli-a")
        await stop_everything("cli-b")


@pytest.mark.ray
async def test_the_log_level_and_runtime_env_reach_the_silos(ray_silos: Any, tmp_path: Any) -> None:
    async with Cluster.ray(
        actors=[Apples],
        storage=f"sqlite:///{tmp_path}/l.db",
        log_level="debug",
        runtime_env={"env_vars": {"SHOP_MARK": "from-runtime-env"}},
    ) as cluster:
        env, level, mark = await cluster.get(Apples, "log").log_settings()
    assert env == "debug"
    assert level == logging.DEBUG
    assert mark == "from-runtime-env"


def _named_in(deployment: str) -> list[str]:
    import ray

    from raygrain.runtime.ray_host import namespace_of

    namespace = namespace_of(deployment)
    entries = ray.util.list_named_actors(all_namespaces=True)
    return sorted(e["name"] for e in entries if e.get("namespace") == namespace)


@pytest.mark.ray
async def test_a_name_being_launched_is_refused_to_a_second_launch_that_leaves_it_serving(
    ray_silos: Any, tmp_path: Any
) -> None:
    # The second launch starts while the first has no silo yet: it used to join the first's
    # controller (its own actor types and store ignored), report success, and stop the first
    # deployment when it closed.
    first = Cluster.ray(actors=[Apples], name="taken", storage=f"sqlite:///{tmp_path}/1.db")
    second = Cluster.ray(actors=[Pears], name="taken", storage=f"sqlite:///{tmp_path}/2.db")
    try:
        started = await asyncio.gather(first.start(), second.start(), return_exceptions=True)
        assert started[0] is first, started
        assert isinstance(started[1], ConfigurationError), started
        assert "already running (or starting)" in str(started[1])
        await second.aclose()
        assert await first.get(Apples, "k").add(1) == 1  # closing the refused one stopped nothing
    finally:
        await first.aclose()
        await second.aclose()
    assert _named_in("taken") == []


@pytest.mark.ray
async def test_a_launch_whose_actor_module_ray_cannot_import_says_so_and_leaves_nothing(
    ray_silos: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Importable here (on this process's path), not on Ray's workers (no runtime_env ships
    # it): the launch used to fail with Ray's ActorDiedError and its traceback, and left the
    # deployment's standby controller running, holding the name.
    (tmp_path / "only_here_app.py").write_text(
        "from raygrain import Actor\n\n"
        "class OnlyHere(Actor[int], name='test.deployments.OnlyHere'):\n"
        "    async def add(self, n: int) -> int:\n"
        "        return n\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from only_here_app import OnlyHere  # type: ignore[import-not-found]

    cluster = Cluster.ray(actors=[OnlyHere], name="unshipped", storage="memory://")
    with pytest.raises(ConfigurationError, match="cannot import module 'only_here_app'"):
        await cluster.start()
    assert _named_in("unshipped") == []
    with pytest.raises(ClusterClosedError):
        cluster.get(OnlyHere, "k")


@pytest.mark.ray
async def test_a_launch_whose_actor_module_fails_to_import_on_the_workers_says_so(
    ray_silos: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # There but failing on Ray's workers (a dependency missing on the nodes): the launch
    # raised Ray's ActorDiedError, and 'raygrain up' died with its traceback (exit code 1).
    monkeypatch.setenv("RAYGRAIN_TEST_DRIVER_ONLY", "1")
    from tests.ray._imports_only_in_the_driver import DriverOnly

    cluster = Cluster.ray(actors=[DriverOnly], name="unloadable", storage="memory://")
    with pytest.raises(ConfigurationError, match="driver_only_dependency is not installed"):
        await cluster.start()
    assert _named_in("unloadable") == []


@pytest.mark.ray
async def test_a_client_of_a_deployment_taken_down_gets_a_typed_error_at_once(
    ray_silos: Any, tmp_path: Any
) -> None:
    from raygrain.runtime.ray_host import stop_everything

    deployment = Cluster.ray(actors=[Apples], name="gone", storage=f"sqlite:///{tmp_path}/g.db")
    client = Cluster.connect(ray_silos.address, actors=[Apples], name="gone")
    async with deployment, client:
        assert await client.get(Apples, "k").add(1) == 1
        await stop_everything("gone")  # raygrain down --name gone
        membership = client._backend.membership  # type: ignore[attr-defined]
        await wait_until(lambda: not membership.view.active(), "the client's view to empty")
        # (It used to raise the ring's bare LookupError.)
        with pytest.raises(SiloUnavailableError, match="no live silo"):
            await client.get(Apples, "k").add(1)


@pytest.mark.ray
async def test_a_client_follows_its_deployment_brought_up_again_under_the_name(
    ray_silos: Any, tmp_path: Any
) -> None:
    # It used to keep polling the first deployment's dead controller for ever (a warning
    # twice a second), its calls failing though the deployment was back. The second one keeps
    # another store: its views are numbered from the start again, and its direct plane has
    # another secret.
    first = Cluster.ray(actors=[Apples], name="again", storage=f"sqlite:///{tmp_path}/1.db")
    await first.start()
    try:
        async with Cluster.connect(ray_silos.address, actors=[Apples], name="again") as client:
            assert await client.get(Apples, "k").add(1) == 1
            await first.aclose()
            async with Cluster.ray(
                actors=[Apples], name="again", storage=f"sqlite:///{tmp_path}/2.db"
            ):

                async def served() -> bool:
                    try:
                        return await client.get(Apples, "k").add(5) == 5
                    except SiloUnavailableError:
                        return False

                await wait_until(served, "the client to reach the deployment brought up again")
    finally:
        await first.aclose()


@pytest.mark.ray
async def test_a_deployment_whose_program_was_killed_launches_again_on_its_store(
    ray_silos: Any, tmp_path: Any
) -> None:
    # Its program killed (SIGKILL: no close), a deployment's silos stop themselves, and its
    # stored view still lists them as active: the next launch under the name, on the same
    # store, counted them as live on every node, started none and failed ("no silo started").
    import ray

    from raygrain.runtime.ray_host import namespace_of, stop_everything

    storage = f"sqlite:///{tmp_path}/killed.db"
    first = Cluster.ray(actors=[Apples], name="killed", storage=storage)
    await first.start()
    try:
        assert await first.get(Apples, "k").add(2) == 2
        namespace = namespace_of("killed")
        for name in _named_in("killed"):  # (as if the program and its silos were gone)
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
        await wait_until(lambda: _named_in("killed") == [], "the killed actors to be gone")
        async with Cluster.ray(actors=[Apples], name="killed", storage=storage) as again:
            assert await again.get(Apples, "k").add(3) == 5  # (the state was kept)
    finally:
        await first.aclose()
        await stop_everything("killed")


@pytest.mark.ray
async def test_down_stops_a_deployment_whose_launch_was_killed_half_way(
    ray_silos: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # 'raygrain up' killed (SIGKILL: nothing can undo it) after its storage server and before
    # its controller: the storage server keeps the name ('up' again is refused), and 'down'
    # said there was no such deployment, for it looked for a controller only.
    from raygrain.runtime.cli import main
    from raygrain.runtime.ray_host import STORAGE_NAME, namespace_of, stop_everything
    from raygrain.runtime.ray_host._actors import StorageServerActor

    server = StorageServerActor.options(  # type: ignore[attr-defined]
        name=STORAGE_NAME, namespace=namespace_of("halfmade"), lifetime="detached"
    ).remote(f"sqlite:///{tmp_path}/h.db")
    try:
        await server.execute.remote(b"\x90")
        listing = ["status", "--address", ray_silos.address, "--json"]
        assert await asyncio.to_thread(main, listing) == 0
        rows = json.loads(capsys.readouterr().out)["deployments"]
        assert {"name": "halfmade", "error": "no controller"} in rows
        # Its own status says so too (it said no such deployment was running).
        one = ["status", "--address", ray_silos.address, "--name", "halfmade"]
        assert await asyncio.to_thread(main, one) == 1
        said = capsys.readouterr().err
        assert "has no controller" in said and "raygrain down --name halfmade" in said, said
        down = ["down", "--address", ray_silos.address, "--name", "halfmade"]
        assert await asyncio.to_thread(main, down) == 0
        assert _named_in("halfmade") == []
    finally:
        await stop_everything("halfmade")


def test_auto_follows_ray_address_and_fails_at_once_where_nothing_listens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ray's "auto" reads RAY_ADDRESS first; with it naming a port where nothing listened,
    # Cluster.connect("auto") (and 'raygrain status', whose --address is auto) blocked for
    # minutes while Ray retried: only an explicit host:port was checked.
    import socket

    import ray

    from raygrain.runtime.ray_host import ensure_ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail("Ray was asked to connect"))
    with socket.socket() as probe:  # a port nothing listens on (bound, never listening)
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
        monkeypatch.setenv("RAY_ADDRESS", address)
        with pytest.raises(ConfigurationError, match=f"at RAY_ADDRESS={address} "):
            ensure_ray("auto")


def test_a_ray_that_refuses_the_connection_is_a_configuration_error_saying_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A program's Cluster.connect to a 'ray start' cluster (token authentication on) without
    # RAY_AUTH_MODE=token got Ray's builtin ConnectionError "Failed to connect to Ray
    # cluster at ...", which names neither the cause nor the fix (the CLI said both).
    import ray

    from raygrain.runtime.ray_host import _launcher, ensure_ray

    def refuse(**kwargs: Any) -> None:
        raise ConnectionError(f"Failed to connect to Ray cluster at {kwargs['address']}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(_launcher, "_check_listening", lambda address, source="": None)
    with pytest.raises(ConfigurationError, match="did not accept the connection") as refused:
        ensure_ray("10.1.2.3:6379")
    assert "set RAY_AUTH_MODE=token" in str(refused.value)
    assert isinstance(refused.value.__cause__, ConnectionError)
    with pytest.raises(ConnectionError):  # (starting a Ray of its own: not a refusal)
        ensure_ray(None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigurationError, match="start it with 'ray start --head'") as absent:
        ensure_ray("auto")  # (no Ray found: nothing to blame on credentials)
    assert "RAY_AUTH_MODE" not in str(absent.value)
