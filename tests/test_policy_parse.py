"""Policy files: every bad input is refused with file:line, every good one compiles right."""

from __future__ import annotations

import ipaddress
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from policy import Action, Kind, PolicyError, compile_policies, parse_files, parse_text
from policy.compile import F_BINARY, F_DADDR, F_PATH

LIBRARY = Path(__file__).resolve().parent.parent / "policy" / "library"


def parse(doc: str) -> None:
    parse_text(textwrap.dedent(doc), "p.yaml")


def refused(doc: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse(doc)
    return info.value


def test_the_shipped_library_is_valid() -> None:
    ps = parse_files([LIBRARY])
    assert len(ps.policies) >= 12
    # Everything posts, nothing enforces; every policy says how bad and what it is.
    c = compile_policies(ps, lsm_active=False)
    assert all(r.action is Action.POST for t in c.kinds.values() for r in t.rules)
    for p in ps.policies:
        assert p.message and p.tags and p.description, p.name
        assert any(t.startswith("T") for t in p.tags), p.name


def test_invalid_yaml_names_the_line() -> None:
    e = refused("policies:\n  - name: a\n    rules: [\n")
    assert e.source == "p.yaml" and e.line >= 3
    assert "invalid YAML" in str(e)


def test_unknown_key_names_key_and_line() -> None:
    e = refused(
        """
        policies:
          - name: a
            rules:
              - event: file_open
                match: {pathh: [/etc/x]}
        """
    )
    assert e.line == 6
    assert "unknown key 'pathh'" in str(e)


@pytest.mark.parametrize(
    ("match", "needle"),
    [
        ('{daddr: ["10.0.0.0/33"]}', "bad CIDR"),
        ('{daddr: ["10.0.0.1/8"]}', "bad CIDR"),  # host bits set
        ("{dport: [70000]}", "out of range"),
        ('{dport: ["90-80"]}', "low to high"),
        ('{dport: ["http"]}', "neither a port nor a range"),
        ("{uid: [-1]}", "out of range"),
        ("{daddr: []}", "is empty"),
    ],
)
def test_bad_connect_values(match: str, needle: str) -> None:
    e = refused(
        f"""
        policies:
          - name: a
            rules:
              - event: connect
                match: {match}
        """
    )
    assert needle in str(e)
    assert e.line == 6


def test_path_longer_than_the_kernel_limit() -> None:
    long = "/" + "x" * 251
    e = refused(
        f"""
        policies:
          - name: a
            rules:
              - event: file_open
                match: {{path: ["{long}"]}}
        """
    )
    assert "kernel-side limit is 251" in str(e)


def test_relative_path_and_wrong_selector_for_kind() -> None:
    assert "absolute" in str(
        refused("policies: [{name: a, rules: [{event: file_open, match: {path: [etc/x]}}]}]")
    )
    assert "unknown key 'path'" in str(
        refused("policies: [{name: a, rules: [{event: exec, match: {path: [/x]}}]}]")
    )
    assert "unknown action" in str(
        refused("policies: [{name: a, rules: [{event: exec, action: block}]}]")
    )
    assert "access applies to file_open" in str(
        refused("policies: [{name: a, rules: [{event: exec, access: write}]}]")
    )


def test_memfd_names_are_values_of_their_own() -> None:
    """Exec and open events name a memfd memfd:NAME, not a path."""
    parse(
        "policies: [{name: a, rules: [{event: exec, match: "
        "{binary: {prefix: ['memfd:'], exact: [memfd:x]}}}]}]"
    )
    assert "absolute path or memfd:NAME" in str(
        refused("policies: [{name: a, rules: [{event: exec, match: {binary: [memfdx]}}]}]")
    )


def test_bad_names_and_duplicates(tmp_path: Path) -> None:
    assert "policy name" in str(refused("policies: [{name: 'Bad Name', rules: [{event: exec}]}]"))
    (tmp_path / "a.yaml").write_text("policies: [{name: same, rules: [{event: exec}]}]\n")
    (tmp_path / "b.yaml").write_text(
        "policies:\n  - name: other\n    rules: [{event: exec}]\n"
        "  - name: same\n    rules: [{event: exec}]\n"
    )
    with pytest.raises(PolicyError) as exc:
        parse_files([tmp_path])
    # The duplicate is named where it is, and the first definition where it is.
    assert exc.value.line == 4
    assert str(exc.value) == (
        f"{tmp_path / 'b.yaml'}:4: policy 'same' is also defined at {tmp_path / 'a.yaml'}:1"
    )


def test_more_rules_than_the_kernel_holds(tmp_path: Path) -> None:
    rules = "\n".join(
        f"      - event: file_open\n        match: {{path: [/f{i}]}}" for i in range(65)
    )
    f = tmp_path / "many.yaml"
    f.write_text(f"policies:\n  - name: many\n    rules:\n{rules}\n")
    with pytest.raises(PolicyError, match="more than 64 file_open rules") as info:
        compile_policies(parse_files([f]), lsm_active=False)
    assert info.value.source == str(f)


def test_prefix_entries_carry_shorter_prefixes() -> None:
    ps = parse_files([])
    ps.policies += parse_text(
        textwrap.dedent(
            """
            policies:
              - name: a
                rules:
                  - event: file_open
                    match: {path: {prefix: [/etc/]}}
                  - event: file_open
                    match: {path: {prefix: [/etc/ssh/]}, not_path: {suffix: [.pub]}}
            """
        ),
        "p.yaml",
    )
    c = compile_policies(ps, lsm_active=False)
    k = Kind.FILE_OPEN.index
    assert c.prefix[(k, F_PATH, b"/etc/")].pos == 0b01
    # The longest match (/etc/ssh/) must also speak for the /etc/ rule.
    assert c.prefix[(k, F_PATH, b"/etc/ssh/")].pos == 0b11
    assert c.suffix[(k, F_PATH, b"bup.")].neg == 0b10
    t = c.kinds[Kind.FILE_OPEN]
    assert t.free[F_PATH] == 0 and t.constrained[F_PATH] == 0b11
    assert t.free[F_BINARY] == 0b11 and t.constrained[F_BINARY] == 0


def test_cidr_entries_carry_wider_networks() -> None:
    ps = parse_files([])
    ps.policies += parse_text(
        "policies: [{name: a, rules: [{event: connect, match: {daddr: [10.0.0.0/8]}},"
        " {event: connect, match: {not_daddr: [10.1.0.0/16]}}]}]",
        "p.yaml",
    )
    c = compile_policies(ps, lsm_active=False)
    k = Kind.CONNECT.index
    v4 = ipaddress.IPv4Address("10.0.0.0").packed
    v41 = ipaddress.IPv4Address("10.1.0.0").packed
    wide = c.cidr[(k, b"\0" * 10 + b"\xff\xff" + v4, 96 + 8)]
    narrow = c.cidr[(k, b"\0" * 10 + b"\xff\xff" + v41, 96 + 16)]
    assert (wide.pos, wide.neg) == (0b01, 0)
    assert (narrow.pos, narrow.neg) == (0b01, 0b10)
    assert c.kinds[Kind.CONNECT].fields & (1 << F_DADDR)


def test_deny_without_lsm_becomes_sigkill_with_a_warning() -> None:
    ps = parse_files([])
    ps.policies += parse_text(
        "policies: [{name: a, rules: [{event: file_open, match: {path: [/x]}, action: deny}]}]",
        "p.yaml",
    )
    without = compile_policies(ps, lsm_active=False)
    assert without.kinds[Kind.FILE_OPEN].rules[0].action is Action.SIGKILL
    assert "deny needs BPF-LSM" in without.warnings[0]
    with_lsm = compile_policies(ps, lsm_active=True)
    assert with_lsm.kinds[Kind.FILE_OPEN].rules[0].action is Action.DENY
    assert with_lsm.warnings == []


def test_enforcement_and_ignore_masks() -> None:
    ps = parse_files([])
    ps.policies += parse_text(
        "policies: [{name: a, rules: ["
        "{event: exec}, {event: exec, action: ignore}, {event: exec, action: sigkill}]}]",
        "p.yaml",
    )
    t = compile_policies(ps, lsm_active=False).kinds[Kind.EXEC]
    assert (t.enforce, t.ignore, t.mask) == (0b100, 0b010, 0b111)


def test_more_values_than_a_map_holds(tmp_path: Path) -> None:
    paths = ", ".join(f"/f{i}" for i in range(4097))
    f = tmp_path / "huge.yaml"
    f.write_text(
        f"policies: [{{name: huge, rules: [{{event: file_open, match: {{path: [{paths}]}}}}]}}]\n"
    )
    with pytest.raises(PolicyError, match="4097 exact values exceed the kernel map's 4096 entries"):
        compile_policies(parse_files([f]), lsm_active=False)


_ONE = "policies:\n  - name: p\n    rules:\n      - event: file_open\n        match: {path: [/x]}\n"


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        (lambda d, f: os.chmod(f, 0o666), "the file can be changed by everyone (mode 0666)"),
        (lambda d, f: (os.chmod(f, 0o664), os.chown(f, 0, 100)), "its group, gid 100"),
        (lambda d, f: os.chown(f, 1000, 0), "its owner, uid 1000"),
        (lambda d, f: os.chmod(d, 0o777), "directory {d} can be changed by everyone"),
        (lambda d, f: os.chown(d, 1000, 0), "directory {d} can be changed by its owner"),
    ],
)
def test_the_daemon_refuses_policies_others_could_change(
    tmp_path: Path, setup: Any, problem: str
) -> None:
    # Whoever can write a policy decides what a root daemon sees and kills.
    d = tmp_path / "policies"
    d.mkdir()
    f = d / "p.yaml"
    f.write_text(_ONE)
    os.chmod(f, 0o644)
    assert len(parse_files([d], strict=True).policies) == 1  # as made: root's, 0644
    setup(d, f)
    with pytest.raises(PolicyError, match=re.escape(problem.format(d=d))):
        parse_files([d], strict=True)
    with pytest.raises(PolicyError, match=re.escape(problem.format(d=d))):
        parse_files([f], strict=True)
    assert len(parse_files([d]).policies) == 1  # `tracer policy check` only reads


def test_root_group_and_sticky_directories_are_root_only_enough(tmp_path: Path) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)  # as /tmp: others cannot replace a file of root's
    f = d / "p.yaml"
    f.write_text(_ONE)
    os.chmod(f, 0o664)  # group root: a clone made under umask 002
    os.chown(f, 0, 0)
    assert len(parse_files([f], strict=True).policies) == 1


def test_a_symlink_in_a_directory_others_own_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "root-only"
    real.mkdir()
    (real / "p.yaml").write_text(_ONE)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "p.yaml").symlink_to(real / "p.yaml")
    assert len(parse_files([theirs / "p.yaml"], strict=True).policies) == 1
    os.chown(theirs, 1000, 1000)  # they could point the link anywhere
    problem = f"directory {theirs} can be changed by its owner"
    with pytest.raises(PolicyError, match=re.escape(problem)):
        parse_files([theirs / "p.yaml"], strict=True)
