"""The Ray host: the launcher, the silo and controller actors, the Ray transport, the direct
plane's wiring (runtime.wire over Ray) and the storage server.
"""

from raygrain.runtime.ray_host._direct import (
    TRANSPORTS,
    DirectPlane,
    check_transport,
    frame_cap,
)
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
    "TRANSPORTS",
    "ClientMailbox",
    "DirectPlane",
    "RayBackend",
    "RayLaunch",
    "RemoteStorage",
    "StorageServerImpl",
    "check_transport",
    "create_silo",
    "ensure_ray",
    "find_silos",
    "frame_cap",
    "launch",
    "stop_everything",
]
