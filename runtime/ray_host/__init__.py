"""The Ray host: the launcher (deployments started and stopped, and the client's backend), the
silo and controller actors, the Ray transport, the direct plane's wiring (runtime.wire over
Ray), the storage server, and silos that follow Ray's node list. Each deployment lives in its
own Ray namespace.
"""

from raygrain.runtime.ray_host._actors import (
    CONTROLLER_NAME,
    STANDBY_NAME,
    STORAGE_NAME,
    create_silo,
)
from raygrain.runtime.ray_host._deploy import (
    find_silos,
    launch,
    list_deployments,
    stop_everything,
    unique_deployment_name,
)
from raygrain.runtime.ray_host._direct import (
    TRANSPORTS,
    DirectPlane,
    check_transport,
    frame_cap,
)
from raygrain.runtime.ray_host._launch import DEFAULT_DEPLOYMENT, RayLaunch, namespace_of
from raygrain.runtime.ray_host._launcher import RayBackend, ensure_ray
from raygrain.runtime.ray_host._nodes import NodeFollower
from raygrain.runtime.ray_host._storage_server import RemoteStorage, StorageServerImpl
from raygrain.runtime.ray_host._transport import ClientMailbox, RayTransport

__all__ = [
    "CONTROLLER_NAME",
    "DEFAULT_DEPLOYMENT",
    "STANDBY_NAME",
    "STORAGE_NAME",
    "TRANSPORTS",
    "ClientMailbox",
    "DirectPlane",
    "NodeFollower",
    "RayBackend",
    "RayLaunch",
    "RayTransport",
    "RemoteStorage",
    "StorageServerImpl",
    "check_transport",
    "create_silo",
    "ensure_ray",
    "find_silos",
    "frame_cap",
    "launch",
    "list_deployments",
    "namespace_of",
    "stop_everything",
    "unique_deployment_name",
]
