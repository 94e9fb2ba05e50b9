"""What a new config changes in a running endpoint (hot reload), as a plan.

Theory of operation
-------------------
A reload hands the running `Endpoint` a new `EndpointSpec`.  `plan` compares
it with the running one and says what would change, without changing
anything, so the shell can open the sockets of added links first and give up
cleanly (old config still running) if one cannot be opened.  The endpoint
then applies the plan (`Endpoint.reconfigure`).

Links are matched by name.  A link whose name, remote and local binding
(interface, source, port) are unchanged keeps its link id, its socket, its
estimates and its place in the peer's reorder bookkeeping; only its weight
and backup flag may change.  A link whose remote or binding changed is a new
link under the old name (removed, then added: new socket, new id), since
everything learnt about the old path is stale.

Added links get the lowest id that is neither live nor still draining (a
removed link keeps its id and socket for `LINK_DRAIN_S` to absorb packets in
flight), so ids of unchanged links never move and ids stay small: only ids
below `wire.MASKABLE_LINKS` are announced in the link mask.

Peers are matched by public key.  On a server, peers come and go (a removed
peer's sessions are dropped); a client has one peer, the server, whose key
cannot change live (that is another tunnel: restart).  allowed_ips and the
preshared key may change on both (the psk is used from the next handshake).

What the endpoint cannot change live (role, private key) raises
`ReconfigError` naming the key and "needs a restart"; keys the endpoint does
not see (TUN, ports, control socket, user) are checked by the config layer.
"""

from __future__ import annotations

import base64
from collections.abc import Set
from dataclasses import dataclass, replace

from .spec import EndpointSpec, LinkSpec, PeerSpec, Role
from .wire import MAX_LINKS


class ReconfigError(Exception):
    """Local misuse: the new config cannot be applied live.  str() is the reason."""


@dataclass(frozen=True, slots=True)
class Reconfiguration:
    """A planned change.  `spec` is the new spec with link ids matched to the
    running endpoint's; `changes` says what changes, one short phrase each
    ("link lte added", "link wan weight 1->3"), empty if nothing does."""

    spec: EndpointSpec
    added_links: tuple[LinkSpec, ...]
    removed_links: tuple[LinkSpec, ...]
    added_peers: tuple[PeerSpec, ...]
    removed_peers: tuple[PeerSpec, ...]
    changes: tuple[str, ...]


def plan(old: EndpointSpec, new: EndpointSpec, draining_ids: Set[int]) -> Reconfiguration:
    """How to go from `old` to `new`; `draining_ids`: removed links whose id is
    not free yet.  Raises ReconfigError if it cannot be done live."""
    if new.role is not old.role:
        raise ReconfigError(
            f"the role changed ({old.role.value} -> {new.role.value}): needs a restart")
    if new.private_key != old.private_key:
        raise ReconfigError("interface.private_key changed: needs a restart")
    changes: list[str] = []
    added_peers, removed_peers = _plan_peers(old, new, changes)
    links, added_links, removed_links = _plan_links(old.links, new.links, draining_ids, changes)
    if new.scheduler != old.scheduler:
        changes.append(f"scheduler {old.scheduler} -> {new.scheduler}")
    if (new.duplicate_below, new.duplicate_dscp) != (old.duplicate_below, old.duplicate_dscp):
        changes.append(f"redundancy {_redundancy(old)} -> {_redundancy(new)}")
    if new.queue_target_s != old.queue_target_s:
        changes.append(f"queue target {_target(old.queue_target_s)} -> "
                       f"{_target(new.queue_target_s)}")
    if new.loss_repair != old.loss_repair:
        changes.append(f"loss repair {_on(old.loss_repair)} -> {_on(new.loss_repair)}")
    if new.reorder_hold_s != old.reorder_hold_s:
        changes.append(f"reorder hold {_hold(old.reorder_hold_s)} -> {_hold(new.reorder_hold_s)}")
    # partial_csum describes the TUN, which a reload keeps.
    return Reconfiguration(replace(new, links=links, partial_csum=old.partial_csum),
                           added_links, removed_links, added_peers, removed_peers,
                           tuple(changes))


def _plan_peers(old: EndpointSpec, new: EndpointSpec, changes: list[str]
                ) -> tuple[tuple[PeerSpec, ...], tuple[PeerSpec, ...]]:

    before = {peer.public_key: peer for peer in old.peers}
    after = {peer.public_key: peer for peer in new.peers}
    if old.role is Role.CLIENT and before.keys() != after.keys():
        raise ReconfigError("peer.public_key: the server's key changed: needs a restart")
    added = tuple(peer for key, peer in after.items() if key not in before)
    removed = tuple(peer for key, peer in before.items() if key not in after)
    changes.extend(f"peer {_short(peer.public_key)} added" for peer in added)
    changes.extend(f"peer {_short(peer.public_key)} removed" for peer in removed)
    for key, peer in after.items():
        was = before.get(key)
        if was is None:
            continue
        if was.allowed_ips != peer.allowed_ips:
            changes.append(f"peer {_short(key)} allowed_ips {_nets(was)} -> {_nets(peer)}")
        if was.preshared_key != peer.preshared_key:
            changes.append(f"peer {_short(key)} preshared_key changed (from the next handshake)")
    return added, removed


def _plan_links(old: tuple[LinkSpec, ...], new: tuple[LinkSpec, ...], draining_ids: Set[int],
                changes: list[str]
                ) -> tuple[tuple[LinkSpec, ...], tuple[LinkSpec, ...], tuple[LinkSpec, ...]]:
    before = {link.name: link for link in old}
    kept: dict[str, LinkSpec] = {}
    for link in new:
        was = before.get(link.name)
        if was is None or (was.remote, was.binding) != (link.remote, link.binding):
            continue
        kept[link.name] = replace(link, link_id=was.link_id)
        if was.weight != link.weight:
            changes.append(f"link {link.name} weight {was.weight}->{link.weight}")
        if was.backup != link.backup:
            changes.append(f"link {link.name} " + ("now a backup" if link.backup
                                                  else "no longer a backup"))
    removed = tuple(link for link in old if link.name not in kept)
    taken = set(draining_ids) | {link.link_id for link in old}
    free = (link_id for link_id in range(MAX_LINKS) if link_id not in taken)
    links: list[LinkSpec] = []
    added: list[LinkSpec] = []
    for link in new:
        if link.name in kept:
            links.append(kept[link.name])
            continue
        link_id = next(free, None)
        if link_id is None:
            raise ReconfigError(f"link {link.name}: no free link id ({MAX_LINKS} in use or "
                                "draining); retry in a few seconds")
        fresh = replace(link, link_id=link_id)
        links.append(fresh)
        added.append(fresh)
    replaced = {link.name for link in added} & {link.name for link in removed}
    for link in removed:
        if link.name not in replaced:
            changes.append(f"link {link.name} removed")
    for link in added:
        if link.name in replaced:
            was = before[link.name]
            changes.append(f"link {link.name} moved ({_where(was)} -> {_where(link)})")
        else:
            changes.append(f"link {link.name} added")
    return tuple(links), tuple(added), removed


def _where(link: LinkSpec) -> str:
    remote = "" if link.remote is None else f" to {link.remote[0]}:{link.remote[1]}"
    return f"{link.binding}{remote}".strip()


def _short(key: bytes) -> str:
    return base64.b64encode(key).decode()[:8]


def _nets(peer: PeerSpec) -> str:
    return "[" + ", ".join(str(net) for net in peer.allowed_ips) + "]"


def _hold(hold_s: float | None) -> str:
    return "measured" if hold_s is None else f"{hold_s * 1000:g} ms"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _target(target_s: float | None) -> str:
    return "off" if target_s is None else f"{target_s * 1000:g} ms"


def _redundancy(spec: EndpointSpec) -> str:
    parts = [f"<= {spec.duplicate_below} B"] if spec.duplicate_below else []
    if spec.duplicate_dscp:
        parts.append("dscp " + ",".join(str(v) for v in sorted(spec.duplicate_dscp)))
    return " or ".join(parts) or "off"
