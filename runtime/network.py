"""Host bridge, per-container veth, outbound NAT, the published-port DNAT maps, isolation.

``render_*`` are pure and return the exact nft text or ``ip -batch`` lines; ``run_*`` apply
them. Switching a published port from blue to green is one ``nft -f`` transaction that
replaces the map's elements: new connections reach green, conntrack keeps established ones
on blue.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import struct
import subprocess
from typing import Iterable, List, Tuple

from runtime import names, nftlib
from runtime.errors import RuntimeFailure

BRIDGE = "orch0"
SUBNET = "10.88.0.0/16"
GATEWAY = "10.88.0.1"
BRIDGE_MAC = "02:42:0a:58:00:01"
TABLE = "orch"
MAPS = {"tcp": "tcp_ports", "udp": "udp_ports"}
PEERS = "peers"
DNAT_MARK = 0x00880000   # a published port reached from a container, where br_netfilter bridges it
VETH_PREFIX = "ov"

Entry = Tuple[str, int, str, int]  # (proto, host port, container ip, container port)


def render_base_ruleset(subnet: str = SUBNET, bridge: str = BRIDGE) -> str:
    """Both tables, created from scratch (``delete`` first keeps it idempotent).

    ``ip orch``: published ports (DNAT maps), outbound NAT, and isolation at the IP layer:
    nothing from the bridge reaches the host itself (its sshd, anything it listens on) except
    replies to connections the host opened (health checks); a container reaches another
    through the host only by a published port (masqueraded, so the reply comes back the same
    way); nothing reaches a container unless it was published.
    ``bridge orch``: frames between two containers on the bridge pass only for address pairs
    in the ``peers`` set, which ``render_peers`` fills; nothing but IPv4 and ARP crosses between
    containers (no IPv6 link-local side channel). Where br_netfilter is loaded (Docker loads
    it), bridged IPv4 also passes the ``ip`` hooks: the same pairs are allowed there, and a
    container's connection to a published port of the same host is DNATed and then bridged,
    not routed: the ``published`` chain marks it so that the bridge lets it through."""
    dnat = "\n".join(
        f"    fib daddr type local dnat ip addr . port to {proto} dport map @{m}"
        for proto, m in sorted(MAPS.items()))
    maps = "\n".join(f"  map {m} {{ type inet_service : ipv4_addr . inet_service; }}"
                     for _, m in sorted(MAPS.items()))
    name_defs, name_nat, name_forward = names.render_base_rules()
    maps += "\n" + "\n".join(name_defs)
    return f"""table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
{maps}
  set {PEERS} {{ type ipv4_addr . ipv4_addr; }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
{dnat}
{chr(10).join(name_nat)}
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
{dnat}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} oifname != "{bridge}" masquerade
    oifname "{bridge}" ip saddr 127.0.0.0/8 masquerade
    oifname "{bridge}" ip saddr {subnet} ct status dnat masquerade
  }}
  chain published {{
    type filter hook prerouting priority -90; policy accept;
    ct status dnat meta mark set meta mark | {DNAT_MARK:#x}
  }}
  chain input {{
    type filter hook input priority 0; policy accept;
    iifname "{bridge}" ct state established,related accept
    iifname "{bridge}" drop
  }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname "{bridge}" oifname "{bridge}" ct status dnat accept
    iifname "{bridge}" oifname "{bridge}" ip saddr . ip daddr @{PEERS} accept
    iifname "{bridge}" oifname "{bridge}" ip daddr . ip saddr @{PEERS} ct state established,related accept
    iifname "{bridge}" oifname "{bridge}" drop
{chr(10).join(name_forward)}
    iifname "{bridge}" accept
    oifname "{bridge}" ct state established,related accept
    oifname "{bridge}" ct status dnat accept
    oifname "{bridge}" drop
  }}
}}
table bridge {TABLE}
delete table bridge {TABLE}
table bridge {TABLE} {{
  set {PEERS} {{ type ipv4_addr . ipv4_addr; }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname != "{VETH_PREFIX}*" accept
    oifname != "{VETH_PREFIX}*" accept
    ether type arp accept
    ether type != ip drop
    ip saddr . ip daddr @{PEERS} accept
    ip daddr . ip saddr @{PEERS} tcp flags & ack == ack accept
    meta mark & {DNAT_MARK:#x} == {DNAT_MARK:#x} accept
    drop
  }}
}}
"""


def render_peers(members: Iterable[Tuple[str, str]],
                 links: Iterable[Tuple[str, str]] = ()) -> str:
    """One transaction that sets who may talk to whom across the bridge.

    ``members`` are (service, container ip) of every container on the host; the slots of one
    service (blue and green) may always reach each other. ``links`` are extra (from service,
    to service) pairs, for services that declare they use another: the caller reaches the
    callee, and TCP replies flow back (the reverse rule above), but not the other way round."""
    ips: dict = {}
    for service, ip in members:
        ips.setdefault(service, set()).add(ip)
    pairs = set()
    for src, dst in {(s, s) for s in ips} | set(links):
        for a in ips.get(src, ()):
            for b in ips.get(dst, ()):
                if a != b:
                    pairs.add((a, b))
    elems = ", ".join(f"{a} . {b}" for a, b in sorted(pairs, key=_pair_key))
    lines = []
    for family in ("bridge", "ip"):
        lines.append(f"flush set {family} {TABLE} {PEERS}")
        if pairs:
            lines.append(f"add element {family} {TABLE} {PEERS} {{ {elems} }}")
    return "\n".join(lines) + "\n"


def _pair_key(pair: Tuple[str, str]) -> Tuple[int, int]:
    return int(ipaddress.ip_address(pair[0])), int(ipaddress.ip_address(pair[1]))


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
    return VETH_PREFIX + hashlib.sha256(container_id.encode()).hexdigest()[:12]


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


def _nft(text: str) -> Tuple[int, str]:
    """(exit code, error text) of ``nft -f -`` fed ``text``: in this process through
    libnftables (nftlib.py: no process, no wait for the kernel's cleanup), else by the binary."""
    ctx = nftlib.context()
    if ctx is not None:
        code, _, err = ctx.run(text)
        return code, err
    p = subprocess.run(["nft", "-f", "-"], input=text, capture_output=True, text=True)
    return p.returncode, p.stderr


def _nft_list(args: List[str], json_output: bool = False) -> Tuple[int, str]:
    """(exit code, output) of ``nft [-j] list ARGS...`` (the binary's ``-j -f`` would read
    its input as JSON)."""
    ctx = nftlib.context()
    if ctx is not None:
        code, out, _ = ctx.run(" ".join(["list"] + args), json_output)
        return code, out
    p = subprocess.run(["nft"] + (["-j"] if json_output else []) + ["list"] + args,
                       capture_output=True, text=True)
    return p.returncode, p.stdout


def run_nft(text: str) -> None:
    """``text`` as one transaction: all of it or, refused, none of it."""
    code, err = _nft(text)
    if code != 0:
        raise RuntimeFailure(f"nft -f failed: {err.strip()}")


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
    return _nft_list(["table", "ip", TABLE])[0] == 0


def _read_table() -> Tuple[bool, Tuple[Entry, ...]]:
    """(the table is the current ruleset, the elements of both maps, whatever its version)."""
    code, text = _nft_list(["table", "ip", TABLE], json_output=True)
    if code != 0:
        return False, ()
    out: List[Entry] = []
    chains, sets = set(), set()
    proto_of = {m: proto for proto, m in MAPS.items()}
    for item in json.loads(text).get("nftables", []):
        if "chain" in item:
            chains.add(item["chain"].get("name"))
        if "map" in item or "set" in item:
            sets.add((item.get("map") or item.get("set")).get("name"))
        m = item.get("map")
        if not m or m.get("name") not in proto_of:
            continue
        for key, val in m.get("elem", []):
            ip, port = val["concat"]
            out.append((proto_of[m["name"]], int(key), str(ip), int(port)))
    current = "input" in chains and names.VIPS in sets and \
        _nft_list(["table", "bridge", TABLE])[0] == 0
    return current, tuple(sorted(out))


def read_port_map() -> Tuple[bool, Tuple[Entry, ...]]:
    """(table present and current, the elements of both maps). A table written by an older
    agent (without the isolation chains) reads as absent, so the planner ensures the network."""
    return _read_table()


def run_ensure_host_network() -> None:
    if not bridge_exists():
        _ip_batch(render_bridge())
    _sysctl("net/ipv4/ip_forward", "1")
    _sysctl(f"net/ipv4/conf/{BRIDGE}/route_localnet", "1")
    _sysctl("net/ipv4/conf/all/route_localnet", "1")
    current, entries = _read_table()
    if not current:   # the published ports move into the new tables in the same transaction
        run_nft(render_base_ruleset() + render_port_switch(entries))


def render_forget_neighbour(ip: str, bridge: str = BRIDGE) -> List[str]:
    # The address may have been a stopped container's moments ago: the host's neighbour entry
    # still names that veth's MAC, and until it expires (seconds) the host sends the new
    # container frames it drops, so health checks and published ports time out.
    return [f"neigh flush to {ip} dev {bridge}"]


def run_wire_container(container_id: str, pid: int, ip: str) -> None:
    _ip_batch(render_host_link(container_id, pid) + render_forget_neighbour(ip))
    _ip_batch(render_container_link(ip), prefix=("nsenter", "-t", str(pid), "-n"))


def run_unwire(key: str) -> None:
    """Delete the host end of a container's veth now (the kernel would, later)."""
    name = veth_name(key)
    if bridge_exists(name):
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def run_switch_ports(entries: Iterable[Entry], names_text: str = "") -> None:
    """The published ports (and the service names, ``names.render_names``) in one transaction."""
    run_nft(render_port_switch(entries) + names_text)


def run_set_peers(members: Iterable[Tuple[str, str]], names_text: str = "") -> None:
    run_nft(render_peers(members) + names_text)


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


# sock_diag (linux/inet_diag.h): a dump of this namespace's TCP sockets in LISTEN state
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20
NLM_F_REQUEST, NLM_F_DUMP, NLMSG_ERROR, NLMSG_DONE = 0x1, 0x300, 2, 3
TCP_LISTEN = 10


def render_diag_request(family: int, seq: int) -> bytes:
    """nlmsghdr + inet_diag_req_v2 (family, TCP, no extensions, LISTEN only, any socket id)."""
    body = struct.pack("=BBBxI48x", family, socket.IPPROTO_TCP, 0, 1 << TCP_LISTEN)
    return struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY,
                       NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_diag_ports(data: bytes) -> Tuple[set, bool]:
    """(local ports of the inet_diag_msg records in ``data``, whether the dump is done);
    OSError for an error message."""
    ports, pos = set(), 0
    while pos + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, pos)
        if length < 16:
            break
        if kind == NLMSG_DONE:
            return ports, True
        if kind == NLMSG_ERROR:
            err = -struct.unpack_from("=i", data, pos + 16)[0]
            raise OSError(err, f"sock_diag: {os.strerror(err)}")
        if kind == SOCK_DIAG_BY_FAMILY and length >= 16 + 8:
            ports.add(struct.unpack_from("!H", data, pos + 16 + 4)[0])   # id.idiag_sport
        pos += (length + 3) & ~3
    return ports, False


def tcp_listening() -> set:
    """Ports of this network namespace's TCP listeners (IPv4 and IPv6), from the kernel's
    socket diagnostics: it walks the listening sockets only, where /proc/net/tcp walks every
    connection of every namespace (4 ms a file on a busy lab machine)."""
    out: set = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
        s.settimeout(5.0)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            s.sendall(render_diag_request(family, seq))
            done = False
            while not done:
                ports, done = parse_diag_ports(s.recv(65536))
                out |= ports
    return out


def host_listening(proto: str) -> set:
    """Ports something on this host (its network namespace) already listens on (TCP) or has
    bound (UDP)."""
    if proto == "tcp":
        try:
            return tcp_listening()
        except OSError:
            pass            # no inet_diag in this kernel: what /proc says
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
