"""Kernel numbers to the names analysts know: open flags, errno, socket families, signals."""

from __future__ import annotations

import errno
import functools
import signal
import socket

_ACCMODE = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR"}
# Kernel ABI values (asm-generic/fcntl.h, as on x86_64), not Python's os
# constants: os.O_LARGEFILE is 0 on 64-bit, yet the kernel sets it on
# every open. Composite flags come before their parts.
_FLAGS = [
    (0o4010000, "O_SYNC"),
    (0o20200000, "O_TMPFILE"),
    (0o100, "O_CREAT"),
    (0o200, "O_EXCL"),
    (0o400, "O_NOCTTY"),
    (0o1000, "O_TRUNC"),
    (0o2000, "O_APPEND"),
    (0o4000, "O_NONBLOCK"),
    (0o10000, "O_DSYNC"),
    (0o20000, "FASYNC"),
    (0o40000, "O_DIRECT"),
    (0o100000, "O_LARGEFILE"),
    (0o200000, "O_DIRECTORY"),
    (0o400000, "O_NOFOLLOW"),
    (0o1000000, "O_NOATIME"),
    (0o2000000, "O_CLOEXEC"),
    (0o10000000, "O_PATH"),
]
_FAMILIES: dict[int, str] = {
    int(socket.AF_UNIX): "AF_UNIX",
    int(socket.AF_INET): "AF_INET",
    int(socket.AF_INET6): "AF_INET6",
}
_PROTOCOLS = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPV6", 132: "SCTP", 136: "UDPLITE"}
_SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 5: "SOCK_SEQPACKET"}


@functools.lru_cache(maxsize=1024)
def open_flags(flags: int) -> tuple[str, ...]:
    """O_* names of open(2) flags; a program uses few combinations, hence the cache."""
    names = [_ACCMODE.get(flags & 3, "O_ACCMODE")]
    rest = flags & ~3
    for bit, name in _FLAGS:
        if rest & bit == bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(f"0x{rest:x}")
    return tuple(names)


def errno_name(result: int) -> str | None:
    """`ECONNREFUSED` for -111; None for a non-negative result."""
    if result >= 0:
        return None
    return errno.errorcode.get(-result, f"E{-result}")


def family(num: int) -> str:
    return _FAMILIES.get(num, f"AF_{num}")


def protocol(num: int) -> str | None:
    return _PROTOCOLS.get(num, str(num)) if num else None


def sock_type(num: int) -> str:
    return _SOCK_TYPES.get(num, f"SOCK_{num}")


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        if signal.SIGRTMIN <= num <= signal.SIGRTMAX:
            return f"SIGRTMIN+{num - signal.SIGRTMIN}"
        return f"SIG{num}"


_FLAG_BITS = {name: bit for bit, name in _FLAGS} | {v: k for k, v in _ACCMODE.items()}


def open_flags_value(names: tuple[str, ...] | list[str]) -> int:
    """The open(2) flags that open_flags() named (its inverse); names it never
    makes (`0x...` leftovers are kept as their bits) count as nothing."""
    value = 0
    for name in names:
        bit = _FLAG_BITS.get(name)
        if bit is not None:
            value |= bit
        elif name.startswith("0x") and all(c in "0123456789abcdef" for c in name[2:]):
            value |= int(name, 16)
    return value


# include/uapi/linux/capability.h, by bit number.
_CAPS = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)


@functools.lru_cache(maxsize=256)
def capabilities(mask: int) -> tuple[str, ...]:
    """CAP_* names of a capability set's bits (an unnamed bit as CAP_<n>)."""
    return tuple(
        _CAPS[n] if n < len(_CAPS) else f"CAP_{n}" for n in range(64) if mask >> n & 1
    )
