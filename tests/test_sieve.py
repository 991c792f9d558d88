"""The path sieve never turns away a path some rule's values match, and turns away the rest.

`kernel_admits` (tests/sieve_walk.py) is the kernel's walk over the table
(bpf_probes/policy.bpf.h tr_sieve) restated, so that the tables
policy/sieve.py builds can be checked against every kind of value on many
paths without a kernel; the kernel side runs in tests/test_policy_events.py
(the prefilter tests), where a table the kernel read differently would hide
selected opens.
"""

from __future__ import annotations

import random
import re
import textwrap
from pathlib import Path

from sieve_walk import kernel_admits

from policy import Kind, compile_policies, parse_files, parse_text
from policy import sieve as sv
from policy.glob import head as glob_head
from policy.glob import match as glob_match
from policy.model import PolicySet

REPO = Path(__file__).resolve().parent.parent


def test_constants_are_the_kernels() -> None:
    header = (REPO / "bpf_probes" / "tracer.h").read_text()
    defined = dict(re.findall(r"#define TR_SIEVE_(\w+) (\w+)", header))
    assert {k: int(v.removesuffix("ULL"), 0) for k, v in defined.items()} == {
        "SLOTS": sv.SLOTS,
        "DEPTH": sv.DEPTH,
        "NAME": sv.NAME,
        "K": sv._K,
        "ROOT": sv._ROOT,
        "LEAF": sv._LEAF,
        "ALL": sv._ALL,
        "PART": sv._PART,
        "END2": sv._END2,
    }


# Names that share first bytes, lengths and the 32 bytes the hash reads.
_NAMES = [b"etc", b"e", b"et", b"etcx", b"ssh", b".ssh", b"id_rsa", b"x" * 40, b"x" * 40 + b"y",
          b"x" * 32, b"a.pub", b"pub", b"b"]


def _value(rng: random.Random) -> bytes:
    comps = [rng.choice(_NAMES) for _ in range(rng.randint(0, 10))]
    v = b"/" + b"/".join(comps)
    cut = rng.randint(0, len(v))
    return rng.choice([v, v + b"/", v[:cut], v[cut:]])


def test_no_matching_value_is_ever_turned_away() -> None:
    rng = random.Random(18)
    for _ in range(300):
        s = sv.Sieve()
        values = []
        for bit in range(8):
            how = rng.choice(["exact", "prefix", "suffix", "glob"])
            v = _value(rng)
            if how == "glob":
                v = v.replace(b"x" * 32, b"x*", 1) + b"/**"
                s.head(glob_head(v.decode()).encode(), 1 << bit, prefix=True)
            elif how == "suffix":
                s.suffix(v, 1 << bit)
            else:
                s.head(v, 1 << bit, prefix=how == "prefix")
            values.append((how, v))
        for _ in range(100):
            path = b"/" + b"/".join(rng.choice(_NAMES) for _ in range(rng.randint(1, 12)))
            if rng.random() < 0.3:  # a path some value starts with
                path = rng.choice(values)[1].rstrip(b"/") or path
                if b"//" in path or not path.startswith(b"/"):
                    continue
            admitted = kernel_admits(s, path)
            for bit, (how, v) in enumerate(values):
                matched = {
                    "exact": path == v,
                    "prefix": path.startswith(v),
                    "suffix": path.endswith(v),
                    "glob": glob_match(v, path),
                }[how]
                assert not matched or admitted >> bit & 1, (how, v, path)


def test_the_library_turns_ordinary_opens_away() -> None:
    c = compile_policies(parse_files([REPO / "policy" / "library"]), lsm_active=False)
    t = c.kinds[Kind.FILE_OPEN]
    reads = t.mask & ~t.write_only  # the kernel's tr_rules_for on a read
    for path in (b"/etc/hostname", b"/usr/lib/os-release", b"/usr/lib/x86_64-linux-gnu/libc.so.6",
                 b"/etc/ld.so.cache", b"/proc/self/status", b"/home/u/notes.txt"):
        assert kernel_admits(c.sieve, path) & reads == 0, path
    bit = {r.policy: 1 << i for i, r in enumerate(t.rules)}
    assert kernel_admits(c.sieve, b"/etc/shadow") & bit["credential-files"]
    assert kernel_admits(c.sieve, b"/home/u/.ssh/id_rsa") & bit["ssh-private-keys"]
    assert kernel_admits(c.sieve, b"/etc/cron.d/x") & bit["cron-writes"]
    assert kernel_admits(c.sieve, b"/home/u/.config/systemd/user/x") & bit["systemd-unit-writes"]


def test_a_glob_is_admitted_by_its_literal_head_only() -> None:
    ps = PolicySet(parse_text(textwrap.dedent("""
        policies:
          - name: g
            rules:
              - event: file_open
                match: {path: {glob: ["/srv/*/secrets/**"]}, not_path: {glob: ["/usr/**/x*"]}}
        """), "p.yaml"))
    s = compile_policies(ps, lsm_active=False).sieve
    assert kernel_admits(s, b"/srv/a/secrets/k") == 1
    assert kernel_admits(s, b"/srv/a/public/k") == 1  # the head is all the sieve knows
    assert kernel_admits(s, b"/usr/lib/x1") == 0  # a not_path value admits nothing
    assert kernel_admits(s, b"/srv") == 0
