"""Host bridge, per-container veth, outbound NAT and the published-port DNAT maps.

``render_*`` are pure and return the exact nft text or ``ip -batch`` lines; ``run_*`` apply
them. Switching a published port from blue to green is one ``nft -f`` transaction that
replaces the map's elements: new connections reach green, conntrack keeps established ones
on blue.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
import subprocess
from typing import Iterable, List, Tuple

from runtime.errors import RuntimeFailure

BRIDGE = "orch0"
SUBNET = "10.88.0.0/16"
GATEWAY = "10.88.0.1"
BRIDGE_MAC = "02:42:0a:58:00:01"
TABLE = "orch"
MAPS = {"tcp": "tcp_ports", "udp": "udp_ports"}

Entry = Tuple[str, int, str, int]  # (proto, host port, container ip, container port)


def render_base_ruleset(subnet: str = SUBNET, bridge: str = BRIDGE) -> str:
    """The whole table, created from scratch (``delete`` first keeps it idempotent)."""
    dnat = "\n".join(
        f"    fib daddr type local dnat ip addr . port to {proto} dport map @{m}"
        for proto, m in sorted(MAPS.items()))
    maps = "\n".join(f"  map {m} {{ type inet_service : ipv4_addr . inet_service; }}"
                     for _, m in sorted(MAPS.items()))
    return f"""table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
{maps}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
{dnat}
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
{dnat}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} oifname != "{bridge}" masquerade
    oifname "{bridge}" ip saddr 127.0.0.0/8 masquerade
  }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname "{bridge}" accept
    oifname "{bridge}" ct state established,related accept
    oifname "{bridge}" ct status dnat accept
  }}
}}
"""


def render_port_switch(entries: Iterable[Entry]) -> str:
    """One transaction: flush both maps and add the wanted elements."""
    lines: List[str] = []
    by_proto = {p: [] for p in MAPS}
    for proto, hport, ip, cport in sorted(entries):
        by_proto[proto].append(f"{hport} : {ip} . {cport}")
    for proto, m in sorted(MAPS.items()):
        lines.append(f"flush map ip {TABLE} {m}")
        if by_proto[proto]:
            lines.append(f"add element ip {TABLE} {m} {{ {', '.join(by_proto[proto])} }}")
    return "\n".join(lines) + "\n"


def veth_name(container_id: str) -> str:
    return "ov" + hashlib.sha256(container_id.encode()).hexdigest()[:12]


def render_host_link(container_id: str, pid: int, bridge: str = BRIDGE) -> List[str]:
    v = veth_name(container_id)
    return [f"link add {v} type veth peer name eth0 netns {pid}",
            f"link set {v} master {bridge} up"]


def render_container_link(ip: str, prefix: int = 16, gateway: str = GATEWAY) -> List[str]:
    return ["link set lo up", f"addr add {ip}/{prefix} dev eth0", "link set eth0 up",
            f"route add default via {gateway}"]


def render_bridge(bridge: str = BRIDGE, gateway: str = GATEWAY, prefix: int = 16) -> List[str]:
    # A fixed MAC: otherwise the bridge takes its lowest port's MAC, which changes whenever a
    # container's veth joins or leaves, and containers keep sending to the old gateway MAC.
    return [f"link add {bridge} address {BRIDGE_MAC} type bridge",
            f"addr add {gateway}/{prefix} dev {bridge}",
            f"link set {bridge} up"]


def _ip_batch(lines: List[str], prefix: Tuple[str, ...] = ()) -> None:
    p = subprocess.run(list(prefix) + ["ip", "-batch", "-"], input="\n".join(lines) + "\n",
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeFailure(f"ip -batch failed ({'; '.join(lines)}): {p.stderr.strip()}")


def run_nft(text: str) -> None:
    p = subprocess.run(["nft", "-f", "-"], input=text, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeFailure(f"nft -f failed: {p.stderr.strip()}")


def bridge_exists(bridge: str = BRIDGE) -> bool:
    try:
        socket.if_nametoindex(bridge)
        return True
    except OSError:
        return False


def _sysctl(path: str, value: str) -> None:
    # /proc/sys/net is per network namespace (it follows the writer's netns)
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def table_exists() -> bool:
    p = subprocess.run(["nft", "list", "table", "ip", TABLE], capture_output=True)
    return p.returncode == 0


def read_port_map() -> Tuple[bool, Tuple[Entry, ...]]:
    """(table present, the elements of both maps)."""
    p = subprocess.run(["nft", "-j", "list", "table", "ip", TABLE], capture_output=True,
                       text=True)
    if p.returncode != 0:
        return False, ()
    out: List[Entry] = []
    proto_of = {m: proto for proto, m in MAPS.items()}
    for item in json.loads(p.stdout).get("nftables", []):
        m = item.get("map")
        if not m or m.get("name") not in proto_of:
            continue
        for key, val in m.get("elem", []):
            ip, port = val["concat"]
            out.append((proto_of[m["name"]], int(key), str(ip), int(port)))
    return True, tuple(sorted(out))


def run_ensure_host_network() -> None:
    if not bridge_exists():
        _ip_batch(render_bridge())
    _sysctl("net/ipv4/ip_forward", "1")
    _sysctl(f"net/ipv4/conf/{BRIDGE}/route_localnet", "1")
    _sysctl("net/ipv4/conf/all/route_localnet", "1")
    if not table_exists():
        run_nft(render_base_ruleset())


def run_wire_container(container_id: str, pid: int, ip: str) -> None:
    _ip_batch(render_host_link(container_id, pid))
    _ip_batch(render_container_link(ip), prefix=("nsenter", "-t", str(pid), "-n"))


def run_unwire(key: str) -> None:
    """Delete the host end of a container's veth now (the kernel would, later)."""
    name = veth_name(key)
    if bridge_exists(name):
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def run_switch_ports(entries: Iterable[Entry]) -> None:
    run_nft(render_port_switch(entries))


def parse_listening(text: str, udp: bool = False) -> set:
    """Local ports in LISTEN state (tcp) or bound (udp) from /proc/net/{tcp,udp}[6] text."""
    ports = set()
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 4:
            continue
        if udp or f[3] == "0A":
            ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def host_listening(proto: str) -> set:
    """Ports something on this host (its network namespace) already listens on."""
    out: set = set()
    for name in (proto, proto + "6"):
        try:
            with open(f"/proc/net/{name}") as f:
                out |= parse_listening(f.read(), udp=proto == "udp")
        except OSError:
            pass
    return out


def allocate_ip(used: Iterable[str], cursor: int, subnet: str = SUBNET) -> Tuple[str, int]:
    """Next free address after ``cursor`` (rotating, so a fresh container rarely reuses a
    recent address whose neighbour entry may be stale). Returns (ip, new cursor)."""
    net = ipaddress.ip_network(subnet)
    taken = set(used)
    size = net.num_addresses
    for step in range(1, size):
        n = (cursor + step) % size
        if n < 2 or n == size - 1:
            continue
        ip = str(net.network_address + n)
        if ip not in taken:
            return ip, n
    raise RuntimeFailure(f"no free address left in {subnet}")
