"""nft and ip rendering (pure), and one real port switch inside a namespace made here."""
import os
import subprocess
import uuid

import pytest

from runtime import network


def test_port_switch_is_one_flush_and_add_per_map():
    text = network.render_port_switch([("tcp", 8080, "10.88.0.3", 80),
                                       ("udp", 53, "10.88.0.3", 53),
                                       ("tcp", 443, "10.88.0.3", 8443)])
    assert text == (
        "flush map ip orch tcp_ports\n"
        "add element ip orch tcp_ports { 443 : 10.88.0.3 . 8443, 8080 : 10.88.0.3 . 80 }\n"
        "flush map ip orch udp_ports\n"
        "add element ip orch udp_ports { 53 : 10.88.0.3 . 53 }\n")


def test_empty_switch_only_flushes():
    assert network.render_port_switch([]) == ("flush map ip orch tcp_ports\n"
                                              "flush map ip orch udp_ports\n")


def test_base_ruleset_has_dnat_maps_and_masquerade():
    text = network.render_base_ruleset()
    assert "dnat ip addr . port to tcp dport map @tcp_ports" in text
    assert "type nat hook output priority -100" in text
    assert 'ip saddr 10.88.0.0/16 oifname != "orch0" masquerade' in text


def test_links():
    assert network.render_host_link("oabc-web-a", 42) == [
        f"link add {network.veth_name('oabc-web-a')} type veth peer name eth0 netns 42",
        f"link set {network.veth_name('oabc-web-a')} master orch0 up"]
    assert len(network.veth_name("o12345678-some-very-long-service-name-b")) <= 15


def test_allocate_ip_rotates_and_skips_used():
    assert network.allocate_ip([], 1) == ("10.88.0.2", 2)
    assert network.allocate_ip(["10.88.0.3"], 2) == ("10.88.0.4", 4)
    ip, n = network.allocate_ip([], 65534)
    assert ip == "10.88.0.2"


@pytest.fixture
def netns():
    name = "orch-rt-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


@pytest.mark.parametrize("how", ["library", "binary"])
def test_real_table_and_atomic_switch_in_a_namespace(netns, how):
    env = dict(os.environ, ORCH_NFT="binary") if how == "binary" else None
    code = ("from runtime import network as n; n.run_ensure_host_network(); "
            "n.run_switch_ports([('tcp', 8080, '10.88.0.7', 80)]); print(n.read_port_map()); "
            "n.run_ensure_host_network(); n.run_switch_ports([('tcp', 8080, '10.88.0.9', 80)]); "
            "print(n.read_port_map())")
    out = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "python3", "-c", code],
                         capture_output=True, text=True, check=True,
                         env=env).stdout.splitlines()
    assert out == ["(True, (('tcp', 8080, '10.88.0.7', 80),))",
                   "(True, (('tcp', 8080, '10.88.0.9', 80),))"]


def test_cgroup_mode_and_runtime_choice():
    from runtime import oci
    hybrid = ("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
              "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    unified = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
    legacy = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    assert [oci.cgroup_mode(x) for x in (hybrid, unified, legacy, "")] == ["hybrid", "unified",
                                                                              "legacy", "none"]
    assert oci.runtime_order("hybrid") == ["runc", "crun"]
    assert oci.runtime_order("unified") == ["crun", "runc"]
    assert oci.runtime_order("hybrid", "crun") == ["crun"]


def test_cgroup_mounts_are_copied_from_init_only_when_missing():
    from runtime import cgroups
    init = cgroups.parse_mountinfo(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
        "22 1 0:21 / /proc rw - proc proc rw\n")
    assert cgroups.render_cgroup_mounts(init, []) == [
        ["mount", "-t", "tmpfs", "-o", "mode=755,nosuid,nodev,noexec", "tmpfs", "/sys/fs/cgroup"],
        ["mkdir", "-p", "/sys/fs/cgroup/memory"],
        ["mount", "-t", "cgroup", "-o", "memory", "cgroup", "/sys/fs/cgroup/memory"],
        ["mkdir", "-p", "/sys/fs/cgroup/systemd"],
        ["mount", "-t", "cgroup", "-o", "name=systemd", "cgroup", "/sys/fs/cgroup/systemd"],
        ["mkdir", "-p", "/sys/fs/cgroup/unified"],
        ["mount", "-t", "cgroup2", "-o", "defaults", "cgroup2", "/sys/fs/cgroup/unified"]]
    assert cgroups.render_cgroup_mounts(init, init) == []


def test_parse_listening():
    text = ("  sl  local_address rem_address   st tx_queue rx_queue\n"
            "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n"
            "   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000\n")
    assert network.parse_listening(text) == {22}
    assert network.parse_listening(text, udp=True) == {22, 8080}


def test_base_ruleset_isolates_the_host_and_the_containers():
    text = network.render_base_ruleset()
    # nothing from the bridge reaches the host but replies
    assert ('iifname "orch0" ct state established,related accept\n'
            '    iifname "orch0" drop') in text
    # routed container-to-container only through a published port; nothing unpublished inbound
    assert 'iifname "orch0" oifname "orch0" drop' in text and 'oifname "orch0" drop\n  }' in text
    assert 'oifname "orch0" ip saddr 10.88.0.0/16 ct status dnat masquerade' in text   # hairpin
    # between bridge ports: only listed address pairs, IPv4 and ARP
    assert "table bridge orch" in text and "ip saddr . ip daddr @peers accept" in text
    assert "ether type != ip drop" in text and text.rstrip().endswith("drop\n  }\n}")


def test_peers_within_a_service_both_ways_and_links_one_way():
    members = [("web", "10.88.0.2"), ("web", "10.88.0.3"), ("db", "10.88.0.4"), ("api", "10.88.0.10")]
    assert network.render_peers(members) == (
        "flush set bridge orch peers\n"
        "add element bridge orch peers { 10.88.0.2 . 10.88.0.3, 10.88.0.3 . 10.88.0.2 }\n"
        "flush set ip orch peers\n"
        "add element ip orch peers { 10.88.0.2 . 10.88.0.3, 10.88.0.3 . 10.88.0.2 }\n")
    linked = network.render_peers(members, links=[("api", "db")])
    assert "10.88.0.10 . 10.88.0.4" in linked and "10.88.0.4 . 10.88.0.10" not in linked
    assert network.render_peers([("web", "10.88.0.2")]) == ("flush set bridge orch peers\n"
                                                            "flush set ip orch peers\n")


def test_an_older_table_is_upgraded_keeping_its_published_ports(netns):
    """A host whose table was written by an agent without isolation: it reads as not ready,
    and ensuring the network replaces it in one transaction that keeps the port map."""
    old = ("table ip orch {\n"
           "  map tcp_ports { type inet_service : ipv4_addr . inet_service; }\n"
           "  map udp_ports { type inet_service : ipv4_addr . inet_service; }\n"
           "}\n"
           "add element ip orch tcp_ports { 8080 : 10.88.0.7 . 80 }\n")
    code = ("import sys; from runtime import network as n; n.run_nft(sys.stdin.read()); "
            "print(n.read_port_map()); n.run_ensure_host_network(); print(n.read_port_map())")
    out = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "python3", "-c", code], input=old,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["(False, (('tcp', 8080, '10.88.0.7', 80),))",
                   "(True, (('tcp', 8080, '10.88.0.7', 80),))"]


def test_wiring_a_container_forgets_the_hosts_neighbour_entry_for_its_address():
    # the address may have been another container's moments ago (its MAC is still cached)
    assert network.render_forget_neighbour("10.88.0.7") == ["neigh flush to 10.88.0.7 dev orch0"]


# The port switch, the peers update and the table read happen in the agent's own process
# (runtime/nftlib.py): `nft -f` paid 16-23 ms per switch, mostly its socket's close waiting for
# the kernel to free the flushed elements. The child records every process it starts.
SPAWN_RECORDER = (
    "import subprocess, sys\n"
    "spawned = []\n"
    "_popen = subprocess.Popen.__init__\n"
    "def rec(self, args, *a, **kw):\n"
    "    spawned.append(args[0] if isinstance(args, (list, tuple)) else args)\n"
    "    return _popen(self, args, *a, **kw)\n"
    "subprocess.Popen.__init__ = rec\n")


def test_switch_peers_and_read_start_no_nft_process(netns):
    code = SPAWN_RECORDER + (
        "from runtime import network as n\n"
        "n.run_ensure_host_network()\n"
        "del spawned[:]\n"
        "n.run_switch_ports([('tcp', 8080, '10.88.0.7', 80)])\n"
        "n.run_set_peers([('web', '10.88.0.7'), ('web', '10.88.0.8')])\n"
        "n.run_switch_ports([('tcp', 8080, '10.88.0.8', 80)])\n"
        "print(n.read_port_map())\n"
        "print(spawned)\n")
    out = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "python3", "-c", code],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["(True, (('tcp', 8080, '10.88.0.8', 80),))", "[]"]
    peers = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "set", "bridge", "orch",
                            "peers"], capture_output=True, text=True, check=True).stdout
    assert "10.88.0.7 . 10.88.0.8" in peers and "10.88.0.8 . 10.88.0.7" in peers


@pytest.mark.parametrize("how", ["library", "binary"])
def test_a_refused_transaction_changes_nothing_and_says_why(netns, how):
    code = ("from runtime import network as n\n"
            "from runtime.errors import RuntimeFailure\n"
            "n.run_ensure_host_network()\n"
            "n.run_switch_ports([('tcp', 8080, '10.88.0.7', 80)])\n"
            "try:\n"
            "    n.run_nft(n.render_port_switch([('tcp', 8080, '10.88.0.9', 80)])"
            " + 'flush map ip orch nosuch\\n')\n"
            "except RuntimeFailure as exc:\n"
            "    print(exc.message.splitlines()[0])\n"
            "print(n.read_port_map())\n")
    env = dict(os.environ, ORCH_NFT="binary") if how == "binary" else None
    out = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "python3", "-c", code],
                         capture_output=True, text=True, check=True, env=env).stdout.splitlines()
    assert out[0].startswith("nft -f failed: ") and "No such file or directory" in out[0]
    assert out[1] == "(True, (('tcp', 8080, '10.88.0.7', 80),))"


def test_host_listening_sees_listeners_of_its_own_namespace_only(netns):
    """TCP listeners come from the kernel's socket diagnostics (reading /proc/net/tcp walks
    every connection of every namespace: 4 ms a file on a busy lab machine); a connected or
    merely bound socket is no listener; UDP counts every bound port."""
    code = ("import socket\n"
            "from runtime import network as n\n"
            "a = socket.socket(); a.bind(('127.0.0.1', 7001)); a.listen()\n"
            "b = socket.socket(socket.AF_INET6); b.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n"
            "b.bind(('::', 7002)); b.listen()\n"
            "c = socket.socket(); c.bind(('127.0.0.1', 7003))\n"
            "d = socket.create_connection(('127.0.0.1', 7001)); e, _ = a.accept()\n"
            "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', 7004))\n"
            "print(sorted(n.host_listening('tcp')), sorted(n.host_listening('udp')))\n"
            "print(sorted(n.parse_listening(open('/proc/net/tcp').read() + "
            "open('/proc/net/tcp6').read().split('\\n', 1)[1])))\n")
    subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
    out = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "python3", "-c", code],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["[7001, 7002] [7004]", "[7001, 7002]"]


def test_diag_dump_parsing():
    import struct
    req = network.render_diag_request(10, 7)
    assert len(req) == 16 + 56 and struct.unpack_from("=IHHII", req) == (72, 20, 0x301, 7, 0)
    assert struct.unpack_from("=BBBxI", req, 16) == (10, 6, 0, 1 << 10)

    def msg(kind, body):
        return struct.pack("=IHHII", 16 + len(body), kind, 2, 1, 0) + body
    listener = msg(20, struct.pack("=BBBB", 2, 10, 0, 0) + struct.pack("!HH", 8080, 0) + bytes(84))
    assert network.parse_diag_ports(listener + listener) == ({8080}, False)
    assert network.parse_diag_ports(listener + msg(3, bytes(4))) == ({8080}, True)
    with pytest.raises(OSError):
        network.parse_diag_ports(msg(2, struct.pack("=i", -22) + bytes(16)))
