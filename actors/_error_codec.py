"""Exceptions across a copy boundary: ``encode_error`` on the side that raised, ``decode_error``
on the caller's.

An error travels as its class's module and name, its ``args``, its message and traceback text,
and the attributes its raiser set; the caller rebuilds the same class when it has imported its
module (never importing one a peer names), as pickle would, else ``RemoteActorError``.
"""

from __future__ import annotations

import asyncio
import builtins
import sys
import traceback
from typing import Any

from raygrain.actors._codec import decode, encode
from raygrain.actors._errors import (
    MalformedMessageError,
    RemoteActorError,
    SerializationError,
    rebuild_error,
)

__all__ = ["decode_error", "encode_error"]


def encode_error(exc: BaseException, where: str, _cause_depth: int = 0) -> bytes:
    """Encode an exception raised at ``where`` (e.g. ``"Account/alice.deposit"``). An exception
    group carries its message and its nested exceptions, each encoded the same way, and an
    exception raised ``from`` another carries that one (its ``__cause__``, without its
    traceback text: the chain's text is already in this one's). Never raises: whatever the
    exception's own ``__str__`` or attributes do, the caller gets an answer (an error that
    could not be encoded would leave it waiting out its deadline)."""
    cls = type(exc)
    text = ""
    if not _cause_depth:
        try:
            text = "".join(traceback.format_exception(cls, exc, exc.__traceback__))
        except Exception:  # (a __str__ or a note that fails in a way traceback does not catch)
            pass
    fields: list[Any] = [cls.__module__, cls.__qualname__, b"", _message(exc), where, text, b""]
    cause = exc.__cause__ if _cause_depth < _MAX_CAUSES else None
    if _GROUP is not None and isinstance(exc, _GROUP):
        fields[2] = _encode_or_none([exc.message]) or encode([fields[3]])
        fields.append([encode_error(nested, where) for nested in exc.exceptions])
        if cause is not None:
            fields.append(encode_error(cause, where, _cause_depth + 1))
        return encode(fields)
    fields[2] = _encode_or_none(_arguments(exc)) or encode([fields[3]])
    # The instance's own attributes (``self.code = code``), so that the caller's copy has them
    # even when its ``__init__`` sets them from arguments other than ``args``; the ones that
    # cannot be encoded are left out.
    attributes = getattr(exc, "__dict__", None)
    if attributes and cls.__module__ != _OWN_ERRORS:  # (ours are rebuilt from their args)
        kept, size = {}, 0
        for name, value in list(attributes.items()):
            if not isinstance(name, str) or name.startswith("_"):
                continue
            encoded = _encode_or_none(value)
            if encoded is not None and size + len(encoded) <= _MAX_ATTRIBUTE_BYTES:
                kept[name] = value
                size += len(encoded)
        fields[6] = _encode_or_none(kept) or b""
    if cause is not None:
        fields += [[], encode_error(cause, where, _cause_depth + 1)]  # (no group's members)
    return encode(fields)


def _arguments(exc: BaseException) -> list[Any]:
    """``exc.args``; for an ``OSError`` naming files, the arguments that build it again with
    them (its ``filename`` and ``filename2`` are kept beside ``args``, not in them)."""
    args = list(exc.args)
    if isinstance(exc, OSError) and len(args) == 2:
        names = [exc.filename, exc.filename2]
        if names != [None, None]:
            plain = [n if n is None or isinstance(n, (str, bytes, int)) else str(n) for n in names]
            args += [plain[0], None, plain[1]]  # (errno, strerror, filename, winerror, filename2)
    return args


def _message(exc: BaseException) -> str:
    """``str(exc)``, or what can be said of it when its ``__str__`` fails or returns no str."""
    try:
        text = str(exc)
        if isinstance(text, str):
            return text
    except Exception as failure:
        return f"<{type(exc).__qualname__}: str() failed: {type(failure).__name__}: {failure}>"
    return f"<{type(exc).__qualname__}: str() returned no str>"


def _encode_or_none(value: Any) -> bytes | None:
    try:
        return encode(value)
    except Exception:  # SerializationError, or a value whose own hooks fail (a cycle, ...)
        return None


_OWN_ERRORS = "raygrain.actors._errors"  # the module of raygrain's errors
# An exception's attributes sent with it, at most (beyond: left out, the error still goes).
_MAX_ATTRIBUTE_BYTES = 64 * 1024

# Exception groups (Python 3.11+; absent on 3.10, where no exception is one).
_GROUP: Any = getattr(builtins, "BaseExceptionGroup", None)
_EXCEPTION_GROUP: Any = getattr(builtins, "ExceptionGroup", None)
# Exception groups nest; a peer's message must not make the decoder recurse without end.
_MAX_GROUP_DEPTH = 32
# Causes sent with an exception, at most (``raise A from B`` from ``C``...: a chain, or a loop).
_MAX_CAUSES = 8


def decode_error(data: bytes, _depth: int = 0) -> BaseException:
    """Rebuild a remote exception: the same type when the caller can import it, else
    ``RemoteActorError``. The remote traceback is attached as a note. Never raises: an error
    answer that is no error record (a peer's bug, another version) is a
    ``MalformedMessageError`` saying so."""
    try:
        return _decode_error(data, _depth)
    except Exception as exc:
        return MalformedMessageError(
            f"the call failed, and its error could not be read (not an error record: "
            f"{type(exc).__name__}: {str(exc)[:200]})"
        )


def _decode_error(data: bytes, _depth: int) -> BaseException:
    module, qualname, args_blob, message, where, text, *rest = decode(data)
    # (Since 2026-12: an attributes field, then a group's members, then the cause. Earlier
    # encodings, which stored records may hold, have no attributes field, or no cause.)
    attributes_blob, nested = (
        (rest[0], rest[1:]) if rest and isinstance(rest[0], bytes) else (b"", rest)
    )
    cause_blob = nested[1] if len(nested) > 1 and isinstance(nested[1], bytes) else None
    if not (
        all(isinstance(field, str) for field in (module, qualname, message, where, text))
        and isinstance(args_blob, bytes)
    ):
        raise TypeError("a field of the wrong type")
    try:
        args = decode(args_blob)
    except SerializationError:
        # A value in them this process cannot decode (a registered type's from_data fails
        # here): the error still arrives, as its type, with its message for its arguments.
        args = [message]
    if not isinstance(args, list):
        raise TypeError(f"arguments {type(args).__name__}, not a list")
    exc: BaseException | None = None
    if module == _OWN_ERRORS:
        exc = rebuild_error(qualname, args)
    else:
        cls = _importable_exception(module, qualname)
        if cls is not None:
            if nested and _GROUP is not None and issubclass(cls, _GROUP):
                try:
                    exc = _rebuild_group(cls, args, nested[0], _depth)
                except Exception:
                    exc = None
            else:
                exc = _rebuild(cls, args, attributes_blob)
    if isinstance(exc, (SystemExit, KeyboardInterrupt, GeneratorExit)):
        exc = None  # a peer's exit is not the caller's: it arrives as RemoteActorError
    if isinstance(exc, asyncio.CancelledError):
        # A callee's cancellation must never cancel the caller's task (see TurnCancelledError).
        exc = rebuild_error("TurnCancelledError", [f"{where} was cancelled: {message}"])
    if exc is None:
        exc = RemoteActorError(f"{module}.{qualname}", message, text)
    if cause_blob is not None and _depth < _MAX_GROUP_DEPTH:
        try:
            exc.__cause__ = decode_error(cause_blob, _depth + 1)  # (sets no context to show)
        except Exception:  # (an exception class that refuses one: it arrives without)
            pass
    if text and hasattr(exc, "add_note"):
        try:
            exc.add_note(f"raised remotely in {where}:\n{text.rstrip()}")
        except Exception:  # (an exception whose notes were made unusable)
            pass
    return exc


def _rebuild(cls: type[BaseException], args: list[Any], attributes_blob: bytes) -> Any:
    """``cls(*args)`` with the raiser's attributes restored, as pickle rebuilds an exception;
    when ``cls(*args)`` fails (an ``__init__`` taking other arguments than it passes on to
    ``Exception``), the instance is made without calling ``__init__``."""
    try:
        attributes = decode(attributes_blob) if attributes_blob else {}
        if not isinstance(attributes, dict):
            attributes = {}
    except Exception:
        attributes = {}
    try:
        exc = cls(*args)
    except Exception:
        # (An ``__init__`` taking other arguments, or none: ``OrderRejected()`` passing a fixed
        # text on. ``__new__`` sets ``args``; an instance whose ``str`` then fails, missing
        # what its ``__init__`` would have set, arrives as ``RemoteActorError`` instead.)
        try:
            exc = cls.__new__(cls, *args)
        except Exception:
            return None
        _restore(cls, exc, attributes)
        try:
            str(exc)
        except Exception:
            return None
        return exc
    _restore(cls, exc, attributes)
    return exc


def _restore(cls: type[BaseException], exc: BaseException, attributes: dict[Any, Any]) -> None:
    for name, value in attributes.items():
        # (Names a peer chose: none that would replace the class's own methods or hooks.)
        if not isinstance(name, str) or name.startswith("_"):
            continue
        own = getattr(cls, name, None)
        if callable(own) or hasattr(own, "__set__"):
            continue
        try:
            setattr(exc, name, value)
        except Exception:  # the rebuilt value stands
            pass


def _rebuild_group(cls: Any, args: list[Any], nested: list[bytes], depth: int) -> Any:
    if depth >= _MAX_GROUP_DEPTH or not nested:
        return None
    members = [decode_error(item, depth + 1) for item in nested]
    # ExceptionGroup only holds Exceptions; a BaseException member (a peer's KeyboardInterrupt,
    # say) makes it the base group, as BaseExceptionGroup itself would choose.
    if cls is _EXCEPTION_GROUP and not all(isinstance(m, Exception) for m in members):
        cls = _GROUP
    return cls(str(args[0]) if args else "", members)


def _importable_exception(module: str, qualname: str) -> type[BaseException] | None:
    """The exception class ``module.qualname`` if this process has already imported
    ``module``. Never imports: the names come from a peer, and importing a module a peer
    names runs that module's code here (any installed module, with its side effects)."""
    obj: Any = sys.modules.get(module)
    if obj is None:
        return None
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        return None
    return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None
