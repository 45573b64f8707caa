"""Bad input: each case is a clear, typed error naming what was wrong, and the silo serves on."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from raygrain.actors import (
    Actor,
    ActorRef,
    ClusterClosedError,
    ClusterNotStartedError,
    ConfigurationError,
    DeactivationReason,
    InvalidArgumentsError,
    MessageTooLargeError,
    RaygrainError,
    RemoteActorError,
    SerializationError,
    UnknownActorTypeError,
    UnknownMethodError,
    call_timeout,
)
from raygrain.runtime import Cluster, FailureDetection, TransactionSettings
from tests import app
from tests.app import BankAccount, Chain, InsufficientFunds, Unregistered
from tests.helpers import check_oversized_messages


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
            lambda c: c.get(Chain, "k").describe(),
            UnknownMethodError,
            "test.Chain.describe: a plain 'def' method cannot be called from outside; make it "
            "'async def'",
            id="plain-def-method",
        ),
        pytest.param(
            # (It is 'async def': being told to make it so did not help.)
            lambda c: c.get(Chain, "k").stream_of(),
            UnknownMethodError,
            "test.Chain.stream_of: an async generator method cannot be called: a call returns "
            "one value; return a list instead",
            id="async-generator-method",
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
            lambda c: c.ref("test.Chain", "k").invoke(42),
            UnknownMethodError,
            "a method is named by a str, got 42",
            id="method-name-not-a-str",
        ),
        pytest.param(
            # (A keyword argument named method reaches the actor: invoke's own is positional.)
            lambda c: c.ref("test.Chain", "k").invoke("ping", method="x"),
            InvalidArgumentsError,
            "unexpected keyword argument 'method'",
            id="keyword-named-method",
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
            # bind() alone would say 'amount' is missing: the misspelt keyword is the error.
            lambda c: c.get(BankAccount, "k").deposit(amt=1),
            InvalidArgumentsError,
            "test.BankAccount.deposit: got an unexpected keyword argument 'amt'",
            id="misspelt-keyword",
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
        pytest.param(
            lambda c: c.get(app.Recorder, "k").fire(),
            InvalidArgumentsError,
            "test.Recorder.fire: missing a required argument: 'tag'",
            id="one-way-too-few-args",
        ),
        pytest.param(
            lambda c: c.get(app.Recorder, "k").fire("a", "b"),
            InvalidArgumentsError,
            "too many positional arguments",
            id="one-way-too-many-args",
        ),
        pytest.param(
            lambda c: c.get(app.Recorder, "k").fire(object()),
            SerializationError,
            "arguments of test.Recorder.fire",
            id="one-way-unserializable-argument",
        ),
    ],
)
async def test_bad_call_is_a_typed_error_and_the_silo_keeps_serving(
    any_cluster: Cluster, make_call: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace(".", r"\.").replace("(", r"\(")):
        await make_call(any_cluster)
    await _still_serving(any_cluster)


async def test_calls_of_unknown_method_names_leave_nothing_behind(cluster: Cluster) -> None:
    # (A caller kept what it learnt of every (type, method) it was asked for, a name that no
    # method has included: a gateway passing its users' method names on grew without bound.)
    chain = cluster.get(Chain, "names")
    for index in range(200):
        with pytest.raises(UnknownMethodError):
            await chain.invoke(f"no_such_method_{index}")
        with pytest.raises(UnknownMethodError):
            await chain.call_method_of("other", f"no_such_method_{index}")
    callers = [cluster._caller, *(silo.caller for silo in cluster.silos)]
    assert max(len(caller._facts) for caller in callers) < 10
    await _still_serving(cluster)


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
    # The key types users of Orleans reach for first: the message says what to write instead.
    with pytest.raises(RaygrainError, match=r"got UUID \(use str\(key\)"):
        cluster.get(Chain, uuid.uuid4())  # type: ignore[arg-type]
    with pytest.raises(RaygrainError, match="got tuple .a compound key"):
        cluster.get(Chain, ("tenant", 7))  # type: ignore[arg-type]


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


class _Declined(Exception):
    """Its ``__init__`` takes other arguments than it passes on to ``Exception``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"declined {code}: {reason}")
        self.code = code
        self.reason = reason


class _Coded(Exception):
    """Built again from ``args`` alone, its ``code`` would be the default."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class _Fixed(Exception):
    """Takes no arguments and passes a fixed text on: ``cls(*args)`` fails, and it has no
    attributes to restore."""

    def __init__(self) -> None:
        super().__init__("order rejected: out of stock")


class _NeedsInit(Exception):
    """Its ``__str__`` needs what its ``__init__`` sets, in an attribute that is not sent."""

    def __init__(self, code: int) -> None:
        super().__init__()
        self._code = code

    def __str__(self) -> str:
        return f"code {self._code}"


class _Unprintable(Exception):
    def __str__(self) -> str:
        return f"failed: {self.detail}"  # type: ignore[attr-defined]  # (the user's typo)


class _Raises(Chain, name="test.Raises"):
    async def declined(self) -> None:
        raise _Declined(7, "card expired")

    async def coded(self) -> None:
        raise _Coded("nope", code=42)

    async def unprintable(self) -> None:
        raise _Unprintable()

    async def fixed(self) -> None:
        raise _Fixed()

    async def needs_init(self) -> None:
        raise _NeedsInit(7)

    async def missing_file(self) -> None:
        open("/nonexistent-raygrain-dir/orders.csv")  # noqa: SIM115

    async def renamed(self) -> None:
        raise OSError(18, "Invalid cross-device link", "/a/x", None, b"/b/y")

    async def exits(self) -> None:
        raise SystemExit(3)

    async def chained(self) -> None:
        try:
            {}["order-7"]
        except KeyError as exc:
            raise LookupError("no such order") from exc


class _ExitsAsItActivates(Chain, name="test.ExitsAsItActivates"):
    async def on_activate(self) -> None:
        if not EXITED:
            EXITED.append(True)
            raise SystemExit(5)


EXITED: list[bool] = []


async def test_user_exceptions_arrive_with_their_type_and_attributes() -> None:
    """As pickle rebuilds an exception: its type, then its attributes (``cls(*args)`` alone
    failed for ``_Declined`` and left ``_Coded.code`` at its default)."""
    app.GATES.clear()
    async with Cluster.local(actors=[_Raises]) as local:
        actor = local.get(_Raises, "r")
        with pytest.raises(_Declined) as declined:
            await actor.declined()
        assert (declined.value.code, declined.value.reason) == (7, "card expired")
        assert str(declined.value) == "declined 7: card expired"
        with pytest.raises(_Coded) as coded:
            await actor.coded()
        assert coded.value.code == 42
        with pytest.raises(_Fixed) as fixed:
            await actor.fixed()
        assert str(fixed.value) == "order rejected: out of stock"
        # (Made without its __init__, its str would fail: it arrives as what it was.)
        with pytest.raises(RemoteActorError, match="_NeedsInit.*code 7"):
            await actor.needs_init()


async def test_an_os_error_arrives_with_the_files_it_names() -> None:
    """``filename`` and ``filename2`` are kept beside an ``OSError``'s ``args``: they were
    lost, and its message with them."""
    app.GATES.clear()
    async with Cluster.local(actors=[_Raises]) as local:
        actor = local.get(_Raises, "r")
        with pytest.raises(FileNotFoundError) as missing:
            await actor.missing_file()
        assert missing.value.filename == "/nonexistent-raygrain-dir/orders.csv"
        assert str(missing.value) == (
            "[Errno 2] No such file or directory: '/nonexistent-raygrain-dir/orders.csv'"
        )
        with pytest.raises(OSError) as renamed:
            await actor.renamed()
        assert (renamed.value.errno, renamed.value.filename, renamed.value.filename2) == (
            18,
            "/a/x",
            b"/b/y",
        )
        assert renamed.value.args == (18, "Invalid cross-device link")


async def test_an_exception_raised_from_another_arrives_with_its_cause() -> None:
    """``raise A from B`` in an actor reached the caller without ``__cause__``, directly and
    through a second actor that let it pass."""
    app.GATES.clear()
    async with Cluster.local(actors=[_Raises], silos=2) as local:
        with pytest.raises(LookupError, match="no such order") as raised:
            await local.get(_Raises, "r").chained()
        assert isinstance(raised.value.__cause__, KeyError)
        with pytest.raises(LookupError) as relayed:
            await local.get(_Raises, "s").relay(local.get(_Raises, "r"), "chained")
        assert isinstance(relayed.value.__cause__, KeyError)


async def test_an_exception_whose_str_fails_still_reaches_the_caller() -> None:
    """Encoding the error called ``str(exc)``, which raised: the caller got no answer and
    waited out its whole deadline."""
    app.GATES.clear()
    async with Cluster.local(actors=[_Raises], default_timeout=60) as local:
        with pytest.raises(_Unprintable):
            await asyncio.wait_for(local.get(_Raises, "r").unprintable(), 30)
        assert await local.get(_Raises, "r").ping() == "pong from r"


@pytest.mark.parametrize("active", [False, True], ids=["activating", "active"])
async def test_system_exit_in_a_method_is_that_calls_failure(active: bool) -> None:
    """A method raising ``SystemExit`` stopped the silo's event loop (a turn that activates
    the actor runs on the silo's task) or reached the caller as itself. (A KeyboardInterrupt
    goes on as it is: it may be a Ctrl-C.)"""
    app.GATES.clear()
    async with Cluster.local(actors=[_Raises]) as local:
        actor = local.get(_Raises, "r")
        if active:
            assert await actor.ping() == "pong from r"
        with pytest.raises(RemoteActorError, match=r"builtins\.SystemExit"):
            await actor.exits()
        assert await actor.ping() == "pong from r"


async def test_system_exit_in_on_activate_is_that_activations_failure() -> None:
    app.GATES.clear()
    EXITED.clear()
    async with Cluster.local(actors=[_ExitsAsItActivates]) as local:
        actor = local.get(_ExitsAsItActivates, "x")
        with pytest.raises(RemoteActorError, match=r"on_activate raised SystemExit"):
            await actor.ping()
        assert await actor.ping() == "pong from x"  # activated again


class _Aborted(BaseException):
    """Not an ``Exception`` (as pytest's ``Failed``, or a library's own cancellation)."""


class _Counts(Actor[int], name="test.Counts"):
    async def on_activate(self) -> None:
        if self.context.key == "fails-activating" and not EXITED:
            EXITED.append(True)
            raise _Aborted("on_activate gave up")

    async def add_then_abort(self) -> None:
        self.state += 1
        raise _Aborted("gave up")

    async def count(self) -> int:
        return self.state


@pytest.mark.parametrize("active", [False, True], ids=["activating", "active"])
async def test_a_base_exception_from_a_method_is_that_calls_failure(active: bool) -> None:
    """A method raising a ``BaseException`` that is no ``Exception`` (nor an exit) sent no
    answer: the caller waited out its whole deadline (or, the turn started in its stack, got
    it raised in its own task), and the state change stayed in memory, to be stored with the
    next changing turn. It is the call's failure like any other: rolled back, sent back."""
    async with Cluster.local(actors=[_Counts], default_timeout=60) as local:
        actor = local.get(_Counts, "c")
        if active:
            assert await actor.count() == 0
        with pytest.raises(_Aborted, match="gave up"):
            await asyncio.wait_for(actor.add_then_abort(), 30)
        assert await actor.count() == 0  # rolled back
        assert await actor.count() == 0


async def test_a_base_exception_from_on_activate_is_that_activations_failure() -> None:
    EXITED.clear()
    async with Cluster.local(actors=[_Counts], default_timeout=60) as local:
        actor = local.get(_Counts, "fails-activating")
        with pytest.raises(_Aborted, match="on_activate gave up"):
            await asyncio.wait_for(actor.count(), 30)
        assert await actor.count() == 0  # activated again


class _ExitsAsItDeactivates(Chain, name="test.ExitsAsItDeactivates"):
    async def on_deactivate(self, reason: DeactivationReason) -> None:
        raise SystemExit(6)

    async def leave(self) -> None:
        self.context.deactivate_on_idle()


async def test_system_exit_in_on_deactivate_is_that_deactivations_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``on_deactivate`` runs as a task, where a ``SystemExit`` stopped the silo's event loop
    (here the test's own): the program exited because one actor's hook asked."""
    caplog.set_level(logging.WARNING, logger="raygrain")
    app.GATES.clear()
    async with Cluster.local(actors=[_ExitsAsItDeactivates]) as local:
        actor = local.get(_ExitsAsItDeactivates, "x")
        await actor.leave()
        await asyncio.sleep(0.1)  # (the deactivation runs; before, the loop stopped here)
        assert await actor.ping() == "pong from x"  # activated again
    assert "on_deactivate raised SystemExit" in caplog.text


async def test_oversized_arguments_and_results_are_refused() -> None:
    async with Cluster.local(actors=[Chain], max_message_bytes=1024) as cluster:
        await check_oversized_messages(cluster, 1024)
        with pytest.raises(MessageTooLargeError, match="result of test.Chain.make_bytes"):
            await cluster.get(Chain, "k").make_bytes(4096)
        await _still_serving(cluster)


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


def _class_with(**options: Any) -> Any:
    from raygrain.actors import Actor

    class Configured(Actor[None], **options):
        async def ping(self) -> str:
            return "pong"

    return Configured


def _ref() -> ActorRef:
    return ActorRef(cluster_free_id())


NAN = float("nan")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        # per reference and per method
        (lambda: _ref().with_timeout(0), "with_timeout of test.Chain/free must be a positive"),
        (lambda: _ref().with_timeout(-1), "got -1"),
        (lambda: _ref().with_timeout(NAN), "got nan"),
        (lambda: _ref().with_timeout("5"), "got '5'"),
        (lambda: _ref().with_timeout(True), "got True"),
        (lambda: call_timeout(0), "call_timeout must be a positive number of seconds, got 0"),
        (lambda: call_timeout(NAN), "call_timeout .* got nan"),
        # class options
        (lambda: _class_with(name=""), "name= must be a non-empty string"),
        (lambda: _class_with(idle_timeout=0), "idle_timeout must be a positive"),
        (lambda: _class_with(idle_timeout="10"), "idle_timeout .* got '10'"),
        (lambda: _class_with(max_local_workers=0), "max_local_workers must be an int >= 1"),
        (lambda: _class_with(max_local_workers=2.5), "max_local_workers .* got 2.5"),
        (lambda: _class_with(persistence="sometimes"), "persistence must be one of"),
        (lambda: _class_with(reentrant="yes"), "reentrant must be a bool, got 'yes'"),
        (lambda: _class_with(stateless_worker=1), "stateless_worker must be a bool, got 1"),
        # cluster settings
        (
            lambda: Cluster.local([Chain], default_timeout=0),
            "default_timeout must be a positive number, got 0",
        ),
        (lambda: Cluster.local([Chain], default_timeout=NAN), "default_timeout .* got nan"),
        (lambda: Cluster.local([Chain], default_idle_timeout=-1), "default_idle_timeout"),
        (lambda: Cluster.local([Chain], collection_period=True), "collection_period .* True"),
        (lambda: Cluster.local([Chain], max_message_bytes=0), "max_message_bytes must be"),
        (lambda: Cluster.local([Chain], deactivation_timeout="1"), "deactivation_timeout"),
        (lambda: Cluster.local([Chain], silos=1.5), "silos must be a positive int"),
        (lambda: Cluster.local([Chain], storage="nowhere"), "storage URL"),
        (lambda: Cluster.connect("auto", [Chain], default_timeout=-1), "default_timeout"),
        # capability settings
        (lambda: TransactionSettings(lock_timeout=0), "TransactionSettings.lock_timeout"),
        (lambda: TransactionSettings(lease=-1), "TransactionSettings.lease"),
        (lambda: TransactionSettings(decision_timeout=NAN), "TransactionSettings.decision"),
        (lambda: TransactionSettings(wound_after="x"), "TransactionSettings.wound_after"),
        (lambda: FailureDetection(probe_period=0), "FailureDetection.probe_period"),
        (lambda: FailureDetection(probe_timeout=-1), "FailureDetection.probe_timeout"),
        (lambda: FailureDetection(missed_probes=0), "FailureDetection.missed_probes"),
        (lambda: FailureDetection(missed_probes=1.5), "FailureDetection.missed_probes"),
    ],
    ids=lambda value: value[:40] if isinstance(value, str) else "_",
)
def test_every_option_is_validated_with_a_configuration_error(
    make: Callable[[], object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()


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


def test_a_state_type_that_cannot_be_stored_is_refused_when_the_cluster_is_built() -> None:
    # Found by a newcomer's first hour: a lock in the state (or a plain class as the state)
    # failed every activation at its first call, with a message naming neither the actor
    # type nor its state type.
    from dataclasses import dataclass, field

    from raygrain.actors import Actor, register_type

    @dataclass
    class Guarded:
        count: int = 0
        lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    class Plain:
        def __init__(self) -> None:
            self.count = 0

    class WithLock(Actor[Guarded], name="test.WithLock"):
        async def ping(self) -> int:
            return self.state.count

    class WithPlainState(Actor[Plain], name="test.WithPlainState"):
        async def ping(self) -> int:
            return int(self.state.count)

    with pytest.raises(
        ConfigurationError,
        match=r"test\.WithLock: its state type .*Guarded cannot be stored: object of type "
        r"asyncio\.locks\.Lock .*keep locks, sockets and callables out of the state",
    ):
        Cluster.local(actors=[Chain, WithLock])
    with pytest.raises(ConfigurationError, match=r"test\.WithPlainState: its state type .*Plain"):
        Cluster.local(actors=[WithPlainState])
    # A client only names the types (their silos check them): it takes the class as it is.
    Cluster.connect("auto", [WithLock])
    # A type the codec is taught after the actor class is defined counts.
    register_type(Plain, name="test.bad_input.Plain", to_data=vars, from_data=lambda d: Plain())
    Cluster.local(actors=[WithPlainState])


async def test_two_clusters_on_one_sqlite_file_say_so_when_one_is_fenced(tmp_path: Any) -> None:
    # A newcomer running their program twice at once saw only "ETag mismatch for
    # test.BankAccount/k: stored '2', expected '1'" from the second program's call.
    from raygrain.actors import InconsistentStateError

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    async with (
        Cluster.local(actors=[BankAccount], storage=url) as first,
        Cluster.local(actors=[BankAccount], storage=url) as second,
    ):
        assert await first.get(BankAccount, "k").deposit(1) == 1
        assert await second.get(BankAccount, "k").deposit(1) == 2
        with pytest.raises(InconsistentStateError) as fenced:
            await first.get(BankAccount, "k").deposit(1)
        message = str(fenced.value)
        assert "ETag mismatch for test.BankAccount/k" in message
        assert "another cluster on the same storage" in message
        assert "nothing was written" in message
        # (The fenced activation is gone: the next call loads the winner's state.)
        assert await first.get(BankAccount, "k").deposit(1) == 3


def test_an_actor_class_without_its_state_type_is_warned_of_when_defined() -> None:
    # `class Counter(Actor):` (the [State] forgotten) had self.state None in every method:
    # the user's first `self.state += 1` failed with a TypeError that said nothing of why. A
    # bare Actor stays an actor without state (Orleans' Grain), with a warning naming the fix.
    from raygrain.actors import Actor

    with pytest.warns(
        UserWarning,
        match=r"Forgetful derives from a bare Actor, so it has no state .*"
        r"class Forgetful\(Actor\[State\]\) .*write Actor\[None\] to say it has none",
    ):

        class Forgetful(Actor):  # type: ignore[type-arg]
            async def add(self, amount: int) -> int:
                self.state += amount
                return int(self.state)

    assert Forgetful.__actor_state_type__ is None

    class Stateless(Actor[None]):  # (what an actor without state writes)
        async def ping(self) -> str:
            return "pong"

    class Derived(Stateless):  # (a subclass inherits its base's state type)
        pass

    assert Derived.__actor_state_type__ is None


def test_a_plain_with_on_a_cluster_says_to_use_async_with() -> None:
    # 'with Cluster.local(...) as cluster:' (the async forgotten) met Python's "'Cluster'
    # object does not support the context manager protocol", which names no fix.
    from raygrain.actors import InvalidCallError

    with (
        pytest.raises(InvalidCallError, match=r"write 'async with Cluster\.local\(\.\.\.\) as"),
        Cluster.local(actors=[Chain]),
    ):
        pass  # (never reached)


async def test_an_unknown_type_named_like_a_registered_class_says_why_names_differ() -> None:
    # One file used as 'raygrain up --actors counter_app' and run as 'python counter_app.py'
    # names its class 'counter_app.Counter' on the silos and 'Counter' in the client: the
    # client's calls got only "unknown actor type 'Counter'; registered: counter_app.Counter".
    async with Cluster.local(actors=[Chain]) as cluster:
        with pytest.raises(UnknownActorTypeError) as unknown:
            await cluster.ref("Chain", "k").ping()
        message = str(unknown.value)
        assert "unknown actor type 'Chain'; registered: " in message
        assert "; did you mean test.Chain? (a type's name is its name= or else" in message
        assert "give such a class name='...'" in message
        with pytest.raises(UnknownActorTypeError) as unrelated:
            await cluster.ref("Other", "k").ping()
        assert "same name" not in str(unrelated.value)
