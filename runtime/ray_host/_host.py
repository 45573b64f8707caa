"""Ray hosting: silos as async Ray actors, the membership controller, the storage server.

Each class here is the plain body of a Ray actor; ``_ray_cluster`` wraps them with
``ray.remote`` and launches them. A silo host builds the very same ``Silo`` as local mode, over
a ``RayTransport``, and follows the controller's membership view. Probes are answered in their
own concurrency group (a separate thread and event loop) so that a long CPU-bound turn on the
main loop is not mistaken for death.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from raygrain.actors import Actor, DeactivationReason, MalformedMessageError
from raygrain.runtime._capabilities import actor_types as with_capability_actors
from raygrain.runtime._capabilities import export_to_ray, silo_extensions
from raygrain.runtime.kernel import (
    ActorRegistry,
    Malformed,
    Membership,
    MembershipView,
    Request,
    Silo,
    SiloOptions,
    SiloStatus,
    SystemClock,
    get_logger,
    unpack_batch,
    view_from_wire,
    view_to_wire,
)
from raygrain.runtime.metrics import RayExporter
from raygrain.runtime.ray_host._direct import DirectPlane, Locator, PlaneSwitch
from raygrain.runtime.ray_host._transport import RayTransport, is_client_address
from raygrain.runtime.wire import WireTransport
from raygrain.storage import StorageProvider, open_storage

_SETTLE_TIMEOUT = 5.0  # the longest new activations wait for the other silos' handover
_LEADER_PATIENCE = 2.0  # a joining silo asks the standby once the controller is this late
_JOIN_TIMEOUT = 60.0  # the longest a silo tries to join (the node follower's start timeout)

__all__ = ["SiloHostImpl", "follow_standby"]


def _moves_off_live_silos(active_before: set[str], view: MembershipView) -> bool:
    """Whether ``view`` moves actors away from a silo that still runs (one joined, or one is
    leaving), from a view whose active silos were ``active_before``: only then is there a
    previous owner to wait for. When silos only died, no live silo's actors move, and the dead
    ones' actors have no previous owner left to hand them over (a silo declared dead while
    alive stops serving; a late write of its is fenced by the ETag)."""
    after = set(view.active())
    return bool(after - active_before) or bool(active_before - after - set(view.dead()))


async def follow_standby(standby: Any, version: int, silo: str = "") -> bytes | None:
    """One long poll on the standby controller, for a follower whose poll on the controller
    failed (it is down, and Ray restarting it takes seconds); None after a pause when there is
    no standby or it failed too. The standby answers, when it stops leading, at once, so that
    the follower returns to the controller."""
    if standby is not None:
        try:
            blob: bytes = await standby.wait_view.remote(version, 10.0, silo)
            return blob
        except Exception as exc:
            get_logger().info("standby_follow_failed", silo=silo, error=repr(exc))
    await asyncio.sleep(0.5)
    return None


async def _answer(call: Any) -> Any:
    return await call


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
        listen_host: str = "127.0.0.1",
        controller_gone: Callable[[BaseException], bool] = lambda error: False,
        standby: Any = None,
    ) -> None:
        self.name = name
        self.node_id = node_id
        self._controller = controller
        self._standby = standby  # the standby controller, followed while the controller is down
        self._controller_gone = controller_gone
        self.membership = Membership()
        self.transport = RayTransport(name, resolve)
        # Ray carries everything until start() opens the deployment's direct plane (if it
        # has one), which then keeps Ray calls as its fallback.
        self._plane = PlaneSwitch(self.transport)
        self.wire: WireTransport | None = None
        self._resolve = resolve
        self._listen_host = listen_host
        self.direct_address: tuple[str, int] | None = None
        provider = open_storage(storage) if isinstance(storage, str) else storage
        self.silo = Silo(
            name,
            ActorRegistry(with_capability_actors(actor_types)),
            provider,
            self._plane,
            self.membership,
            SystemClock(),
            options,
            silo_extensions(options),
        )
        self.transport.bind_silo(self.silo)
        self._follower: asyncio.Task[None] | None = None
        self._applying = asyncio.Lock()
        self._settling: set[asyncio.Task[None]] = set()
        self.leaving = False
        self._metrics: RayExporter | None = None

    async def start(self) -> bytes:
        self.silo.start()
        self._metrics = export_to_ray(self.silo, self.transport)
        plane: DirectPlane | None = await self._from_leader("direct_plane")
        if plane is not None:
            self.wire = WireTransport(
                self.name, plane.options(), Locator(self._resolve), fallback=self.transport
            )
            self.wire.bind_silo(self.silo)
            if self._metrics is not None:  # batch sizes on the direct wire too
                self.wire.on_batch = self.transport.on_batch
            self.direct_address = await self.wire.listen(self._listen_host)
            self._plane.use(self.wire)
        joined = await self._from_leader("set_status", self.name, "active", self.node_id)
        view = view_from_wire(joined)
        self.membership.update(view)
        self._hold_activations_until_settled(view.version)
        self._follower = asyncio.ensure_future(self._follow_view())
        return view_to_wire(view)

    async def _from_leader(self, method: str, *args: Any) -> Any:
        """``method(*args)`` of whichever controller leads, for a silo that joins.

        The controller's, as a rule. While it does not answer (Ray restarting its process
        fails calls at once; a stalled one answers late), the standby's, which leads meanwhile
        and refuses (``NotLeading``) when it does not: a silo joining then no longer waits for
        the controller to come back. A call the controller answers late (a second "active")
        changes nothing.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _JOIN_TIMEOUT
        asked = asyncio.ensure_future(_answer(getattr(self._controller, method).remote(*args)))
        while True:
            done, _ = await asyncio.wait({asked}, timeout=_LEADER_PATIENCE)
            if done and asked.exception() is None:
                return asked.result()
            failure = asked.exception() if done else None
            if self._standby is not None:
                try:
                    call = getattr(self._standby, method).remote(*args)
                    answer = await asyncio.wait_for(_answer(call), _LEADER_PATIENCE * 5)
                    asked.cancel()
                    return answer
                except Exception as exc:  # it does not lead (or is away too)
                    get_logger().info("join_standby_refused", silo=self.name, error=repr(exc))
            if loop.time() > deadline:
                asked.cancel()
                raise failure or TimeoutError(f"no controller answered {method} in time")
            if done:  # the controller refused at once (restarting): ask it again
                await asyncio.sleep(0.2)
                asked = asyncio.ensure_future(
                    _answer(getattr(self._controller, method).remote(*args))
                )

    async def _follow_view(self) -> None:
        while not self.silo.closed:
            try:
                blob = await self._controller.wait_view.remote(
                    self.membership.view.version, 10.0, self.name
                )
            except Exception as exc:
                if self._controller_gone(exc):
                    await self.stop()
                    return
                get_logger().warning("view_follow_failed", silo=self.name, error=repr(exc))
                blob = await follow_standby(self._standby, self.membership.view.version, self.name)
                if blob is None:
                    continue
            await self.apply_view(view_from_wire(blob))

    async def apply_view(self, view: MembershipView) -> None:
        # One at a time: the follower reports a view applied only once its handover is done.
        async with self._applying:
            await self._apply_view(view)

    async def _apply_view(self, view: MembershipView) -> None:
        before = set(self.membership.view.dead())
        ring_before = self.membership.ring
        active_before = set(self.membership.view.active())
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
        if self.wire is not None:  # no redialling silos that died or left
            self.wire.retain(n for n, s in view.silos if s is not SiloStatus.DEAD)
        # Activations whose owner changed move: deactivate them here, and their queued and
        # future calls are forwarded to the new owner by the ring check on delivery.
        ring = self.membership.ring
        moving = [
            a
            for a in list(self.silo.activations.values())
            if len(ring) and ring.owner(a.actor_id) != self.name
        ]
        if self.membership.ring is not ring_before and _moves_off_live_silos(active_before, view):
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
                # Bounded here too: a controller that Ray is restarting answers only once back.
                await asyncio.wait_for(
                    _answer(self._controller.wait_settled.remote(version, _SETTLE_TIMEOUT)),
                    _SETTLE_TIMEOUT + 1.0,
                )
            except Exception as exc:
                get_logger().warning("view_settle_failed", silo=self.name, error=repr(exc))
            finally:
                gate.set_result(None)

        task = asyncio.ensure_future(settle())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def receive_batch(self, blob: bytes, sender: str) -> bytes:
        """A batch from ``sender`` (a silo's name or a client's address): its responses are
        taken only for calls this silo sent to ``sender``."""
        client, call_ids = "", set()
        malformed: list[Malformed] = []
        try:
            messages = unpack_batch(blob, malformed.append)
        except MalformedMessageError as exc:
            self.transport.log.refused(sender, "malformed_batch", silo=self.name, reason=str(exc))
            return b""
        for bad in malformed:
            self._refuse(sender, bad)
        for message in messages:
            if isinstance(message, Request):
                try:
                    self.silo.deliver_request(message)
                except Exception as exc:  # that message's fault, not its batch's
                    reason = f"{message.target}.{message.method} could not be delivered: {exc!r}"
                    bad = Malformed(
                        f"malformed message: {reason}", message.call_id, message.reply_to
                    )
                    self._refuse(sender, bad)
                if is_client_address(message.reply_to):
                    client = message.reply_to
                    call_ids.add(message.call_id)
            else:
                try:
                    self.silo.deliver_response(message, sender)
                except Exception as exc:  # (a notice this silo cannot take: that one only)
                    self.transport.log.refused(sender, "malformed_answer", reason=repr(exc))
        if not client:
            return b""
        # A client's batch carries its answers back when they are quick, which spares the
        # client's long poll a Ray call per round trip; slower ones go by the poll.
        return await self.transport.answers(client, call_ids)

    def _refuse(self, sender: str, bad: Malformed) -> None:
        """Answer a malformed message from ``sender``; warn of it at most once a minute per
        sender (the rest at debug, counted), as the direct plane does: a peer sending junk
        must not flood the log."""
        self.transport.log.refused(sender, "malformed_message", silo=self.name, reason=bad.reason)
        self.silo.reply_malformed(bad)

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
            "client_mailboxes": self.transport.mailboxes,
            "answers_expired": self.transport.answers_expired,
            "direct_address": self.direct_address,
            "direct_batches_sent": self.wire.batches_sent if self.wire else 0,
            "direct_messages_sent": self.wire.messages_sent if self.wire else 0,
            "direct_refused": self.wire.refused if self.wire else 0,
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
        if self._metrics is not None:
            await self._metrics.aclose()
        if self.wire is not None:
            await self.wire.aclose()
        await self.transport.aclose()
        await self.silo.storage.aclose()
