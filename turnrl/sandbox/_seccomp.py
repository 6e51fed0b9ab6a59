"""A seccomp filter for sandboxed programs, compiled to classic BPF by hand (no libseccomp).

:func:`compile_filter` returns the raw ``struct sock_filter`` array that ``bwrap --seccomp
FD`` loads just before it executes the program. The filter allows every system call except
the ones in :data:`DENIED` (and, for ``clone``/``unshare``, the namespace flags), which fail
with an error number instead of running:

* **namespaces and mounts** (``EPERM``): ``unshare``/``clone`` with any ``CLONE_NEW*``
  flag, ``setns``, ``mount`` and the new mount API, ``pivot_root``, ``chroot``. ``clone3``
  gets ``ENOSYS`` because its flags sit in memory a filter cannot read; the C library then
  falls back to ``clone``, which the filter can check.
* **other processes and the kernel's larger attack surfaces** (``EPERM``): ``ptrace``,
  ``process_vm_readv``/``writev``, ``pidfd_getfd``, ``bpf``, ``perf_event_open``,
  ``userfaultfd``, ``keyctl``/``add_key``/``request_key``, ``io_uring_*``, module and
  ``kexec`` loading, ``open_by_handle_at``.
* **memory the address-space limit cannot see** (``ENOMEM``): ``memfd_create``,
  ``memfd_secret``, SysV ``shmget``/``msgget`` and POSIX ``mq_open``. Such memory would
  outlive ``RLIMIT_AS``; refusing it keeps a sandbox's memory inside its limits (files go
  to the size-capped tmpfs mounts).

System calls of another ABI (32-bit ``int 0x80`` calls on x86-64, x32) are refused with
``ENOSYS``, since their numbers differ. Only x86-64 and aarch64 are known; elsewhere
:func:`compile_filter` returns ``None`` and the sandbox says the filter is not enforced.
"""

from __future__ import annotations

import errno
import functools
import platform
import struct

__all__ = ["DENIED", "compile_filter", "supported_arch"]

# ---------------------------------------------------------------- BPF and seccomp constants
_LD_W_ABS = 0x20      # BPF_LD | BPF_W | BPF_ABS: A = 32-bit word at offset k of seccomp_data
_JEQ = 0x15           # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35           # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45          # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06           # BPF_RET | BPF_K
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];
_OFF_NR, _OFF_ARCH, _OFF_ARG0_LOW = 0, 4, 16  # args[0]'s low word (little-endian ABIs)

#: The namespace flags of ``clone``. ``CLONE_NEWTIME`` (0x80) is only meaningful to
#: ``unshare``: in ``clone`` that bit belongs to the exit signal.
_CLONE_NEW = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
              | 0x40000000)  # NEWNS NEWCGROUP NEWUTS NEWIPC NEWUSER NEWPID NEWNET
_UNSHARE_NEW = _CLONE_NEW | 0x00000080  # + CLONE_NEWTIME

#: Per architecture: (AUDIT_ARCH value, first number of a foreign ABI sharing this arch
#: value or None, {syscall name: number}).
_ARCHES: dict[str, tuple[int, int | None, dict[str, int]]] = {
    "x86_64": (0xC000003E, 0x40000000, {
        "clone": 56, "unshare": 272, "clone3": 435, "setns": 308, "mount": 165,
        "umount2": 166, "pivot_root": 155, "chroot": 161, "open_tree": 428,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "ptrace": 101, "process_vm_readv": 310,
        "process_vm_writev": 311, "pidfd_getfd": 438, "bpf": 321, "perf_event_open": 298,
        "userfaultfd": 323, "keyctl": 250, "add_key": 248, "request_key": 249,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "open_by_handle_at": 304, "memfd_create": 319,
        "memfd_secret": 447, "shmget": 29, "msgget": 68, "mq_open": 240,
    }),
    "aarch64": (0xC00000B7, None, {
        "clone": 220, "unshare": 97, "clone3": 435, "setns": 268, "mount": 40,
        "umount2": 39, "pivot_root": 41, "chroot": 51, "open_tree": 428, "move_mount": 429,
        "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_getfd": 438,
        "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "keyctl": 219,
        "add_key": 217, "request_key": 218, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "kexec_load": 104, "kexec_file_load": 294,
        "init_module": 105, "finit_module": 273, "delete_module": 106,
        "open_by_handle_at": 265, "memfd_create": 279, "memfd_secret": 447, "shmget": 194,
        "msgget": 186, "mq_open": 180,
    }),
}
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}

#: System calls refused outright, with the error number they fail with.
DENIED: dict[str, int] = {
    **dict.fromkeys(("setns", "mount", "umount2", "pivot_root", "chroot", "open_tree",
                     "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
                     "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "bpf",
                     "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
                     "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load",
                     "kexec_file_load", "init_module", "finit_module", "delete_module",
                     "open_by_handle_at"), errno.EPERM),
    **dict.fromkeys(("memfd_create", "memfd_secret", "shmget", "msgget", "mq_open"),
                    errno.ENOMEM),
    "clone3": errno.ENOSYS,
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def supported_arch(machine: str | None = None) -> str | None:
    """The filter's name for this machine's architecture, or ``None`` if unknown."""
    machine = (machine or platform.machine()).lower()
    machine = _ARCH_ALIASES.get(machine, machine)
    return machine if machine in _ARCHES else None


@functools.lru_cache(maxsize=4)
def compile_filter(machine: str | None = None) -> bytes | None:
    """The filter as ``struct sock_filter[]`` bytes for ``bwrap --seccomp``, or ``None``
    on an architecture this module does not know."""
    arch = supported_arch(machine)
    if arch is None:
        return None
    audit_arch, foreign_abi, numbers = _ARCHES[arch]
    prog = [
        _insn(_LD_W_ABS, _OFF_ARCH),
        _insn(_JEQ, audit_arch, 1, 0),
        _insn(_RET, _RET_ERRNO | errno.ENOSYS),  # another ABI: its numbers mean other calls
        _insn(_LD_W_ABS, _OFF_NR),
    ]
    if foreign_abi is not None:  # x32 shares the x86-64 arch value; its numbers have this bit
        prog += [_insn(_JGE, foreign_abi, 0, 1), _insn(_RET, _RET_ERRNO | errno.ENOSYS)]
    for name, err in DENIED.items():
        prog += [_insn(_JEQ, numbers[name], 0, 1), _insn(_RET, _RET_ERRNO | err)]
    # clone and unshare: refuse only when a namespace flag is set. Each block ends in a
    # return, so the "not this call" jump keeps the syscall number in A for the next test.
    for name, mask in (("clone", _CLONE_NEW), ("unshare", _UNSHARE_NEW)):
        prog += [
            _insn(_JEQ, numbers[name], 0, 4),
            _insn(_LD_W_ABS, _OFF_ARG0_LOW),
            _insn(_JSET, mask, 0, 1),
            _insn(_RET, _RET_ERRNO | errno.EPERM),
            _insn(_RET, _RET_ALLOW),
        ]
    prog.append(_insn(_RET, _RET_ALLOW))
    return b"".join(prog)
