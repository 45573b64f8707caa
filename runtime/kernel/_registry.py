"""The actor type registry: which classes a cluster may activate, by their stable type name.

Only registered types can be activated and only their public async methods called: a caller
names a type and a method as strings, and this is the one place those strings are resolved.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from raygrain.actors import (
    Actor,
    ActorMethod,
    ConfigurationError,
    InvalidArgumentsError,
    SerializationError,
    UnknownActorTypeError,
    UnknownMethodError,
    actor_methods,
    actor_options,
    encode_state,
)

__all__ = ["ActorRegistry"]


class ActorRegistry:
    def __init__(self, actor_types: Iterable[type[Actor[Any]]], *, hosts: bool = True) -> None:
        """``hosts``: activations of these types run here (a silo's or an in-process cluster's
        registry), so their state types are checked; a client's only names them."""
        self._types: dict[str, type[Actor[Any]]] = {}
        self._hosts = hosts
        for cls in actor_types:
            self.add(cls)

    def add(self, cls: type[Actor[Any]]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Actor)) or cls is Actor:
            raise ConfigurationError(f"{cls!r} is not an Actor subclass")
        name = actor_options(cls).name
        existing = self._types.get(name)
        if existing is not None and existing is not cls:
            raise ConfigurationError(
                f"two actor classes share the type name {name!r}: {existing.__module__}."
                f"{existing.__qualname__} and {cls.__module__}.{cls.__qualname__}; "
                "give one of them name=..."
            )
        parameter = cls.__dict__.get("__actor_state_parameter__")
        if parameter is not None and not actor_options(cls).stateless_worker:
            # Its state type is a parameter still (Actor[T]): it would keep no state at all.
            # (A stateless worker keeps none anyway: its parameter names nothing stored.)
            raise ConfigurationError(
                f"{name}: its state type is the type variable {parameter}, which names no "
                f"type, so its state would never be stored; register a subclass that names "
                f"it, such as class Carts({cls.__qualname__}[Cart]), or declare Actor[None] "
                "for no state"
            )
        if self._hosts:
            _check_state_encodes(name, cls)
        self._types[name] = cls

    def names(self) -> list[str]:
        return sorted(self._types)

    def type_name_of(self, cls: type[Actor[Any]]) -> str:
        """The registered name of ``cls``; raises if the class is not registered here."""
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            raise UnknownActorTypeError(f"{cls!r} is not an actor class")
        name = actor_options(cls).name
        if self._types.get(name) is not cls:
            raise UnknownActorTypeError(
                f"actor class {cls.__qualname__} (type name {name!r}) is not registered on this "
                f"cluster; registered: {', '.join(self.names()) or 'none'}"
            )
        return name

    def resolve(self, type_name: str) -> type[Actor[Any]]:
        cls = self._types.get(type_name)
        if cls is None:
            raise UnknownActorTypeError(
                f"unknown actor type {type_name!r}; registered: {', '.join(self.names()) or 'none'}"
                f"{self._same_class_hint(type_name)}"
            )
        return cls

    def _same_class_hint(self, type_name: str) -> str:
        # The usual cause: one class named two ways, by its module on one side (`raygrain up
        # --actors app`) and without one on the other (`python app.py`, where it is __main__).
        qualname = type_name.rpartition(".")[2]
        same = [n for n in self.names() if n.rpartition(".")[2] == qualname]
        if not same:
            return ""
        return (
            f"; did you mean {' or '.join(same)}? (a type's name is its name= or else its "
            "module's and class's, and a class in a script run as 'python app.py' has no "
            "module name: give such a class name='...' so that every process names it alike)"
        )

    def method(self, cls: type[Actor[Any]], name: str) -> ActorMethod:
        found = actor_methods(cls).get(name)
        if found is None:
            type_name = actor_options(cls).name
            if name.startswith("_"):
                why = "private and dunder methods cannot be called"
            elif inspect.isasyncgenfunction(getattr(cls, name, None)):
                why = (
                    "an async generator method cannot be called: a call returns one value; "
                    "return a list instead"
                )
            elif _plain_method(cls, name):
                why = "a plain 'def' method cannot be called from outside; make it 'async def'"
            else:
                why = "no public async method of that name"
            raise UnknownMethodError(f"{type_name}.{name}: {why}")
        return found


def check_arguments(
    type_name: str, method: ActorMethod, args: list[Any], kwargs: dict[str, Any]
) -> None:
    """Raise ``InvalidArgumentsError`` when the arguments do not bind to the method."""
    arity = method.arity
    if arity is not None and not kwargs and arity - method.optional <= len(args) <= arity:
        return
    try:
        method.signature.bind(None, *args, **kwargs)
    except TypeError as exc:
        unexpected = _unexpected_keywords(method.signature, kwargs)
        why: object = exc
        if len(unexpected) == 1:  # as Python's own call says it
            why = f"got an unexpected keyword argument {unexpected[0]!r}"
        elif unexpected:
            why = f"got unexpected keyword arguments {', '.join(map(repr, unexpected))}"
        raise InvalidArgumentsError(f"{type_name}.{method.name}: {why}") from None


def _unexpected_keywords(signature: inspect.Signature, kwargs: dict[str, Any]) -> list[str]:
    """The keywords no parameter takes (``bind`` reports a missing argument first, which hides
    a misspelt keyword: Python's own call names the keyword)."""
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return []
    named = {p.name for p in parameters if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    return [key for key in kwargs if key not in named]


def _plain_method(cls: type[Actor[Any]], name: str) -> bool:
    """Whether ``name`` is a user's plain (not async) method of ``cls``."""
    attribute = getattr(cls, name, None)
    return (
        callable(attribute)
        and not inspect.iscoroutinefunction(attribute)
        and not hasattr(Actor, name)  # (the runtime's own members: hooks, context, ...)
    )


def _check_state_encodes(name: str, cls: type[Actor[Any]]) -> None:
    """Refuse, when the cluster is built, a state type whose fresh instance cannot be stored
    (a plain class, a lock or a socket in a field): every activation would fail on it. Checked
    here rather than at class definition, so that a type registered with ``register_type``
    after the actor class still counts."""
    state_type = cls.__actor_state_type__
    if state_type is None:
        return
    try:
        encode_state(state_type())
    except SerializationError as exc:
        raise ConfigurationError(
            f"{name}: its state type {getattr(state_type, '__qualname__', state_type)} cannot "
            f"be stored: {exc}; keep locks, sockets and callables out of the state, as "
            "attributes of the actor set in on_activate"
        ) from None
