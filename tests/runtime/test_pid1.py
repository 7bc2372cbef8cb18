"""Which init binary the agent binds into containers: a static one from the host's packages."""
import shutil
import struct

from runtime.pid1 import find_init, is_static_elf


def elf(path, interp: bool):
    """A minimal 64-bit ELF header with one program header: PT_INTERP (dynamic) or PT_LOAD."""
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 3 if interp else 1, 0, 0, 0, 0, 0, 0, 0)
    path.write_bytes(ehdr + phdr)
    path.chmod(0o755)
    return str(path)


def test_static_and_dynamic_elf(tmp_path):
    assert is_static_elf(elf(tmp_path / "s", interp=False))
    assert not is_static_elf(elf(tmp_path / "d", interp=True))
    (tmp_path / "script").write_text("#!/bin/sh\n")
    assert not is_static_elf(str(tmp_path / "script"))
    assert not is_static_elf(str(tmp_path / "missing"))


def test_first_static_candidate_wins(tmp_path):
    dyn = elf(tmp_path / "tini", interp=True)           # Debian's /usr/bin/tini needs libc
    static = elf(tmp_path / "tini-static", interp=False)
    assert find_init([str(tmp_path / "missing"), dyn, static]) == static
    assert find_init([dyn]) is None


def test_debian_packages_give_a_static_init():
    """.ci/apt-packages.txt installs tini: its static build is what containers get."""
    found = find_init()
    assert found is not None and is_static_elf(found)
    assert shutil.which("tini-static") or shutil.which("catatonit")
