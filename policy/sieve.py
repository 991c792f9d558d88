"""The path sieve: which rules a path's first components and leaf can still match.

The kernel (bpf_probes/policy.bpf.h tr_sieve) turns an open away before it
copies the path out when the sieve admits no rule for it. The sieve is a
table of rule masks at hashed keys; this module builds the same keys from
the positive path values of the file_open rules, so both sides must hash
alike (tests/test_sieve.py holds them to the kernel's).

A path the sieve sees is absolute and canonical: components are never
empty, `.` or `..`, and it never ends in `/` (the kernel skips "/", pseudo
files and paths cut short). Keys, where H is the hash chain of the
components from the root:

- chain(H, name): the value has this full component (followed by `/`);
- ALL under H: a prefix value ends right after the chain (`/etc/cron.d/`);
- PART under H with byte c: the value ends inside the next component,
  which starts with c (`/etc/shadow`, prefix `/etc/ssh/ssh_host_`);
- at the leaf: a suffix's whole last component after its last `/`
  (`/.ssh/id_rsa`: the leaf `id_rsa`), or its last one or two bytes.

Deeper than DEPTH components a value is admitted by its first DEPTH. A
value the sieve cannot place is admitted for every path; one no canonical
path can match is left out.
"""

from __future__ import annotations

SLOTS = 8192  # TR_SIEVE_SLOTS
DEPTH = 8  # TR_SIEVE_DEPTH
NAME = 32  # TR_SIEVE_NAME
_K = 0x9E3779B97F4A7C15  # TR_SIEVE_K
_ROOT, _LEAF = 1, 2  # TR_SIEVE_ROOT, TR_SIEVE_LEAF
_ALL, _PART, _END2 = 0x100, 0x200, 0x10000
_M64 = (1 << 64) - 1


def _mix(a: int, b: int) -> int:
    x = ((a ^ b) * _K) & _M64
    return x ^ (x >> 31)


def name_hash(name: bytes) -> int:
    """A component's hash: its length and first NAME bytes (tr_sieve_name)."""
    head = name[:NAME].ljust(NAME, b"\0")
    h = len(name)
    for i in range(0, NAME, 8):
        h = _mix(h, int.from_bytes(head[i : i + 8], "little"))
    return h


def slot(key: int) -> int:
    return (key >> 40) & (SLOTS - 1)


class Sieve:
    """Rule masks by slot, for one event kind's path values."""

    def __init__(self) -> None:
        self.slots: dict[int, int] = {}

    def _admit(self, key: int, bit: int) -> None:
        s = slot(key)
        self.slots[s] = self.slots.get(s, 0) | bit

    def head(self, value: bytes, bit: int, prefix: bool) -> None:
        """An exact value, or a prefix (a glob's literal head is one)."""
        if not value.startswith(b"/"):
            if prefix and value == b"":
                self._admit(_mix(_ROOT, _ALL), bit)  # everything
            return  # matches no absolute path
        *dirs, tail = value[1:].split(b"/")
        if b"" in dirs or (not prefix and tail == b""):
            return  # an empty component or a trailing "/": no canonical path
        h = _ROOT
        for depth, d in enumerate(dirs):
            if depth == DEPTH:
                return  # admitted by its first DEPTH components
            h = _mix(h, name_hash(d))
            self._admit(h, bit)
        if len(dirs) == DEPTH:
            return
        self._admit(_mix(h, _PART | tail[0]) if tail else _mix(h, _ALL), bit)

    def suffix(self, value: bytes, bit: int) -> None:
        if b"/" in value:
            leaf = value.rsplit(b"/", 1)[1]
            if leaf:  # else it ends in "/": no canonical path does
                self._admit(_mix(_LEAF, name_hash(leaf)), bit)
        elif len(value) >= 2:
            self._admit(_mix(_LEAF, _END2 | value[-2] << 8 | value[-1]), bit)
        elif value:
            self._admit(_mix(_LEAF, _PART | value[0]), bit)
        else:
            self._admit(_mix(_ROOT, _ALL), bit)  # "" ends every path
