"""What every part of the streams room uses of the silo's stream service.

Each part (the API, consumers, hubs, the sweeper, dead letters) names what it uses of
``_extension.StreamService`` as a Protocol of its own built on ``StreamServiceBase``, so that
none imports the extension, which imports them all.
"""

from __future__ import annotations

from typing import Protocol

from raygrain.runtime.kernel import Silo
from raygrain.runtime.streams._settings import StreamSettings
from raygrain.storage import StorageProvider

__all__ = ["StreamServiceBase"]


class StreamServiceBase(Protocol):
    """The silo, its stream settings and its storage provider."""

    @property
    def settings(self) -> StreamSettings: ...

    @property
    def silo(self) -> Silo: ...

    @property
    def storage(self) -> StorageProvider: ...
