"""Run a command where user namespaces are refused, as under Docker's default seccomp profile.

Usage: ``python no_userns.py CMD [ARG...]``

Installs a classic-BPF seccomp filter, then ``exec``\\ s CMD. Root (``CAP_SYS_ADMIN``)
installs it as Docker does, without ``PR_SET_NO_NEW_PRIVS``, so ``python no_userns.py runuser
-u USER -- CMD`` gives the user the filter alone; any other process must set
``no_new_privs`` first (which also makes setuid binaries such as ``newuidmap`` run without
their privileges). The filter, inherited by every descendant, does what Docker's default
profile does to a process without ``CAP_SYS_ADMIN``:

* ``unshare(2)`` and ``clone(2)`` whose flags ask for a new namespace (``CLONE_NEWUSER`` and
  the others of Docker's mask ``0x7E020000``) fail with ``EPERM``; plain ``clone`` (``fork``,
  threads) is allowed;
* ``clone3(2)`` fails with ``ENOSYS`` (its flags live in memory, where a filter cannot look),
  so the C library falls back to ``clone``;
* everything else is allowed.

The filter first checks the audit architecture of the call (x86_64, with x32 numbers folded
in, and aarch64); calls of any other ABI (32-bit compatibility calls) are let through, since
nothing of the test suite makes them. The script refuses to run on another machine.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

# Syscall numbers: (unshare, clone, clone3).
SYSCALLS = {
    AUDIT_ARCH_X86_64: (272, 56, 435),
    AUDIT_ARCH_AARCH64: (97, 220, 435),
}
MACHINES = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64, "arm64": AUDIT_ARCH_AARCH64}

# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
# CLONE_NEWNET: the mask Docker's default profile refuses in clone's flags.
CLONE_NEWUSER = 0x10000000
NAMESPACE_FLAGS = 0x7E020000

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
OFF_NR, OFF_ARCH, OFF_ARG0_LOW = 0, 4, 16  # args[0]'s low word (both ABIs are little-endian)

# Classic BPF opcodes.
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
BPF_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K

Insn = tuple[int, str | int, str | int, int]  # code, jump-if-true, jump-if-false, k


def _program() -> list[Insn]:
    """The filter as instructions whose jumps name labels (resolved by :func:`assemble`)."""
    prog: list[Insn | str] = [
        (BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        (BPF_JEQ_K, 0, "not_x86_64", AUDIT_ARCH_X86_64),
        (BPF_LD_W_ABS, 0, 0, OFF_NR),
        (BPF_AND_K, 0, 0, 0xFFFFFFFF & ~X32_SYSCALL_BIT),
    ]
    unshare, clone, clone3 = SYSCALLS[AUDIT_ARCH_X86_64]
    prog += [
        (BPF_JEQ_K, "enosys", 0, clone3),
        (BPF_JEQ_K, "flags", 0, unshare),
        (BPF_JEQ_K, "flags", "allow", clone),
        "not_x86_64",
        (BPF_JEQ_K, 0, "allow", AUDIT_ARCH_AARCH64),
        (BPF_LD_W_ABS, 0, 0, OFF_NR),
    ]
    unshare, clone, clone3 = SYSCALLS[AUDIT_ARCH_AARCH64]
    prog += [
        (BPF_JEQ_K, "enosys", 0, clone3),
        (BPF_JEQ_K, "flags", 0, unshare),
        (BPF_JEQ_K, "flags", "allow", clone),
        "flags",
        (BPF_LD_W_ABS, 0, 0, OFF_ARG0_LOW),
        (BPF_JSET_K, "eperm", "allow", NAMESPACE_FLAGS),
        "allow",
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        "eperm",
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM),
        "enosys",
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),
    ]
    return assemble(prog)


def assemble(prog: list[Insn | str]) -> list[Insn]:
    """Resolve label names (strings in the list) in jumps to forward offsets."""
    labels: dict[str, int] = {}
    out: list[Insn] = []
    for item in prog:
        if isinstance(item, str):
            labels[item] = len(out)
        else:
            out.append(item)
    resolved: list[Insn] = []
    for index, (code, jt, jf, k) in enumerate(out):

        def offset(target: str | int, index: int = index) -> int:
            if isinstance(target, int):
                return target
            delta = labels[target] - index - 1
            assert 0 <= delta < 256, (target, delta)
            return delta

        resolved.append((code, offset(jt), offset(jf), k))
    return resolved


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """Install the filter on this process (and so on everything it will exec or fork)."""
    machine = platform.machine()
    if machine not in MACHINES:
        raise SystemExit(f"no_userns.py: no syscall table for {machine} (x86_64, aarch64 only)")
    code = b"".join(struct.pack("=HBBI", c, int(jt), int(jf), k) for c, jt, jf, k in _program())
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) == 0:
        return  # CAP_SYS_ADMIN: no need for no_new_privs (Docker installs its filter so)
    if ctypes.get_errno() != errno.EACCES:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write((__doc__ or "").split("\n\n")[1] + "\n")
        return 2
    install()
    try:
        os.execvp(argv[1], argv[1:])
    except OSError as exc:
        sys.stderr.write(f"no_userns.py: cannot run {argv[1]}: {exc}\n")
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
