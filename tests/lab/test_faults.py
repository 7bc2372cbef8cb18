"""Pure parts of the lab's faults: the link commands, the hosts' fixed MACs."""
import pytest

from orchestrator.errors import LabError
from orchestrator.lab.faults import render_link_argv
from orchestrator.lab.layout import LabLayout, LabSpec

HOST = LabLayout(LabSpec("f", amd64=1, arm64=0)).hosts()[0]


def test_link_down_and_up_switch_the_machines_end_of_the_veth():
    assert render_link_argv("ip", "tc", HOST, "down", None) == [["ip", "link", "set", HOST.veth_root, "down"]]
    assert render_link_argv("ip", "tc", HOST, "up", None) == [["ip", "link", "set", HOST.veth_root, "up"]]


def test_link_rate_throttles_both_directions_and_none_lifts_it():
    argvs = render_link_argv("ip", "tc", HOST, "rate", "2mbit")
    assert argvs[0][:6] == ["tc", "qdisc", "replace", "dev", HOST.veth_root, "root"]
    assert argvs[1][:5] == ["ip", "netns", "exec", HOST.netns, "tc"]
    assert all("2mbit" in a and "tbf" in a for a in argvs)
    assert [a[-2:] for a in render_link_argv("ip", "tc", HOST, "rate", "none")] == [
        [HOST.veth_root, "root"], ["eth0", "root"]]


@pytest.mark.parametrize("action,rate,match", [
    ("rate", "fast", "expected a tc rate"), ("rate", None, "give a tc rate"), ("flap", None, "expected one of")])
def test_bad_link_requests_are_refused(action, rate, match):
    with pytest.raises(LabError, match=match):
        render_link_argv("ip", "tc", HOST, action, rate)


def test_a_host_keeps_its_mac_and_no_two_hosts_share_one():
    again = LabLayout(LabSpec("f", amd64=1, arm64=0)).hosts()[0]
    assert HOST.mac == again.mac and HOST.mac.startswith("02:")
    macs = {h.mac for h in LabLayout(LabSpec("g", amd64=100, arm64=0, booted=50)).hosts()}
    assert len(macs) == 150
