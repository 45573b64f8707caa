"""The Ray host: the launcher, the silo and controller actors, the Ray transport and the
storage server.
"""

from raygrain.runtime.ray_host._launcher import (
    CONTROLLER_NAME,
    NAMESPACE,
    RayBackend,
    RayLaunch,
    create_silo,
    ensure_ray,
    find_silos,
    launch,
    stop_everything,
)
from raygrain.runtime.ray_host._storage_server import RemoteStorage, StorageServerImpl
from raygrain.runtime.ray_host._transport import ClientMailbox

__all__ = [
    "CONTROLLER_NAME",
    "NAMESPACE",
    "ClientMailbox",
    "RayBackend",
    "RayLaunch",
    "RemoteStorage",
    "StorageServerImpl",
    "create_silo",
    "ensure_ray",
    "find_silos",
    "launch",
    "stop_everything",
]
