"""Bad input: each case is a clear, typed error naming what was wrong, and the silo serves on."""

from __future__ import annotations

from typing import Any

import pytest

from raygrain.actors import (
    ActorRef,
    ClusterClosedError,
    ClusterNotStartedError,
    ConfigurationError,
    InvalidArgumentsError,
    MessageTooLargeError,
    RaygrainError,
    RemoteActorError,
    SerializationError,
    UnknownActorTypeError,
    UnknownMethodError,
)
from raygrain.runtime import Cluster
from tests import app
from tests.app import BankAccount, Chain, InsufficientFunds, Unregistered


async def _still_serving(cluster: Cluster) -> None:
    assert await cluster.get(Chain, "health").ping() == "pong from health"


@pytest.mark.parametrize(
    ("make_call", "error", "message"),
    [
        pytest.param(
            lambda c: c.ref("no.such.Type", "k").ping(),
            UnknownActorTypeError,
            "unknown actor type 'no.such.Type'",
            id="unknown-type",
        ),
        pytest.param(
            lambda c: c.get(Chain, "k").no_such_method(),
            UnknownMethodError,
            "test.Chain.no_such_method: no public async method",
            id="unknown-method",
        ),
        pytest.param(
            lambda c: c.get(Chain, "k").invoke("_private"),
            UnknownMethodError,
            "private and dunder",
            id="private-method",
        ),
        pytest.param(
            lambda c: c.ref("test.Chain", "k").invoke("__init__"),
            UnknownMethodError,
            "private and dunder",
            id="dunder-method",
        ),
        pytest.param(
            lambda c: c.get(Chain, "k").on_activate(),
            UnknownMethodError,
            "on_activate",
            id="lifecycle-hook",
        ),
        pytest.param(
            lambda c: c.get(BankAccount, "k").deposit(),
            InvalidArgumentsError,
            "test.BankAccount.deposit: missing a required argument: 'amount'",
            id="too-few-args",
        ),
        pytest.param(
            lambda c: c.get(BankAccount, "k").deposit(1, 2),
            InvalidArgumentsError,
            "too many positional arguments",
            id="too-many-args",
        ),
        pytest.param(
            lambda c: c.get(BankAccount, "k").deposit(1, amont=1),
            InvalidArgumentsError,
            "got an unexpected keyword argument 'amont'",
            id="unknown-keyword",
        ),
        pytest.param(
            lambda c: c.get(Chain, "k").echo(object()),
            SerializationError,
            "arguments of test.Chain.echo: object of type builtins.object",
            id="unserializable-argument",
        ),
        pytest.param(
            lambda c: c.get(Chain, "k").echo(lambda: 1),
            SerializationError,
            "function",
            id="lambda-argument",
        ),
        pytest.param(
            lambda c: c.get(Chain, "k").return_unserializable(),
            SerializationError,
            "result of test.Chain.return_unserializable",
            id="unserializable-result",
        ),
    ],
)
async def test_bad_call_is_a_typed_error_and_the_silo_keeps_serving(
    any_cluster: Cluster, make_call: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace(".", r"\.").replace("(", r"\(")):
        await make_call(any_cluster)
    await _still_serving(any_cluster)


async def test_a_cluster_used_before_it_started_says_to_start_it() -> None:
    cluster = Cluster.local(actors=app.ALL_ACTORS)
    with pytest.raises(ClusterNotStartedError, match=r"cluster.get\(Chain, ...\).*async with"):
        cluster.get(Chain, "a")
    with pytest.raises(ClusterNotStartedError, match="not started"):
        cluster.ref("test.Chain", "a")
    with pytest.raises(ClusterNotStartedError, match=r"cluster.transaction\(\)"):
        async with cluster.transaction():
            pass
    async with cluster:
        assert await cluster.get(Chain, "a").ping() == "pong from a"
    with pytest.raises(ClusterClosedError, match="closed"):
        cluster.get(Chain, "a")


async def test_bad_key_type_is_refused_at_the_reference(cluster: Cluster) -> None:
    with pytest.raises(RaygrainError, match="must be str or int, got float"):
        cluster.get(Chain, 1.5)  # type: ignore[arg-type]
    with pytest.raises(RaygrainError, match="got bool"):
        cluster.get(Chain, True)


async def test_unregistered_class_is_refused_at_get(cluster: Cluster) -> None:
    with pytest.raises(UnknownActorTypeError, match="Unregistered.*not registered"):
        cluster.get(Unregistered, "k")


async def test_user_exception_arrives_with_type_message_and_remote_traceback(
    any_cluster: Cluster, key: Any
) -> None:
    cluster = any_cluster
    account = cluster.get(BankAccount, key("ex"))
    with pytest.raises(ValueError, match="amount must be positive") as info:
        await account.deposit(-5)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert f"test.BankAccount/{key('ex')}.deposit" in notes and "Traceback" in notes
    with pytest.raises(InsufficientFunds) as custom:
        await account.withdraw(10)
    assert (custom.value.needed, custom.value.available) == (10, 0)
    await _still_serving(cluster)


async def test_exception_not_importable_by_the_caller_is_remote_actor_error(
    cluster: Cluster,
) -> None:
    class LocalOnly(Exception):
        pass

    LocalOnly.__module__ = "module_that_does_not_exist"
    app.GATES.clear()

    class Raiser(app.Chain, name="test.Raiser"):
        async def boom(self) -> None:
            raise LocalOnly("only here")

    async with Cluster.local(actors=[Raiser]) as local:
        with pytest.raises(RemoteActorError, match="module_that_does_not_exist.*only here"):
            await local.get(Raiser, "r").boom()


async def test_huge_argument_over_the_limit_is_refused_before_sending() -> None:
    async with Cluster.local(actors=[Chain], max_message_bytes=1024) as cluster:
        with pytest.raises(MessageTooLargeError, match="over the 1024-byte message limit"):
            await cluster.get(Chain, "k").echo(b"x" * 4096)
        assert await cluster.get(Chain, "k").echo(b"x" * 100) == b"x" * 100


async def test_large_payload_within_the_limit_round_trips(any_cluster: Cluster) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB
    assert await any_cluster.get(Chain, "big").echo(blob) == blob


async def test_call_on_a_closed_cluster() -> None:
    cluster = Cluster.local(actors=[Chain])
    async with cluster:
        ref = cluster.get(Chain, "k")
        await ref.ping()
    with pytest.raises(ClusterClosedError, match="closed"):
        await ref.ping()
    with pytest.raises(ClusterClosedError):
        cluster.get(Chain, "k")


async def test_unbound_reference_says_how_to_bind_it() -> None:
    ref = ActorRef.__new__(ActorRef)
    ActorRef.__init__(ref, cluster_free_id())
    with pytest.raises(ClusterClosedError, match="not bound to a cluster"):
        await ref.ping()


def cluster_free_id() -> Any:
    from raygrain.actors import ActorId

    return ActorId("test.Chain", "free")


def test_bad_cluster_settings() -> None:
    with pytest.raises(ConfigurationError, match="silos must be a positive int"):
        Cluster.local(actors=[Chain], silos=0)
    with pytest.raises(ConfigurationError, match="not an Actor subclass"):
        Cluster.local(actors=[int])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="unknown storage URL"):
        Cluster.local(actors=[Chain], storage="mysql://nowhere")


def test_two_classes_with_one_type_name_are_refused() -> None:
    from raygrain.actors import Actor

    class Twin(Actor[None], name="test.Chain"):
        async def ping(self) -> str:
            return "twin"

    with pytest.raises(ConfigurationError, match="share the type name 'test.Chain'"):
        Cluster.local(actors=[Chain, Twin])


def test_bad_actor_class_definitions() -> None:
    from dataclasses import dataclass

    from raygrain.actors import Actor, read_only, transactional

    @dataclass
    class NeedsArgs:
        value: int

    with pytest.raises(ConfigurationError, match="cannot be built with no arguments"):

        class NoDefault(Actor[NeedsArgs]):
            pass

    with pytest.raises(ConfigurationError, match="with_timeout: the name is reserved"):

        class Shadowing(Actor[None]):
            async def with_timeout(self) -> None:  # type: ignore[override]
                pass

    with pytest.raises(ConfigurationError, match="context: the name is reserved"):

        class Replacing(Actor[None]):
            async def context(self) -> int:  # type: ignore[override]
                return 1

    with pytest.raises(ConfigurationError, match="timers: the name is reserved"):

        class KeptForTime(Actor[None]):
            async def timers(self) -> int:
                return 1

    with pytest.raises(ConfigurationError, match="both @read_only and @transactional"):

        class Both(Actor[None]):
            @read_only
            @transactional
            async def m(self) -> None:
                pass
