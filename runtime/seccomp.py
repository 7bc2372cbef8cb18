"""The default seccomp filter of every container: the ``linux.seccomp`` part of config.json.

Pure. ``render_profile(machine)`` takes the host *kernel's* machine name (``os.uname().machine``),
because the filter is applied by that kernel: an arm image on an amd64 lab host runs as an
x86_64 qemu-user process whose system calls are x86_64 ones, while a Raspberry Pi's aarch64
kernel also runs 32-bit armv7 images through its arm compat layer.

What is allowed is written here from the Linux system call tables, grouped by what a service
does; the widely used Docker/Podman default was the reference for what ordinary programs need.
Everything else fails with EPERM. Deliberately left out (a service has no business with them,
and several are where container escapes came from): namespaces (``unshare``, ``setns``, ``clone``
with namespace flags), mounts, the kernel keyring (``keyctl``, ``add_key``, ``request_key``),
``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring``, ``ptrace`` and cross-process memory,
kernel modules, ``kexec``, ``reboot``, swap, clocks, quotas, ``open_by_handle_at``,
``personality`` beyond the harmless values, and sockets outside unix/inet/inet6/netlink.
Names a kernel does not know are skipped by the OCI runtime, so one list serves every arch.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

EPERM = 1
ENOSYS = 38

# libseccomp names of the architectures a kernel runs natively or through compat
ARCHITECTURES: Dict[str, Tuple[str, ...]] = {
    "x86_64": ("SCMP_ARCH_X86_64",),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "armv7l": ("SCMP_ARCH_ARM",),
    "armv8l": ("SCMP_ARCH_ARM",),
}

_FILES = """
    access faccessat faccessat2 chdir fchdir getcwd chmod fchmod fchmodat chown fchown fchownat
    lchown chown32 fchown32 lchown32 close close_range creat dup dup2 dup3 fcntl fcntl64 flock
    fadvise64 fadvise64_64 fallocate fsync fdatasync sync syncfs sync_file_range
    ftruncate ftruncate64 truncate truncate64 getdents getdents64 link linkat symlink symlinkat
    unlink unlinkat rename renameat renameat2 mkdir mkdirat rmdir mknod mknodat
    open openat openat2 read readv pread64 preadv preadv2 write writev pwrite64 pwritev pwritev2
    lseek _llseek readlink readlinkat readahead sendfile sendfile64 copy_file_range splice tee
    vmsplice stat stat64 lstat lstat64 fstat fstat64 fstatat64 newfstatat statx statfs statfs64
    fstatfs fstatfs64 umask utime utimes utimensat utimensat_time64 futimesat
    getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr setxattr lsetxattr fsetxattr
    removexattr lremovexattr fremovexattr inotify_init inotify_init1 inotify_add_watch
    inotify_rm_watch ioctl chroot
"""
_MEMORY = """
    brk mmap mmap2 munmap mremap mprotect madvise mincore msync mlock mlock2 mlockall munlock
    munlockall memfd_create membarrier remap_file_pages pkey_alloc pkey_free pkey_mprotect
"""
_PROCESSES = """
    execve execveat exit exit_group fork vfork wait4 waitid waitpid getpid getppid gettid
    getpgid setpgid getpgrp getsid setsid getpriority setpriority prctl arch_prctl
    set_tid_address set_robust_list get_robust_list rseq futex futex_time64 futex_waitv
    sched_yield sched_getaffinity sched_setaffinity sched_getattr sched_setattr sched_getparam
    sched_setparam sched_getscheduler sched_setscheduler sched_get_priority_max
    sched_get_priority_min sched_rr_get_interval sched_rr_get_interval_time64 getcpu
    getrlimit setrlimit prlimit64 ugetrlimit getrusage times uname sysinfo getrandom
    capget capset seccomp restart_syscall ioprio_get ioprio_set pidfd_open pidfd_send_signal
    set_thread_area get_thread_area modify_ldt set_tls cacheflush breakpoint
    arm_fadvise64_64 arm_sync_file_range sync_file_range2
"""
_IDENTITY = """
    getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32 getresuid getresuid32
    getresgid getresgid32 getgroups getgroups32 setuid setuid32 setgid setgid32 setreuid
    setreuid32 setregid setregid32 setresuid setresuid32 setresgid setresgid32 setgroups
    setgroups32 setfsuid setfsuid32 setfsgid setfsgid32
"""
_SIGNALS_AND_TIME = """
    kill tkill tgkill rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigsuspend
    rt_sigqueueinfo rt_tgsigqueueinfo rt_sigtimedwait rt_sigtimedwait_time64 sigaltstack
    sigreturn sigprocmask signalfd signalfd4 pause alarm nanosleep clock_nanosleep
    clock_nanosleep_time64 clock_gettime clock_gettime64 clock_getres clock_getres_time64
    gettimeofday time getitimer setitimer timer_create timer_delete timer_getoverrun
    timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create
    timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64
"""
_EVENTS = """
    poll ppoll ppoll_time64 select _newselect pselect6 pselect6_time64 epoll_create
    epoll_create1 epoll_ctl epoll_wait epoll_pwait epoll_pwait2 eventfd eventfd2
    io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents io_pgetevents_time64
"""
_NETWORK = """
    socketpair bind listen accept accept4 connect getsockname getpeername getsockopt setsockopt
    send sendto sendmsg sendmmsg recv recvfrom recvmsg recvmmsg recvmmsg_time64 shutdown
"""
_IPC = """
    pipe pipe2 shmget shmat shmdt shmctl semget semop semctl semtimedop semtimedop_time64
    msgget msgsnd msgrcv msgctl ipc mq_open mq_unlink mq_timedsend mq_timedsend_time64
    mq_timedreceive mq_timedreceive_time64 mq_notify mq_getsetattr
"""

ALLOWED: Tuple[str, ...] = tuple(sorted(set(
    " ".join((_FILES, _MEMORY, _PROCESSES, _IDENTITY, _SIGNALS_AND_TIME, _EVENTS, _NETWORK, _IPC)).split())))

# clone() flags that make a namespace; clone() is allowed only with none of them
CLONE_NAMESPACES = 0x7E020000   # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
SOCKET_FAMILIES = (1, 2, 10, 16)   # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
# personality(): PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query 0xffffffff
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


def _arg(index: int, value: int, op: str = "SCMP_CMP_EQ", value_two: int = 0) -> dict:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def render_profile(machine: str) -> dict:
    """The ``linux.seccomp`` object for a host whose kernel reports ``machine``."""
    rules: List[dict] = [{"names": list(ALLOWED), "action": "SCMP_ACT_ALLOW"}]
    rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                  "args": [_arg(0, CLONE_NAMESPACES, "SCMP_CMP_MASKED_EQ", 0)]})
    # clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc use clone()
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    for family in SOCKET_FAMILIES:
        rules.append({"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [_arg(0, family)]})
    for persona in PERSONALITIES:
        rules.append({"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [_arg(0, persona)]})
    profile: dict = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules}
    arches = ARCHITECTURES.get(machine)
    if arches:
        profile["architectures"] = list(arches)
    return profile
