"""The default seccomp profile is pure: check what it allows, refuses and for which kernels."""
import pytest

from runtime import seccomp
from runtime.bundle import BundleInput, render_config
from runtime.spec import Deploy

IMAGE = {"config": {"Cmd": ["/bin/busybox", "true"]}}

# what a compromised service would reach for first; none may be allowed, on any arch
FORBIDDEN = ("unshare", "setns", "mount", "umount2", "pivot_root", "keyctl", "add_key", "request_key",
             "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "ptrace",
             "process_vm_readv", "process_vm_writev", "init_module", "finit_module", "delete_module",
             "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "syslog",
             "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "quotactl",
             "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "sethostname",
             "setdomainname", "iopl", "ioperm", "vhangup", "kcmp", "pidfd_getfd", "fanotify_init",
             "move_mount", "open_tree", "fsopen", "fsmount", "mbind", "set_mempolicy", "socketcall")


def rules_for(profile, name):
    return [r for r in profile["syscalls"] if name in r["names"]]


@pytest.mark.parametrize("machine", ["x86_64", "aarch64", "armv7l", "riscv64", ""])
def test_default_deny_and_nothing_dangerous_allowed(machine):
    p = seccomp.render_profile(machine)
    assert p["defaultAction"] == "SCMP_ACT_ERRNO"
    for name in FORBIDDEN:
        assert not rules_for(p, name), name


@pytest.mark.parametrize("machine,arches", [
    ("x86_64", ["SCMP_ARCH_X86_64"]),                        # no 32-bit x86 compat
    ("aarch64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),     # a Pi 4 also runs armv7 images
    ("armv7l", ["SCMP_ARCH_ARM"]),
])
def test_architectures_follow_the_kernel(machine, arches):
    assert seccomp.render_profile(machine)["architectures"] == arches


def test_unknown_kernel_gets_its_native_arch_only():
    assert "architectures" not in seccomp.render_profile("riscv64")


def test_what_ordinary_programs_need_is_allowed():
    allowed = set(seccomp.ALLOWED)
    for name in ("read", "write", "openat", "execve", "mmap", "futex", "epoll_wait", "accept4",
                 "clock_gettime", "rt_sigaction", "wait4", "getrandom", "prctl", "set_tls",
                 "arch_prctl", "mmap2", "_llseek", "fstatat64", "chroot", "setuid", "kill"):
        assert name in allowed, name


def test_clone_only_without_namespace_flags_and_clone3_falls_back():
    p = seccomp.render_profile("x86_64")
    (clone,) = rules_for(p, "clone")
    (arg,) = clone["args"]
    assert arg["op"] == "SCMP_CMP_MASKED_EQ" and arg["valueTwo"] == 0 and arg["index"] == 0
    for flag in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000):
        assert arg["value"] & flag, hex(flag)              # NEWNS, NEWCGROUP ... NEWNET all masked
    assert not arg["value"] & 0x00010000                   # CLONE_THREAD stays allowed
    (clone3,) = rules_for(p, "clone3")
    assert clone3["action"] == "SCMP_ACT_ERRNO" and clone3["errnoRet"] == 38


def test_sockets_only_of_ordinary_families():
    p = seccomp.render_profile("x86_64")
    families = sorted(r["args"][0]["value"] for r in rules_for(p, "socket"))
    assert families == [1, 2, 10, 16]                      # no AF_PACKET (17), AF_ALG (38), AF_VSOCK (40)
    assert all(r["args"][0]["op"] == "SCMP_CMP_EQ" for r in rules_for(p, "socket"))


def test_personality_only_harmless_values():
    values = {r["args"][0]["value"] for r in rules_for(seccomp.render_profile("x86_64"), "personality")}
    assert values == {0, 8, 0x20000, 0x20008, 0xFFFFFFFF}  # not ADDR_NO_RANDOMIZE (0x40000)


def test_every_rule_is_well_formed():
    for rule in seccomp.render_profile("aarch64")["syscalls"]:
        assert rule["action"] in ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO") and rule["names"]
        for a in rule.get("args", []):
            assert set(a) == {"index", "value", "valueTwo", "op"}


def test_config_json_carries_the_profile_of_the_host_kernel():
    b = BundleInput("c", "h", "/r", "/orch/c", machine="aarch64")
    cfg = render_config(IMAGE, Deploy.from_json({}), b)
    assert cfg["linux"]["seccomp"] == seccomp.render_profile("aarch64")
    assert cfg["process"]["noNewPrivileges"] is True


def test_build_sandbox_gets_the_filter_of_the_build_machines_kernel():
    """run: steps are hostile input too; an arm64 build machine runs armv7 steps natively."""
    from runtime.bundle import render_build_config
    cfg = render_build_config(["/bin/true"], ["PATH=/bin"], "/", machine="aarch64")
    assert cfg["linux"]["seccomp"] == seccomp.render_profile("aarch64")
