"""The ``Actor`` base class: what a user subclasses to write a virtual actor.

A subclass is a plain Python class with async methods. Class keywords set its options, the
generic parameter names its state type, and the runtime supplies everything else through an
``ActorRuntime`` bound to the instance before ``__init__`` runs. This module never imports the
runtime: that binding is a protocol.

The base class keeps its helpers off the method namespace, so that a user may name a method
``get``, ``save``, ``key`` or ``id``: an actor reaches other actors through ``self.actors`` and
its own identity and lifecycle through ``self.context``. Only the names in ``RESERVED`` (and
underscore names) are taken.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from raygrain.actors._errors import ConfigurationError, InvalidScheduleError
from raygrain.actors._identity import ActorId, ActorKey
from raygrain.actors._options import (
    ActorOptions,
    DeactivationReason,
    MethodOptions,
    Persistence,
    method_options,
    positive_seconds,
)
from raygrain.actors._ref import RESERVED_NAMES, ActorRef
from raygrain.actors._streams import StreamEvent, Streams
from raygrain.actors._time import Reminders, ReminderTick, Timers

__all__ = [
    "RESERVED",
    "Actor",
    "ActorContext",
    "ActorFactory",
    "ActorMethod",
    "ActorRuntime",
    "actor_methods",
    "actor_options",
]

StateT = TypeVar("StateT")
A = TypeVar("A", bound="Actor[Any]")


# The names an actor class cannot give a method (besides underscore names): the base class's
# attributes (``timers``/``reminders`` are the time room's), the lifecycle hooks, and the
# reference's own attributes (a method of that name could not be called through a reference).
RESERVED = frozenset(
    {
        "state",
        "context",
        "actors",
        "timers",
        "reminders",
        "on_activate",
        "on_deactivate",
        "on_reminder",
        "streams",
        "on_stream_event",
    }
    | RESERVED_NAMES
)


class ActorRuntime(Protocol):
    """The runtime's side of an activation, bound to its actor instance (the silo's
    ``Activation`` implements it)."""

    @property
    def actor_id(self) -> ActorId: ...

    def ref(self, actor_type: type[Actor[Any]] | str, key: ActorKey) -> ActorRef: ...

    def deactivate_on_idle(self) -> None: ...

    async def save(self) -> None: ...

    async def clear_state(self) -> None: ...

    def service(self, name: str) -> Any:
        """A capability's per-activation API (``"timers"``, ``"reminders"``, ...)."""
        ...

    def end_turn_with(self, ending: Any) -> None:
        """(For a capability's method wrapper, as the last thing before the method that the
        runtime called returns:) finish the turn with ``ending`` (a kernel ``TurnEnding``)
        after the method returned; the reply waits for it."""
        ...


class ActorContext:
    """An actor's own activation: ``self.context`` inside an actor. Its identity (``id``,
    ``key``) and what it may ask of the runtime (``save``, ``clear_state``,
    ``deactivate_on_idle``)."""

    __slots__ = ("_runtime",)

    def __init__(self, runtime: ActorRuntime) -> None:
        self._runtime = runtime

    @property
    def id(self) -> ActorId:
        """``(type name, key)`` of this actor."""
        return self._runtime.actor_id

    @property
    def key(self) -> ActorKey:
        return self._runtime.actor_id.key

    def deactivate_on_idle(self) -> None:
        """Deactivate this activation once the current turn ends (state is already durable)."""
        self._runtime.deactivate_on_idle()

    async def save(self) -> None:
        """Write the state now. Needed only with ``persistence="explicit"``."""
        await self._runtime.save()

    async def clear_state(self) -> None:
        """Delete the stored state and reset ``self.state`` to its default."""
        await self._runtime.clear_state()

    def __repr__(self) -> str:
        return f"ActorContext({self._runtime.actor_id})"


class ActorFactory:
    """References to other actors (or this one), callable from this actor's turns:
    ``self.actors`` inside an actor (Orleans' ``GrainFactory``)."""

    __slots__ = ("_runtime",)

    def __init__(self, runtime: ActorRuntime) -> None:
        self._runtime = runtime

    def get(self, actor_type: type[A], key: ActorKey) -> A:
        """A reference to ``(actor_type, key)``, typed as the actor class."""
        return cast(A, self._runtime.ref(actor_type, key))

    def ref(self, type_name: str, key: ActorKey) -> ActorRef:
        """An untyped reference by type name (call it with ``invoke``)."""
        return self._runtime.ref(type_name, key)


@dataclass(frozen=True, slots=True)
class ActorMethod:
    """One remotely callable method of an actor class."""

    name: str
    function: Callable[..., Any]
    options: MethodOptions
    signature: inspect.Signature
    # The most positional arguments when the signature is that simple (positional-or-keyword
    # parameters only: no keyword-only, no *args/**kwargs), and how many of the last ones
    # have a default: checking a call given only positional arguments is then a length
    # comparison.
    arity: int | None = None
    optional: int = 0


class Actor(Generic[StateT]):
    """Base class of virtual actors. ``StateT`` is the persistent state's type.

    Class keywords: ``name`` (stable type name), ``reentrant``, ``stateless_worker``,
    ``max_local_workers``, ``idle_timeout`` (seconds), ``persistence`` (``Persistence``).
    """

    __actor_options__: ClassVar[ActorOptions]
    __actor_state_type__: ClassVar[Any] = None
    __actor_methods__: ClassVar[dict[str, ActorMethod]]

    _context: ActorRuntime
    state: StateT

    def __init_subclass__(
        cls,
        *,
        name: str | None = None,
        reentrant: bool | None = None,
        stateless_worker: bool | None = None,
        max_local_workers: int | None = None,
        idle_timeout: float | None = None,
        persistence: Persistence | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        # An option not given is the base actor class's (the defaults of ActorOptions for a
        # direct subclass of Actor): a subclass of an explicit-persistence actor, say, stays
        # explicit. The type name is each class's own.
        base = getattr(cls, "__actor_options__", None) or ActorOptions(name="")
        if reentrant is None:
            reentrant = base.reentrant
        if stateless_worker is None:
            stateless_worker = base.stateless_worker
        if max_local_workers is None:
            max_local_workers = base.max_local_workers
        if idle_timeout is None:
            idle_timeout = base.idle_timeout
        if persistence is None:
            persistence = base.persistence
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(f"{cls.__qualname__}: name= must be a non-empty string")
        if idle_timeout is not None:
            idle_timeout = positive_seconds(f"{cls.__qualname__}: idle_timeout", idle_timeout)
        if (
            not isinstance(max_local_workers, int)
            or isinstance(max_local_workers, bool)
            or max_local_workers < 1
        ):
            raise ConfigurationError(
                f"{cls.__qualname__}: max_local_workers must be an int >= 1, "
                f"got {max_local_workers!r}"
            )
        for flag, value in (("reentrant", reentrant), ("stateless_worker", stateless_worker)):
            if not isinstance(value, bool):
                raise ConfigurationError(
                    f"{cls.__qualname__}: {flag} must be a bool, got {value!r}"
                )
        try:
            persistence = Persistence(persistence)
        except ValueError:
            choices = ", ".join(repr(p.value) for p in Persistence)
            raise ConfigurationError(
                f"{cls.__qualname__}: persistence must be one of {choices}, got {persistence!r}"
            ) from None
        base_state = getattr(cls, "__actor_state_type__", None)
        cls.__actor_options__ = ActorOptions(
            name=name or _default_type_name(cls),
            reentrant=reentrant,
            stateless_worker=stateless_worker,
            max_local_workers=max_local_workers,
            idle_timeout=idle_timeout,
            persistence=persistence,
        )
        if Actor in cls.__bases__ and not any(
            typing.get_origin(b) is Actor for b in cls.__dict__.get("__orig_bases__", ())
        ):
            # A bare Actor is an actor without state, as Orleans' Grain is. But a forgotten
            # [State] leaves self.state None in every method, and the user's first
            # `self.state += 1` a TypeError in their own code that says nothing of why: so say
            # it once, where the class is defined (a warning: a class that means to have no
            # state still works).
            warnings.warn(
                f"{cls.__qualname__} derives from a bare Actor, so it has no state (self.state "
                f"is None, as with Actor[None]); to keep a state, write class "
                f"{cls.__name__}(Actor[State]) (a dataclass whose fields have defaults, or int, "
                "dict, ...); write Actor[None] to say it has none and silence this warning",
                UserWarning,
                stacklevel=2,
            )
        cls.__actor_state_type__ = _state_type_of(cls, base_state)
        if stateless_worker and cls.__actor_state_type__ is not None:
            raise ConfigurationError(
                f"{cls.__qualname__}: a stateless worker keeps no state (it has several "
                f"activations at once, which would overwrite each other's): declare it "
                f"Actor[None], not Actor[{getattr(cls.__actor_state_type__, '__name__', '...')}]"
            )
        _check_hooks(cls)
        cls.__actor_methods__ = _collect_methods(cls)

    # -- what an actor uses ------------------------------------------------------------------

    @property
    def context(self) -> ActorContext:
        """This activation: ``self.context.key``, ``await self.context.save()``, ..."""
        return ActorContext(self._context)

    @property
    def actors(self) -> ActorFactory:
        """References to actors: ``self.actors.get(Type, key)``."""
        return ActorFactory(self._context)

    def with_timeout(self: A, seconds: float) -> A:
        """A reference to this actor whose calls have a deadline of ``seconds``.

        A reference typed as its actor class (what ``cluster.get`` and ``self.actors.get``
        return) is an ``ActorRef`` at run time, whose ``with_timeout`` this declares to type
        checkers: ``await cluster.get(Counter, "a").with_timeout(2).get()`` type-checks.
        """
        runtime = self._context
        return cast(A, runtime.ref(runtime.actor_id.type_name, runtime.actor_id.key)).with_timeout(
            seconds
        )

    @property
    def timers(self) -> Timers:
        """This activation's timers: ``self.timers.every(60, self.poll)`` (see docs/timers.md)."""
        return cast(Timers, _service(self, "timers"))

    @property
    def reminders(self) -> Reminders:
        """This actor's durable reminders, delivered to ``on_reminder`` (see docs/timers.md)."""
        return cast(Reminders, _service(self, "reminders"))

    @property
    def streams(self) -> Streams:
        """Streams and observers of this actor: ``self.streams.get(ns, key).publish(x)``,
        ``await self.streams.subscribe(stream_id)`` (see docs/streams.md)."""
        return cast(Streams, _service(self, "streams"))

    # -- lifecycle hooks ---------------------------------------------------------------------

    async def on_activate(self) -> None:
        """Called after the state is loaded, before the first call is delivered."""

    async def on_deactivate(self, reason: DeactivationReason) -> None:
        """Called before the activation is dropped; its state is already durable."""

    async def on_reminder(self, name: str, tick: ReminderTick) -> None:
        """A reminder of this actor fired (a turn, like a call). Override to act on it."""
        raise NotImplementedError(
            f"{type(self).__qualname__} registered reminder {name!r} but does not override "
            "on_reminder(name, tick)"
        )

    async def on_stream_event(self, event: StreamEvent) -> None:
        """An event of a stream this actor consumes (a turn, like a call): its state changes
        commit with the stream position in one write. Override to consume streams."""
        raise NotImplementedError(
            f"{type(self).__qualname__} consumes stream {event.stream} but does not override "
            "on_stream_event(event)"
        )


def _service(actor: Actor[Any], name: str) -> Any:
    context = getattr(actor, "_context", None)
    if context is None:
        raise InvalidScheduleError(
            f"{type(actor).__qualname__}.{name}: only an activation of the actor has {name} "
            "(this instance was built outside the runtime)"
        )
    return context.service(name)


def actor_options(cls: type[Actor[Any]]) -> ActorOptions:
    return cls.__actor_options__


def actor_methods(cls: type[Actor[Any]]) -> dict[str, ActorMethod]:
    return cls.__actor_methods__


_HOOKS = frozenset({"on_activate", "on_deactivate", "on_reminder", "on_stream_event"})


def _collect_methods(cls: type) -> dict[str, ActorMethod]:
    methods: dict[str, ActorMethod] = {}
    for attr_name in dir(cls):
        if attr_name.startswith("_"):
            continue
        fn = inspect.getattr_static(cls, attr_name)
        if attr_name in _HOOKS:
            continue  # lifecycle hooks are not callable remotely
        if attr_name in RESERVED:
            if fn is inspect.getattr_static(Actor, attr_name, None):
                continue
            raise ConfigurationError(
                f"{cls.__qualname__}.{attr_name}: the name is reserved "
                f"({', '.join(sorted(RESERVED))}, and names starting with '_'); "
                "rename it"
            )
        if isinstance(fn, (staticmethod, classmethod)) or not inspect.iscoroutinefunction(fn):
            if method_options(getattr(fn, "__func__", fn)) != MethodOptions():
                # (A decorator asks for a callable method: it would only fail at the first call.)
                raise ConfigurationError(
                    f"{cls.__qualname__}.{attr_name} has a method option (@read_only, "
                    "@always_interleave, @one_way, @transactional, @call_timeout) but is not "
                    "an 'async def' method; only those can be called: make it 'async def'"
                )
            continue
        options = method_options(fn)
        if options.read_only and options.transactional:
            raise ConfigurationError(
                f"{cls.__qualname__}.{attr_name}: a method cannot be both @read_only and "
                "@transactional"
            )
        if options.one_way and options.transactional:
            # Called in a transaction, it would lock the actor with no answer to say it
            # joined: left out of the commit, locked until the lease ran out.
            raise ConfigurationError(
                f"{cls.__qualname__}.{attr_name}: a method cannot be both @one_way and "
                "@transactional (no answer would tell the transaction that it joined); "
                "drop @one_way, and run the call in a task if the caller should not wait"
            )
        signature = inspect.signature(fn)
        methods[attr_name] = ActorMethod(
            attr_name, fn, options, signature, *_simple_arity(signature)
        )
    return methods


def _simple_arity(signature: inspect.Signature) -> tuple[int | None, int]:
    """(the most positional arguments, how many of them have a default), or (None, 0) when
    the signature is not that simple."""
    params = list(signature.parameters.values())[1:]  # drop self
    if not all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
        return None, 0
    return len(params), sum(p.default is not inspect.Parameter.empty for p in params)


def _default_type_name(cls: type) -> str:
    module = cls.__module__
    if module == "__main__":
        # `python -m pkg.mod` runs pkg.mod as __main__; the spec keeps the real, stable name.
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else ""
    return f"{module}.{cls.__qualname__}" if module else cls.__qualname__


# The lifecycle hooks an actor class may define, with the arguments the runtime passes.
_HOOK_ARGUMENTS = {
    "on_activate": (),
    "on_deactivate": ("reason",),
    "on_reminder": ("name", "tick"),
    "on_stream_event": ("event",),
}


def _check_hooks(cls: type) -> None:
    """A hook the runtime could not call (a plain ``def``, other parameters) would fail each
    time it is due, or leave an activation half gone: refused with the class instead."""
    for name, arguments in _HOOK_ARGUMENTS.items():
        hook = cls.__dict__.get(name)
        if hook is None:
            continue
        expected = f"async def {name}(self{''.join(', ' + a for a in arguments)})"
        if not inspect.iscoroutinefunction(hook):
            raise ConfigurationError(
                f"{cls.__qualname__}.{name} must be {expected}: the runtime awaits it"
            )
        try:
            inspect.signature(hook).bind(None, *arguments)
        except TypeError:
            raise ConfigurationError(
                f"{cls.__qualname__}.{name} must take the runtime's arguments: {expected}"
            ) from None
    init = cls.__dict__.get("__init__")
    if init is not None:
        try:
            inspect.signature(init).bind(None)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"{cls.__qualname__}.__init__ is called with no arguments (the runtime builds "
                "each activation's instance): give its parameters defaults, or set things up "
                "in on_activate"
            ) from None


def _state_type_of(cls: type, inherited: Any) -> Any:
    """The state type ``cls`` declares: ``Actor[S]``, or a generic actor class's parameter
    (``class Base(Actor[T], Generic[T])``, then ``class Sub(Base[S])``); else the base's."""
    for base in getattr(cls, "__orig_bases__", ()):
        origin = typing.get_origin(base)
        if origin is Actor:
            (arg,) = typing.get_args(base)
        elif isinstance(origin, type) and issubclass(origin, Actor):
            declared = origin.__dict__.get("__actor_state_parameter__")
            parameters = getattr(origin, "__parameters__", ())
            if declared not in parameters:
                continue
            arg = typing.get_args(base)[parameters.index(declared)]
        else:
            continue
        if isinstance(arg, TypeVar):
            # Still generic: its subclasses name the type (kept for them to look up).
            cls.__actor_state_parameter__ = arg  # type: ignore[attr-defined]
            return inherited
        if arg is None or arg is type(None):
            return None
        _check_default_constructible(cls, arg)
        return arg
    return inherited


def _check_default_constructible(cls: type, state_type: Any) -> None:
    try:
        state_type()
    except Exception as exc:
        hint = (
            " (give every dataclass field a default)"
            if dataclasses.is_dataclass(state_type)
            else ""
        )
        raise ConfigurationError(
            f"{cls.__qualname__}: state type {state_type!r} cannot be built with no arguments"
            f"{hint}: {exc}"
        ) from exc
