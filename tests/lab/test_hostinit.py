"""What a plain lab host mounts before its sshd: the machine's cgroup v1 controllers only."""
from orchestrator.lab.hostinit import cgroup_mounts

HYBRID = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
140 25 0:46 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755
143 140 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
153 140 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
166 140 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
174 140 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
REMOUNTED_SYS = "400 399 0:60 / /sys rw,relatime - sysfs sysfs rw\n"


def test_the_v1_controllers_are_mounted_and_the_cgroup2_beside_them_is_not():
    mounts = cgroup_mounts(HYBRID, REMOUNTED_SYS)
    assert mounts[0] == ["mount", "-t", "tmpfs", "-o", "mode=755,nosuid,nodev,noexec", "tmpfs",
                         "/sys/fs/cgroup"]
    targets = [m[-1] for m in mounts if m[0] == "mount"]
    assert targets == ["/sys/fs/cgroup", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory",
                       "/sys/fs/cgroup/systemd"]
    assert ["mount", "-t", "cgroup", "-o", "cpu", "cgroup", "/sys/fs/cgroup/cpu"] in mounts
    assert not any("cgroup2" in m for m in mounts)


def test_a_namespace_that_has_cgroups_mounted_gets_nothing_more():
    assert cgroup_mounts(HYBRID, HYBRID) == []
