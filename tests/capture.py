"""The file/connect capture modes the kernel tests run under, and the hook each reports.

On the host only the syscall tracepoints load (KERNEL.md), so the
real-kernel file/connect tests run once, with `tracepoint`. The
`make test-vm` guests set TRACER_CAPTURE_MODES to run the same tests,
with the same assertions, under each variant the guest kernel offers.
"""

from __future__ import annotations

import os

MODES = tuple(os.environ.get("TRACER_CAPTURE_MODES", "tracepoint").split(","))

# The hook named by an event of a successful open / of a connect, per mode.
OPEN_HOOK = {
    "lsm": "lsm/file_open",
    "fentry": "fentry/security_file_open",
    "kprobe": "kprobe/security_file_open",
}
# Failed opens the security hook never saw are selected at the syscall's end.
FAILED_OPEN_HOOK = {
    "lsm": "fexit/do_sys_openat2",
    "fentry": "fexit/do_sys_openat2",
    "kprobe": "kretprobe/do_sys_openat2",
}
# A TCP connect; in tracepoint mode it is selected when the socket enters
# SYN_SENT, and other sockets at the end of connect().
CONNECT_HOOK = {
    "lsm": "lsm/socket_connect",
    "fentry": "fentry/security_socket_connect",
    "kprobe": "kprobe/security_socket_connect",
    "tracepoint": "tracepoint/inet_sock_set_state",
}
UDP_CONNECT_HOOK = {**CONNECT_HOOK, "tracepoint": "tracepoint/sys_connect"}
# A datagram sent to an address (sendto, sendmsg) or a TCP fast open.
SEND_HOOK = {
    "lsm": "lsm/socket_sendmsg",
    "fentry": "fentry/security_socket_sendmsg",
    "kprobe": "kprobe/security_socket_sendmsg",
}


def send_hook(mode: str, syscall: str) -> str:
    """What a datagram to an address through `syscall` (sendto, sendmsg) reports."""
    return SEND_HOOK.get(mode, f"tracepoint/sys_exit_{syscall}")


def open_hook(mode: str, syscall: str = "openat") -> str:
    """What an open through `syscall` (open, openat, openat2, creat) reports."""
    return OPEN_HOOK.get(mode, f"tracepoint/sys_exit_{syscall}")


def failed_open_hook(mode: str, syscall: str = "openat") -> str:
    return FAILED_OPEN_HOOK.get(mode, f"tracepoint/sys_exit_{syscall}")
