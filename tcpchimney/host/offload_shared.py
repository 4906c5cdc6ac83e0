"""Shared neighbor and path objects: updates of cached state and next-hop changes (spec 3.4)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from tcpchimney.chimney.completions import StateCompletion
from tcpchimney.chimney.neighbor import NeighborCached
from tcpchimney.chimney.path import PathCached
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.registry import Phase
from tcpchimney.chimney.requests import InitiateOffload, TerminateOffload, UpdateOffload
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.tree import (
    PLACEHOLDER,
    Layer,
    LinkedObject,
    NewObject,
    Role,
    TreeNode,
    build_tree,
    walk,
)
from tcpchimney.host.events import OffloadCallDone
from tcpchimney.host.offload_base import OffloadBase
from tcpchimney.host.offload_state import Pending, SharedObject

if TYPE_CHECKING:
    from tcpchimney.host.sockets import TcpSocket


class OffloadShared(OffloadBase):
    """The shared neighbor and path objects: cached-state updates, next-hop changes (spec 3.4)."""

    # ================================================================== updates of cached state

    def _check_neighbors(self) -> None:
        for obj in list(self._neighbors.values()):
            self._reconcile(obj)
        if self._verifying:
            self._check_verified()

    def _wanted(self, obj: SharedObject) -> bytes | int | None:
        if obj.layer is Layer.PATH:
            return self.stack.path_mtu(obj.key)
        entry = self.stack.arp.entry(obj.key)
        return None if entry is None else entry.mac

    def _reconcile(self, obj: SharedObject) -> None:
        """Send the target the current cached value of ``obj`` if it changed (one update at a time)."""
        wanted = self._wanted(obj)
        if (
            wanted is None
            or wanted == obj.sent
            or obj.target_handle is None
            or obj.handle not in self.registry
        ):
            return
        rec = self.registry.record(obj.handle)
        if rec.invalidated:
            return  # never updated again (spec 3.3): its connections are on their way back
        if rec.phase is not Phase.OFFLOADED or rec.updating:
            obj.pending = True
            return
        if obj.layer is Layer.PATH:
            assert isinstance(wanted, int)
            node: TreeNode = LinkedObject(obj.target_handle, obj.handle, PathCached(wanted))
            tree = build_tree([(PLACEHOLDER, node, None)])
        else:
            assert isinstance(wanted, bytes)
            node = LinkedObject(obj.target_handle, obj.handle, NeighborCached(wanted))
            tree = build_tree([(node, None, None)])
        obj.pending = False
        if self._submit(UpdateOffload(self._rid(), tree), Pending("update", None, (obj,))):
            obj.sent = wanted

    def _update_tcp(self, sock: TcpSocket) -> None:
        off = sock.offload
        assert off is not None and off.ctx is not None and off.cached is not None
        if off.updating or off.finished:
            return
        c = sock.conn.config
        new = replace(
            off.cached,
            initial_rcv_wnd=c.rcv_buf,
            nodelay=c.nodelay,
            keepalive=c.keepalive,
            keepalive_idle=c.keepalive_idle,
            keepalive_interval=c.keepalive_interval,
            keepalive_probes=c.keepalive_probes,
        )
        flags = replace(
            new,
            update_rcv_wnd=new.initial_rcv_wnd != off.cached.initial_rcv_wnd,
            keepalive_restart=(new.keepalive, new.keepalive_idle)
            != (off.cached.keepalive, off.cached.keepalive_idle),
        )
        off.update_pending = False
        if new == off.cached:
            return
        tree = build_tree([(PLACEHOLDER, PLACEHOLDER, LinkedObject(off.ctx, off.handle, flags))])
        if self._submit(UpdateOffload(self._rid(), tree), Pending("update", sock)):
            off.cached, off.updating = new, True
            off.call_started = self.now

    def _on_update_done(self, pending: Pending, completion: StateCompletion) -> None:
        failed = any(b.status is not Status.SUCCESS for b in walk(completion.tree) if b.role is Role.LINKER)
        sock = pending.sock
        if sock is not None:
            off = sock.offload
            assert off is not None
            off.updating = False
            duration = max(0.0, self.now - off.call_started)
            self.stack._events.append(OffloadCallDone(sock, "update", not failed, duration))
            if failed:
                self.upload(sock, Reason.HARDWARE_FAILURE)  # spec 3.3: a failed update terminates the object
            elif off.upload_after is not None:
                reason, off.upload_after = off.upload_after, None
                self.upload(sock, reason)
            elif off.update_pending:
                self._update_tcp(sock)
            return
        for obj in pending.objects:
            if failed:
                reason = Reason.PATH_CHANGE if obj.layer is Layer.PATH else Reason.NEIGHBOR_CHANGE
                for s in self._dependents(obj):
                    self.upload(s, reason)
                self._drop_shared(obj)
            else:
                self._reconcile(obj)

    def _dependents(self, obj: SharedObject) -> list[TcpSocket]:
        out = []
        for sock in self._by_handle.values():
            path = sock.offload.path if sock.offload is not None else None
            if path is obj or (path is not None and path.parent is obj):
                out.append(sock)
        return out

    def _drop_shared(self, obj: SharedObject) -> None:
        """New connections get a fresh object: this one failed or is going away."""
        table = self._paths if obj.layer is Layer.PATH else self._neighbors
        if table.get(obj.key) is obj:
            del table[obj.key]

    # ================================================================== next-hop change (spec 3.4)
    #
    # The next hop is not a path field: it is the neighbor a path is linked to. For every offloaded path
    # whose route now names another next hop the host follows the spec's sequence: resolve the new next hop
    # (ARP), offload it as a neighbor of its own if the target does not hold it yet, relink the paths to it
    # with one update rooted at it, then terminate the old neighbor once no path hangs on it. The connections
    # stay offloaded throughout. The optional first step (invalidate the old neighbor) is skipped: an
    # invalidated neighbor makes the target stop its connections and ask for their (mandatory) upload
    # (INVALID_STATE), which would undo the relink; until the new next hop resolves the target keeps sending
    # through the old one, as frames already queued to it would. No route, or a next hop that does not
    # resolve: the connections are uploaded (PATH_CHANGE / NEIGHBOR_CHANGE) and the host engine carries on.

    def _check_routes(self) -> None:
        waiting = False
        moves: dict[bytes, list[SharedObject]] = {}
        for path in self._paths_in_use():
            hop = self.stack.iface.next_hop(path.key)
            if path.parent is not None and path.parent.key == hop:
                continue
            rec = self.registry.record(path.handle)
            if rec.invalidated:
                continue
            if rec.phase is not Phase.OFFLOADED or rec.updating or path.target_handle is None:
                waiting = True  # its offload, update or upload completes first
            elif hop is None:
                self._upload_dependents(path, Reason.PATH_CHANGE)
            elif self.stack.arp.lookup(hop, self.now) is not None:
                self._resolving.discard(hop)
                moves.setdefault(hop, []).append(path)
            elif self._resolve(hop):
                waiting = True
            else:
                self._upload_dependents(path, Reason.NEIGHBOR_CHANGE)
        for hop, paths in moves.items():
            waiting |= not self._relink(hop, paths)
        self._route_dirty = waiting

    def _paths_in_use(self) -> list[SharedObject]:
        """The paths of the connections on the target or on their way (a dict keeps them unique and in a
        stable order)."""
        paths: dict[int, SharedObject] = {}
        for sock in self._by_handle.values():
            path = sock.offload.path if sock.offload is not None else None
            if path is not None and path.handle in self.registry:
                paths[path.handle] = path
        return list(paths.values())

    def _resolve(self, hop: bytes) -> bool:
        """Resolution of ``hop`` is under way (started now if needed); False once it failed."""
        entry = self.stack.arp.entry(hop)
        if entry is None and hop in self._resolving:
            self._resolving.discard(hop)  # the ARP cache gave up on it (NeighborUnreachable)
            return False
        if entry is None and self.stack.arp.resolve(hop, self.now) is None:
            return False
        self._resolving.add(hop)
        return True

    def _upload_dependents(self, obj: SharedObject, reason: Reason) -> None:
        for sock in self._dependents(obj):
            self.upload(sock, reason)

    def _relink(self, hop: bytes, paths: list[SharedObject]) -> bool:
        """Steps 2-3: the new neighbor offloaded (alone) if needed, then the paths relinked to it. True when
        the relink update went to the target."""
        mac = self.stack.arp.lookup(hop, self.now)
        assert mac is not None
        neighbor, node = self._neighbor_node(hop, mac)
        if neighbor is None:
            return False  # being offloaded: the relink follows its completion
        if isinstance(node, NewObject):
            request = InitiateOffload(self._rid(), build_tree([(node, None, None)]))
            if not self._submit(request, Pending("neighbor", None, (neighbor, *paths))):
                self._drop_shared(neighbor)
            return False
        assert neighbor.target_handle is not None
        if self.registry.record(neighbor.handle).updating:
            return False  # a MAC update of the new neighbor is in flight: one update at a time (3.3)
        root = LinkedObject(neighbor.target_handle, neighbor.handle)
        tree = build_tree([(root, LinkedObject(p.target_handle or 0, p.handle), None) for p in paths])
        return self._submit(UpdateOffload(self._rid(), tree), Pending("relink", None, (neighbor, *paths)))

    def _on_neighbor_done(self, pending: Pending, completion: StateCompletion) -> None:
        neighbor, *paths = pending.objects
        block = next((b for b in walk(completion.tree) if b.host_handle == neighbor.handle), None)
        if block is not None and block.status.ok:
            neighbor.target_handle = block.target_handle
            self._reconcile(neighbor)  # ARP may have learnt another MAC meanwhile
        else:  # the target cannot hold the new next hop: the connections that needed it come back
            self._drop_shared(neighbor)
            for path in paths:
                self._upload_dependents(path, Reason.NEIGHBOR_CHANGE)
        self._route_dirty = True  # the relink goes next

    def _on_relink_done(self, pending: Pending, completion: StateCompletion) -> None:
        """Step 4: an old neighbor no path hangs on any more is terminated. A path the target could not
        relink (FAILURE: corrupt hardware, spec 3.3) has its connections uploaded."""
        neighbor, *paths = pending.objects
        status = {b.host_handle: b.status for b in walk(completion.tree)}
        old: dict[int, SharedObject] = {}
        for path in paths:
            if status.get(path.handle) is Status.SUCCESS:
                if path.parent is not None:
                    old[path.parent.handle] = path.parent
                path.parent = neighbor
                self._reconcile(path)  # a PMTU change that waited for this update
            else:
                self._upload_dependents(path, Reason.NEIGHBOR_CHANGE)
        self._reconcile(neighbor)
        for obj in old.values():
            self._release_neighbor(obj)
        self._route_dirty = True

    def _release_neighbor(self, obj: SharedObject) -> None:
        if obj.target_handle is None or not self._last_user(obj, 0):
            return
        tree = build_tree([(LinkedObject(obj.target_handle, obj.handle), None, None)])
        if self._submit(TerminateOffload(self._rid(), tree), Pending("terminate", None, (obj,))):
            self._drop_shared(obj)
