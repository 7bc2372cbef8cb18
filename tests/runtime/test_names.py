"""Service names (pure): stable addresses, /etc/hosts, and the nft VIP map and links set."""
import ipaddress

import pytest

from runtime import names


@pytest.mark.parametrize("service", ["store", "web", "a", "x" * 40, "redis-1"])
def test_vip_is_stable_and_inside_its_subnet(service):
    vip = names.vip_of(service)
    assert vip == names.vip_of(service)
    addr = ipaddress.ip_address(vip)
    assert addr in ipaddress.ip_network(names.VIP_SUBNET)
    assert vip not in ("10.89.0.0", "10.89.0.1", "10.89.255.255")


def test_vips_differ_between_services_and_a_clash_is_found():
    vips = {names.vip_of(f"svc-{i}") for i in range(200)}
    assert len(vips) >= 199
    assert names.vip_clash(["web", "store"]) == ("", "")
    # find two names that do clash, by brute force over a small space
    seen = {}
    for i in range(100000):
        v = names.vip_of(f"s{i}")
        if v in seen:
            a, b = seen[v], f"s{i}"
            break
        seen[v] = f"s{i}"
    assert set(names.vip_clash([a, b, "web"])) == {a, b}


def test_hosts_file_names_only_what_the_service_needs():
    text = names.render_hosts_file("app", "10.88.0.7", ["store", "cache", "store"])
    assert text.splitlines() == ["127.0.0.1\tlocalhost", "10.88.0.7\tapp",
                                 f"{names.vip_of('cache')}\tcache cache.orch",
                                 f"{names.vip_of('store')}\tstore store.orch"]


def test_names_map_vips_to_serving_slots_and_link_only_declared_callers():
    serving = {"store": "10.88.0.5", "app": "10.88.0.9"}
    members = [("store", "10.88.0.5"), ("app", "10.88.0.9"), ("app", "10.88.0.10"),
               ("stranger", "10.88.0.11")]
    text = names.render_names(serving, members, {"app": ["store"], "stranger": []})
    vs, va = names.vip_of("store"), names.vip_of("app")
    assert "flush map ip orch vips" in text and "flush set ip orch links" in text
    assert f"{vs} : 10.88.0.5" in text and f"{va} : 10.88.0.9" in text
    assert f"10.88.0.9 . {vs}" in text and f"10.88.0.10 . {vs}" in text   # both app slots
    assert "10.88.0.11 ." not in text                                   # no declared need


def test_nothing_serving_leaves_empty_map_and_set():
    assert names.render_names({}, [], {}) == "flush map ip orch vips\nflush set ip orch links\n"


def test_base_ruleset_translates_only_linked_pairs_and_drops_the_rest():
    from runtime import network
    rules = network.render_base_ruleset()
    assert "ip saddr . ip daddr @links dnat ip to ip daddr map @vips" in rules
    assert f"ip daddr {names.VIP_SUBNET} drop" in rules
