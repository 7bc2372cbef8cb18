"""nftables through libnftables in this process (ctypes): the library the ``nft`` binary is
built on, so the same command text, one transaction per call, the same error text.

Why not ``nft -f -``: a transaction that deletes elements (every port switch flushes a map;
every peers update flushes a set) is live as soon as the kernel has it, but the kernel frees
the old elements after an RCU grace period, and closing the netlink socket waits for that
(nf_tables flushes its destroy work on NETLINK_URELEASE). ``nft -f`` closes its socket on
exit: each switch cost 16-23 ms on a lab host (3 ms of it starting the binary), in the middle
of ``apply``. One context kept open for the process's life commits the same transaction in
0.2-1.5 ms; the wait moves to the process's exit (after its answers), and the kernel has
usually finished by then.

The context is the process's, like its standard streams: opened on first use, never closed
(the kernel closes it with the process; a forked child opens its own), one call at a time. ``context()`` is None where the library cannot be loaded, or ``ORCH_NFT=binary`` asks
for the binary: callers then run ``nft``.
"""
from __future__ import annotations

import os
import threading
from typing import List, Optional, Tuple

LIBRARY = "libnftables.so.1"
OUTPUT_JSON = 1 << 4          # NFT_CTX_OUTPUT_JSON in nftables/libnftables.h


class Context:
    def __init__(self, lib):
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._json = False
        self._lock = threading.Lock()

    def run(self, text: str, json_output: bool = False) -> Tuple[int, str, str]:
        """(0 or non-zero, output, error text) of ``text`` as ``nft [-j] -f`` would run it."""
        lib = self._lib
        with self._lock:
            if json_output != self._json:
                lib.nft_ctx_output_set_flags(self._ctx, OUTPUT_JSON if json_output else 0)
                self._json = json_output
            rc = lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
            # reading a buffer empties it: both are read, so nothing leaks into the next call
            out = (lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
            err = (lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        return (0 if rc == 0 else 1), out, err


def _load() -> Optional[Context]:
    if os.environ.get("ORCH_NFT") == "binary":
        return None
    try:
        import ctypes

        lib = ctypes.CDLL(LIBRARY)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        ctx = Context(lib)
    except (ImportError, OSError, AttributeError):    # python3-minimal has no ctypes
        return None
    # a library that loads but cannot talk to the kernel (a foreign-arch library under qemu-user
    # translates no netfilter netlink: "Protocol not supported") leaves the work to the binary
    rc, _, _ = ctx.run("list tables")
    return ctx if rc == 0 else None


# [] until first use, then [(pid, context or None)]: a child forked after it (serve forks the
# agent sessions) opens its own, else parent and child would read each other's answers on
# the one netlink socket; the inherited one is left alone (the parent still uses it)
_PROCESS: List[Tuple[int, Optional[Context]]] = []


def context() -> Optional[Context]:
    pid = os.getpid()
    if not _PROCESS or _PROCESS[0][0] != pid:
        _PROCESS[:] = [(pid, _load())]
    return _PROCESS[0][1]


def binary_in_this_process() -> None:
    """This process runs ``nft`` for what it does with nftables (``serve``: its reads are not
    in anyone's way, and the library and ctypes would stay in its memory, ~3 MB of the agent's
    idle RSS); a child it forks (an agent session) still opens the library."""
    _PROCESS[:] = [(os.getpid(), None)]
