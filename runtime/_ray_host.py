"""Ray hosting: silos as async Ray actors, the membership controller, the storage server.

Each class here is the plain body of a Ray actor; ``_ray_cluster`` wraps them with
``ray.remote`` and launches them. A silo host builds the very same ``Silo`` as local mode, over
a ``RayTransport``, and follows the controller's membership view. Probes are answered in their
own concurrency group (a separate thread and event loop) so that a long CPU-bound turn on the
main loop is not mistaken for death.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack

from raygrain.actors import Actor, ActorId, DeactivationReason, InconsistentStateError
from raygrain.runtime._clock import SystemClock
from raygrain.runtime._logging import get_logger
from raygrain.runtime._membership import FailureDetection, Membership, MembershipView, SiloStatus
from raygrain.runtime._messages import Request, unpack_batch
from raygrain.runtime._ray_transport import RayTransport, is_client_address
from raygrain.runtime._registry import ActorRegistry
from raygrain.runtime._silo import Silo, SiloOptions
from raygrain.storage import StorageProvider, open_storage

MEMBERSHIP_RECORD = ActorId("raygrain.membership", "view")
_SETTLE_TIMEOUT = 5.0  # the longest new activations wait for the other silos' handover

__all__ = ["ControllerImpl", "SiloDied", "SiloHostImpl", "view_from_wire", "view_to_wire"]


def view_to_wire(view: MembershipView) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        [view.version, [[name, status.value] for name, status in view.silos]]
    )


def view_from_wire(blob: bytes) -> MembershipView:
    version, silos = msgpack.unpackb(blob, raw=False)
    return MembershipView(version, tuple((name, SiloStatus(status)) for name, status in silos))


class SiloDied(Exception):
    """Raised by a probe when the silo is known to be dead (not merely slow)."""


class ControllerImpl:
    """Keeps the cluster's membership view, hands it to silos and clients (long poll), and
    declares silos dead when they stop answering probes."""

    def __init__(
        self, detection: FailureDetection | None = None, store: StorageProvider | None = None
    ) -> None:
        self.view = MembershipView(0)
        self._store = store
        self._etag: str | None = None
        self._lock = asyncio.Lock()
        self._loaded = False
        self.nodes: dict[str, str] = {}  # silo name -> Ray node id
        self.detection = detection or FailureDetection()
        self.deaths: list[dict[str, Any]] = []  # when and why each silo was declared dead
        self._changed = asyncio.Event()
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._missed: dict[str, int] = {}  # probes missed in a row, per silo
        self._applied: dict[str, int] = {}  # the newest view each silo has finished applying
        self._progress = asyncio.Event()  # set when a silo applies a view, or the view changes

    # Overridden by the Ray actor: how to probe and how to stop a silo.
    async def probe_silo(self, name: str) -> None:
        raise NotImplementedError

    def kill_silo(self, name: str) -> None:
        pass

    async def _load(self) -> None:
        # A restarted controller continues from the stored view, so versions never go back.
        if self._loaded or self._store is None:
            self._loaded = True
            return
        record = await self._store.read(MEMBERSHIP_RECORD)
        self._etag = record.etag
        if record.data is not None:
            self.view = view_from_wire(record.data)
            for name in self.view.active():
                self._watchers.setdefault(name, asyncio.ensure_future(self._watch(name)))
        self._loaded = True

    async def _publish(self, view: MembershipView) -> bytes:
        blob = view_to_wire(view)
        if self._store is not None:
            # Compare-and-swap on the stored view, like Orleans' membership table: a second
            # controller writing behind our back makes this fail instead of forking the view.
            self._etag = await self._store.write(MEMBERSHIP_RECORD, blob, self._etag)
        self.view = view
        self._changed.set()
        self._changed = asyncio.Event()
        self._signal_progress()
        return blob

    def _signal_progress(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def set_status(self, name: str, status: str, node_id: str = "") -> bytes:
        async with self._lock:
            return await self._set_status(name, status, node_id)

    async def _set_status(self, name: str, status: str, node_id: str) -> bytes:
        await self._load()
        if node_id:
            self.nodes[name] = node_id
        if self.view.status_of(name) is SiloStatus.DEAD:
            # A silo declared dead never comes back under the same name: it must stop.
            self.kill_silo(name)
            return view_to_wire(self.view)
        blob = await self._publish(self.view.with_status(name, SiloStatus(status)))
        if SiloStatus(status) is SiloStatus.ACTIVE and name not in self._watchers:
            self._watchers[name] = asyncio.ensure_future(self._watch(name))
        return blob

    async def remove(self, name: str) -> bytes:
        async with self._lock:
            await self._load()
            return await self._remove(name)

    async def _remove(self, name: str) -> bytes:
        self.nodes.pop(name, None)
        watcher = self._watchers.pop(name, None)
        if watcher is not None:
            watcher.cancel()
        silos = tuple((n, s) for n, s in self.view.silos if n != name)
        return await self._publish(MembershipView(self.view.version + 1, silos))

    async def declare_dead(self, name: str, reason: str) -> bytes:
        async with self._lock:
            await self._load()
            return await self._declare_dead(name, reason)

    async def _declare_dead(self, name: str, reason: str) -> bytes:
        if self.view.status_of(name) in (None, SiloStatus.DEAD):
            return view_to_wire(self.view)
        self.deaths.append({"silo": name, "reason": reason, "at": time.time()})
        get_logger().warning("silo_declared_dead", silo=name, reason=reason)
        blob = await self._publish(self.view.with_status(name, SiloStatus.DEAD))
        self.kill_silo(name)  # fencing: if it is in fact alive, it must not serve on
        return blob

    async def _watch(self, name: str) -> None:
        detection = self.detection
        while self.view.status_of(name) in (SiloStatus.ACTIVE, SiloStatus.SHUTTING_DOWN):
            try:
                await asyncio.wait_for(self.probe_silo(name), detection.probe_timeout)
                self._missed[name] = 0
            except SiloDied as exc:
                if await self._try_to_declare_dead(name, f"Ray reports it dead: {exc}"):
                    return
            except Exception as exc:  # a timeout, or Ray unsure: a missed probe
                missed = self._missed[name] = self._missed.get(name, 0) + 1
                if missed >= detection.missed_probes and not self._most_are_suspected():
                    reason = f"{missed} probes missed ({type(exc).__name__})"
                    if await self._try_to_declare_dead(name, reason):
                        return
            await asyncio.sleep(detection.probe_period)

    async def _try_to_declare_dead(self, name: str, reason: str) -> bool:
        try:
            await self.declare_dead(name, reason)
        except Exception as exc:
            # The new view could not be stored (the state store busy or away for a moment):
            # probe again and retry, rather than leave a dead silo in the view for good.
            get_logger().warning("declare_dead_failed", silo=name, error=repr(exc))
            if isinstance(exc, InconsistentStateError):
                self._loaded = False  # another writer changed the stored view: read it again
            return False
        return True

    def _most_are_suspected(self) -> bool:
        # When most silos miss probes at once, the likelier story is that the controller itself
        # is starved or cut off: declaring them all dead would take the cluster down. Hold off
        # until the suspicion is a minority (Ray's own death signals still count at once).
        active = self.view.active()
        suspects = [n for n in active if self._missed.get(n, 0) > 0]
        if len(active) > 1 and len(suspects) * 2 > len(active):
            get_logger().warning("suspicion_held", suspects=suspects, active=len(active))
            return True
        return False

    async def get_view(self) -> bytes:
        async with self._lock:
            await self._load()
        return view_to_wire(self.view)

    async def wait_view(self, known_version: int, timeout: float, silo: str = "") -> bytes:
        """The view once it is newer than ``known_version`` (or the current one at timeout).

        A silo passes its name: asking for a newer view tells the controller that the silo has
        finished applying ``known_version`` (its moved activations are handed over).
        """
        if not self._loaded:
            # A restarted controller's first callers are usually these long polls: answering
            # them from an empty memory would hand out view 0 and never resume probing.
            async with self._lock:
                await self._load()
        if silo and self._applied.get(silo, -1) < known_version:
            self._applied[silo] = known_version
            self._signal_progress()
        if self.view.version <= known_version:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        return view_to_wire(self.view)

    async def wait_settled(self, version: int, timeout: float) -> bool:
        """Wait until every silo not declared dead has applied view ``version`` (so none of
        them still serves an actor that the view moved away); False if ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        while True:
            behind = [
                name
                for name, status in self.view.silos
                if status is not SiloStatus.DEAD and self._applied.get(name, -1) < version
            ]
            remaining = deadline - time.monotonic()
            if not behind:
                return True
            if remaining <= 0:
                get_logger().warning("view_not_settled", version=version, behind=behind)
                return False
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def silo_nodes(self) -> dict[str, str]:
        return dict(self.nodes)

    async def death_log(self) -> list[dict[str, Any]]:
        return list(self.deaths)


class SiloHostImpl:
    """The body of one silo actor."""

    def __init__(
        self,
        name: str,
        node_id: str,
        actor_types: list[type[Actor[Any]]],
        storage: StorageProvider | str,
        options: SiloOptions,
        resolve: Any,
        controller: Any,
    ) -> None:
        self.name = name
        self.node_id = node_id
        self._controller = controller
        self.membership = Membership()
        self.transport = RayTransport(name, resolve)
        provider = open_storage(storage) if isinstance(storage, str) else storage
        self.silo = Silo(
            name,
            ActorRegistry(actor_types),
            provider,
            self.transport,
            self.membership,
            SystemClock(),
            options,
        )
        self.transport.bind_silo(self.silo)
        self._follower: asyncio.Task[None] | None = None
        self._applying = asyncio.Lock()
        self._settling: set[asyncio.Task[None]] = set()
        self.leaving = False

    async def start(self) -> bytes:
        self.silo.start()
        view = view_from_wire(
            await self._controller.set_status.remote(self.name, "active", self.node_id)
        )
        self.membership.update(view)
        self._hold_activations_until_settled(view.version)
        self._follower = asyncio.ensure_future(self._follow_view())
        return view_to_wire(view)

    async def _follow_view(self) -> None:
        while not self.silo.closed:
            try:
                blob = await self._controller.wait_view.remote(
                    self.membership.view.version, 10.0, self.name
                )
            except Exception as exc:
                get_logger().warning("view_follow_failed", silo=self.name, error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            await self.apply_view(view_from_wire(blob))

    async def apply_view(self, view: MembershipView) -> None:
        # One at a time: the follower reports a view applied only once its handover is done.
        async with self._applying:
            await self._apply_view(view)

    async def _apply_view(self, view: MembershipView) -> None:
        before = set(self.membership.view.dead())
        ring_before = self.membership.ring
        if not self.membership.update(view):
            return
        if view.status_of(self.name) is SiloStatus.DEAD:
            # Declared dead while alive (a false suspicion): stop serving at once. Our
            # activations' state is durable; their new owners reactivate them from storage.
            get_logger().warning("declared_dead_stopping", silo=self.name)
            await self.stop()
            return
        for dead in set(view.dead()) - before:
            self.silo.caller.fail_calls_to(dead)
        # Activations whose owner changed move: deactivate them here, and their queued and
        # future calls are forwarded to the new owner by the ring check on delivery.
        ring = self.membership.ring
        moving = [
            a
            for a in list(self.silo.activations.values())
            if len(ring) and ring.owner(a.actor_id) != self.name
        ]
        if self.membership.ring is not ring_before:
            self._hold_activations_until_settled(view.version)
        await asyncio.gather(*(a.deactivate(DeactivationReason.HANDOVER) for a in moving))

    def _hold_activations_until_settled(self, version: int) -> None:
        """New activations wait until every live silo has applied view ``version``.

        An actor that moved here may still be running its last turn on its previous owner,
        which hands it over only once it applies the view. Activating it before then would
        read state that the old owner is about to overwrite: the ETag would fence one of
        the two, failing a call. Waiting costs new activations a round trip after a
        membership change; the wait is capped, after which the ETag fence is the safety net.
        """
        gate = asyncio.get_running_loop().create_future()
        self.silo.activation_gate = gate

        async def settle() -> None:
            try:
                await self._controller.wait_settled.remote(version, _SETTLE_TIMEOUT)
            except Exception as exc:
                get_logger().warning("view_settle_failed", silo=self.name, error=repr(exc))
            finally:
                gate.set_result(None)

        task = asyncio.ensure_future(settle())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def receive_batch(self, blob: bytes) -> bytes:
        client, call_ids = "", set()
        for message in unpack_batch(blob):
            if isinstance(message, Request):
                self.silo.deliver_request(message)
                if is_client_address(message.reply_to):
                    client = message.reply_to
                    call_ids.add(message.call_id)
            else:
                self.silo.deliver_response(message)
        if not client:
            return b""
        # A client's batch carries its answers back when they are quick, which spares the
        # client's long poll a Ray call per round trip; slower ones go by the poll.
        return await self.transport.answers(client, call_ids)

    async def poll(self, client: str) -> bytes:
        return await self.transport.poll(client)

    async def forget_client(self, client: str) -> None:
        self.transport.forget_client(client)

    async def stats(self) -> dict[str, Any]:
        return {
            **self.silo.stats(),
            "node_id": self.node_id,
            "view_version": self.membership.view.version,
            "batches_sent": self.transport.batches_sent,
            "messages_sent": self.transport.messages_sent,
        }

    async def leave(self) -> None:
        """Graceful stop: leave the ring, hand every activation over, then close."""
        self.leaving = True
        view = view_from_wire(await self._controller.set_status.remote(self.name, "shutting_down"))
        await self.apply_view(view)
        await self.silo.deactivate_all(DeactivationReason.HANDOVER)
        await self._controller.remove.remote(self.name)

    async def stop(self) -> None:
        follower = self._follower
        if follower is not None and follower is not asyncio.current_task():
            follower.cancel()
        for task in list(self._settling):
            task.cancel()
        await self.silo.aclose()
        await self.transport.aclose()
        await self.silo.storage.aclose()
