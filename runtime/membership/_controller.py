"""The membership controller: keeps the cluster's view, hands it out, declares silos dead.

Host-agnostic: the Ray host wraps ``ControllerImpl`` in a Ray actor and supplies how a silo is
probed and stopped. The view is stored (compare-and-swap) in the cluster's state store, so a
restarted controller continues from it, and a standby controller can lead from it while the
controller is down (``take_over``), then hand back (``step_down``, ``resume``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from raygrain.actors import ActorId, InconsistentStateError
from raygrain.runtime.kernel import (
    MembershipView,
    SiloStatus,
    get_logger,
    view_from_wire,
    view_to_wire,
)
from raygrain.runtime.membership._detection import FailureDetection
from raygrain.storage import StorageProvider

MEMBERSHIP_RECORD = ActorId("raygrain.membership", "view")  # a deployment's of its own: see below


def membership_record(deployment: str) -> ActorId:
    """Where the deployment ``deployment`` stores its membership view: one record per
    deployment, so that two deployments on one store (the default state file of one
    directory, one database) never take each other's view."""
    return ActorId("raygrain.membership", f"view:{deployment}")


__all__ = ["MEMBERSHIP_RECORD", "ControllerImpl", "NotLeading", "SiloDied", "membership_record"]


class SiloDied(Exception):
    """Raised by a probe when the silo is known to be dead (not merely slow)."""


class NotLeading(Exception):
    """Raised by a standby asked to change the view while the controller leads: ask it."""


class ControllerImpl:
    """Keeps the cluster's membership view, hands it to silos and clients (long poll), and
    declares silos dead when they stop answering probes."""

    def __init__(
        self,
        detection: FailureDetection | None = None,
        store: StorageProvider | None = None,
        record: ActorId = MEMBERSHIP_RECORD,
    ) -> None:
        self.view = MembershipView(0)
        self._store = store
        self._record = record  # the stored view's record (one per deployment)
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
        # Whether this controller changes the view; a standby probes the silos all along (so
        # that it knows at once which ones died) but declares nothing until it takes over.
        self.leading = True

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
        record = await self._store.read(self._record)
        self._etag = record.etag
        if record.data is not None:
            self.follow(view_from_wire(record.data))
        self._loaded = True

    def follow(self, view: MembershipView) -> None:
        """Take ``view`` as the current one and probe its active silos (a standby follows the
        controller's view so)."""
        self.view = view
        for name in view.active():
            if name not in self._watchers:
                self._watchers[name] = asyncio.ensure_future(self._watch(name))

    async def take_over(self) -> None:
        """(A standby) lead from the stored view: probe its silos and change the view."""
        async with self._lock:
            self.leading = True
            self._loaded = False
            await self._load()
            get_logger().warning("controller_standby_leading", view=self.view.version)
            self._wake_long_polls()

    async def step_down(self) -> None:
        """(A standby) stop leading: the controller is back."""
        async with self._lock:
            self.leading = False
            self._wake_long_polls()  # so that they go back to the controller

    async def resume(self, missed: dict[str, int] | None = None) -> None:
        """Read the stored view again (a standby changed it meanwhile) and lead from it.
        ``missed``: the probes the standby saw missed in a row, per silo, so that a silo that
        died with this controller's process is declared as soon as it would have been rather
        than after a whole new round of probes (a restarted controller has none)."""
        async with self._lock:
            self._loaded = False
            for name, count in (missed or {}).items():
                self._missed[name] = max(self._missed.get(name, 0), int(count))
            await self._load()
            self._wake_long_polls()

    def missed_probes(self) -> dict[str, int]:
        """The probes missed in a row, per silo with at least one (handed on by a standby)."""
        return {name: count for name, count in self._missed.items() if count > 0}

    def _wake_long_polls(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        self._signal_progress()

    async def _publish(self, view: MembershipView) -> bytes:
        blob = view_to_wire(view)
        if self._store is not None:
            # Compare-and-swap on the stored view, like Orleans' membership table: a second
            # controller writing behind our back makes this fail instead of forking the view.
            self._etag = await self._store.write(self._record, blob, self._etag)
        self.view = view
        self._wake_long_polls()
        return blob

    def _signal_progress(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def set_status(self, name: str, status: str, node_id: str = "") -> bytes:
        """Set silo ``name``'s status (a silo joins with "active"). A standby does so only
        while it leads (a silo that joins while Ray restarts the controller asks it)."""
        if not self.leading:
            raise NotLeading(f"this standby does not lead: ask the controller ({name} {status})")
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
                self._missed[name] = detection.missed_probes  # (a standby remembers it)
                if self.leading and await self._try_to_declare_dead(
                    name, f"Ray reports it dead: {exc}"
                ):
                    return
            except Exception as exc:  # a timeout, or Ray unsure: a missed probe
                missed = self._missed[name] = self._missed.get(name, 0) + 1
                if (
                    self.leading
                    and missed >= detection.missed_probes
                    and not self._most_are_suspected()
                ):
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
        if not self._loaded:  # (once loaded, never behind a view change that holds the lock)
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
