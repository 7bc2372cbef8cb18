"""Services that find each other on a host: a stable address per service (its *VIP*) that
follows blue/green switches, reachable only from the services that declare they need it.

Each service has a VIP in ``10.89.0.0/16`` derived from its name (the same on every host, so
a container's ``/etc/hosts`` can name a service that is not deployed yet). The ``ip orch`` nft
table DNATs a caller's connection to a VIP onto the callee's serving container, only for pairs
in the ``links`` set (caller container address . callee VIP): a service without the declared
dependency is not translated, and the forward chain drops anything still addressed to a VIP.
``render_names`` rewrites the VIP map and the links set; it is written in the same ``nft -f``
transaction as the published ports (``Host.switch_ports``) and as the peers set (container
start and stop), so the name moves with the port, atomically.

Pure, except ``read_names``/``run_sync_names`` at the end.
"""
from __future__ import annotations

import hashlib
import ipaddress
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

VIP_SUBNET = "10.89.0.0/16"
VIPS = "vips"
LINKS = "links"
DOMAIN = "orch"


def vip_of(service: str) -> str:
    """The service's stable address: 10.89.X.Y from a hash of its name (never .0.0, .0.1,
    or .255.255). Two services of one host with the same VIP are refused at admission."""
    n = int.from_bytes(hashlib.sha256(service.encode()).digest()[:4], "big") % (65536 - 3) + 2
    return str(ipaddress.ip_network(VIP_SUBNET).network_address + n)


def vip_clash(services: Iterable[str]) -> Tuple[str, str]:
    """A pair of service names sharing a VIP (or ``("", "")``)."""
    seen: Dict[str, str] = {}
    for s in sorted(set(services)):
        v = vip_of(s)
        if v in seen:
            return seen[v], s
        seen[v] = s
    return "", ""


def render_hosts_file(service: str, ip: str, needs: Sequence[str]) -> str:
    """The container's /etc/hosts: itself, and each service it needs by name and NAME.orch."""
    lines = ["127.0.0.1\tlocalhost", f"{ip}\t{service}"]
    lines += [f"{vip_of(n)}\t{n} {n}.{DOMAIN}" for n in sorted(set(needs))]
    return "\n".join(lines) + "\n"


def render_base_rules() -> Tuple[List[str], List[str], List[str]]:
    """(definitions, nat prerouting rules, forward rules) for the ``ip orch`` table."""
    defs = [f"  map {VIPS} {{ type ipv4_addr : ipv4_addr; }}",
            f"  set {LINKS} {{ type ipv4_addr . ipv4_addr; }}"]
    nat = [f"    ip saddr . ip daddr @{LINKS} dnat ip to ip daddr map @{VIPS}"]
    forward = [f"    ip daddr {VIP_SUBNET} drop"]
    return defs, nat, forward


def render_names(serving: Mapping[str, str], members: Iterable[Tuple[str, str]],
                 needs: Mapping[str, Sequence[str]], table: str = "orch") -> str:
    """nft commands that set the VIP map (service VIP -> serving container address) and the
    links set (every container of a service . the VIP of each service it needs)."""
    vips = sorted(((vip_of(s), ip) for s, ip in serving.items() if ip), key=_key)
    links = set()
    for service, ip in members:
        for callee in needs.get(service, ()):
            if ip and callee != service:
                links.add((ip, vip_of(callee)))
    lines = [f"flush map ip {table} {VIPS}"]
    if vips:
        lines.append(f"add element ip {table} {VIPS} {{ {', '.join(f'{v} : {ip}' for v, ip in vips)} }}")
    lines.append(f"flush set ip {table} {LINKS}")
    if links:
        lines.append(f"add element ip {table} {LINKS} {{ "
                     f"{', '.join(f'{a} . {b}' for a, b in sorted(links, key=_key))} }}")
    return "\n".join(lines) + "\n"


def _key(pair: Tuple[str, str]) -> Tuple[int, int]:
    return int(ipaddress.ip_address(pair[0])), int(ipaddress.ip_address(pair[1]))


# --- edge: what the host runs now ------------------------------------------------------

def read_names(layout) -> str:
    """``render_names`` for the containers on this host, its serving slots and its targets."""
    from runtime.meta import list_metas
    from runtime.spec import SpecError, Target
    from runtime.state import State

    state = State(layout)
    current = state.status().get("current") or {}
    metas = [m for m in list_metas(layout) if m.ip]
    serving = {m.service: m.ip for m in metas
               if (current.get(m.service) or {}).get("slot") == m.slot}
    needs: Dict[str, Sequence[str]] = {}
    for name, t in state.target().items():
        try:
            needs[name] = Target.from_json(name, t).deploy.needs
        except (SpecError, KeyError):
            continue
    return render_names(serving, ((m.service, m.ip) for m in metas), needs)
