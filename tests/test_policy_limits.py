"""Hostile policy files: refused quickly with file:line, never an exception of another kind,
never a file read through a link or a descriptor other than the one checked."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, is_exec, new_marker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy import PolicyError, parse_files, parse_text
from policy.parse import MAX_BYTES, MAX_DEPTH, MAX_NODES

_ONE = "policies: [{name: one, rules: [{event: exec, match: {binary: [/nonexistent/one]}}]}]\n"


def refused(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse_text(text, "p.yaml")
    return info.value


def test_anchors_and_aliases_are_refused_with_their_line() -> None:
    e = refused("policies:\n  - name: a\n    rules:\n      - &r {event: exec}\n      - *r\n")
    assert str(e) == "p.yaml:4: anchor &r is not accepted: policies use no YAML references"
    # An alias without its anchor is YAML's own error, still with the line.
    assert str(refused("policies:\n  - *nowhere\n")).startswith("p.yaml:2: ")


def test_an_alias_bomb_is_refused_at_once() -> None:
    # Three levels of nine: 1.5 KB that once took 1.4 s, on the capture thread.
    lol = ", ".join(['"lol"'] * 9)
    text = f"policies:\n  - &a [{lol}]\n"
    for name, prev in (("b", "a"), ("c", "b"), ("d", "c")):
        text += f"  - &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    t0 = time.monotonic()
    assert "anchor &a" in str(refused(text))
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[" * 5000 + "]" * 5000, 1),  # flow nesting
        ("policies:\n" + "".join(" " * i + "- \n" for i in range(2, 1000)), 2 + MAX_DEPTH - 1),
        ("{a: " * 3000 + "1" + "}" * 3000, 1),
    ],
    ids=["flow", "block", "mappings"],
)
def test_deep_nesting_is_a_policy_error_not_a_recursion_error(text: str, line: int) -> None:
    e = refused(text)
    assert e.message == f"nested more than {MAX_DEPTH} levels deep"
    assert e.line == line


def test_a_document_too_large_or_with_too_many_values_is_refused(tmp_path: Path) -> None:
    big = _ONE + "#" + "x" * MAX_BYTES + "\n"  # a valid file, but not a policy's size
    assert refused(big).message == f"larger than {MAX_BYTES} bytes: not a policy file"
    f = tmp_path / "big.yaml"
    f.write_text(big)
    with pytest.raises(PolicyError, match=f"^{re.escape(str(f))}:0: larger than"):
        parse_files([f])
    paths = ", ".join(f"/b{i}" for i in range(MAX_NODES))
    e = refused(f"policies: [{{name: a, rules: [{{event: exec, match: {{binary: [{paths}]}}}}]}}]")
    assert e.message == f"more than {MAX_NODES} YAML values in one file"


def test_bytes_that_are_not_utf8_name_the_file_and_byte(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_bytes(b"policies: [\xff]\n")
    with pytest.raises(
        PolicyError, match=re.escape(f"{f}:0: not UTF-8 text: invalid start byte at byte 11")
    ):
        parse_files([f])


# -- any input: PolicyError or policies, in bounded time ------------------------

_YAMLISH = st.text(
    alphabet=st.sampled_from(list("[]{}:,-&*!|>'\"#%@` \n\tabpolicesnamrulevtx0129/.\\")),
    max_size=400,
)


def _only_policy_errors(text: str) -> None:
    # Time is bounded by each test's deadline: generous, as the machine may
    # be busy, yet far below what references or nesting once cost.
    try:
        parse_text(text, "p.yaml")
    except PolicyError as exc:
        assert re.match(r"^p\.yaml:\d+: \S", str(exc)), str(exc)


@settings(max_examples=300, deadline=10_000, suppress_health_check=[HealthCheck.too_slow])
@given(_YAMLISH)
def test_any_yamlish_text_is_a_policy_error_or_policies(text: str) -> None:
    _only_policy_errors(text)


@settings(max_examples=25, deadline=10_000, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 1500), st.sampled_from(["[", "{a: ", "- ", "[{a: "]), _YAMLISH)
def test_any_nesting_is_a_policy_error_or_policies(depth: int, opener: str, rest: str) -> None:
    if opener == "- ":  # block nesting: each level indented one more
        _only_policy_errors("".join(" " * i + "- \n" for i in range(min(depth, 900))) + rest)
    else:
        _only_policy_errors(opener * depth + rest)


@settings(max_examples=200, deadline=10_000)
@given(st.text(max_size=300))
def test_any_text_is_a_policy_error_or_policies(text: str) -> None:
    _only_policy_errors(text)


@settings(max_examples=100, deadline=10_000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes_in_a_file_are_a_policy_error_or_policies(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "p.yaml"
        f.write_bytes(data)
        os.chmod(f, 0o600)
        for strict in (False, True):
            try:
                parse_files([f], strict=strict)
            except PolicyError as exc:
                assert str(exc).startswith(f"{f}:"), str(exc)


@settings(max_examples=50, deadline=10_000)
@given(
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "policies",
                        "name",
                        "rules",
                        "event",
                        "match",
                        "binary",
                        "path",
                        "action",
                        "exact",
                    ]
                ),
                inner,
                max_size=4,
            )
        ),
        max_leaves=60,
    )
)
def test_any_yaml_structure_is_a_policy_error_or_policies(value: object) -> None:
    import yaml

    _only_policy_errors(yaml.safe_dump({"policies": value}))


# -- the daemon's files: checked on the descriptor they are read from ----------


def test_a_symlink_that_is_not_roots_is_refused_even_in_a_sticky_directory(
    tmp_path: Path,
) -> None:
    # In a sticky directory (as /tmp) the link's owner can replace it with
    # one to any file, after the check: only root's links are followed.
    real = tmp_path / "root-only"
    real.mkdir()
    (real / "p.yaml").write_text(_ONE)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    link = sticky / "p.yaml"
    link.symlink_to(real / "p.yaml")
    assert len(parse_files([link], strict=True).policies) == 1  # root's link: followed
    os.lchown(link, 1000, 1000)
    with pytest.raises(PolicyError, match="symlink is owned by uid 1000, not root"):
        parse_files([link], strict=True)
    # A link of theirs higher up the path counts the same.
    (sticky / "dir").symlink_to(real)
    os.lchown(sticky / "dir", 1000, 1000)
    with pytest.raises(
        PolicyError, match=re.escape(f"symlink {sticky / 'dir'} is owned by uid 1000")
    ):
        parse_files([sticky / "dir" / "p.yaml"], strict=True)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    d = tmp_path / "p"
    d.mkdir()
    fifo = d / "p.yaml"
    os.mkfifo(fifo, 0o600)  # reading it waits for a writer: a daemon stuck on SIGHUP

    def writer() -> None:  # lets a reader that waited go on, late
        time.sleep(2)
        with open(fifo, "w") as w:
            w.write(_ONE)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(PolicyError, match="is a FIFO, not a regular file"):
            parse_files([d], strict=True)
        assert time.monotonic() - t0 < 1.0
    finally:
        r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # unblocks the writer's open
        t.join(5)
        os.close(r)


# -- SIGHUP: a reload never holds up capture and never stops the daemon -------


@pytest.fixture
def policy_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="tracer-hup-"))
    (d / "a.yaml").write_text(_ONE)
    yield d
    shutil.rmtree(d)


def _applied(d: Daemon) -> int:
    return sum("policies applied" in line for line in d.stderr)


def test_sighup_with_a_hostile_file_is_refused_and_the_daemon_runs_on(policy_dir: Path) -> None:
    d = Daemon("--policy", str(policy_dir))
    try:
        (policy_dir / "b.yaml").write_text("[" * 5000 + "]" * 5000)
        d.proc.send_signal(signal.SIGHUP)
        line = d.wait_log("policy reload refused")
        assert "b.yaml:1: nested more than" in line
        d.sync()  # still capturing
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0, "".join(d.stderr)


def test_a_slow_reload_does_not_hold_up_capture(policy_dir: Path) -> None:
    # Valid files that take seconds to parse (long descriptions near the
    # size limit): events keep coming while they are parsed.
    d = Daemon("--policy", str(policy_dir))
    try:
        assert _applied(d) == 1
        for i in range(8):
            desc = "x" * (MAX_BYTES - 200)
            (policy_dir / f"slow{i}.yaml").write_text(
                f"policies: [{{name: slow{i}, description: '{desc}', "
                f"rules: [{{event: exec, match: {{binary: [/nonexistent/slow{i}]}}}}]}}]\n"
            )
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)  # the loop has taken the signal
        marker = new_marker("hup")
        subprocess.run(["/bin/true", marker], check=True)
        d.wait_for(is_exec(marker), timeout=30)
        seen = time.monotonic() - t0
        done_before_event = _applied(d)
        d.wait_log("policies=['one', 'slow0'", timeout=60)
        took = time.monotonic() - t0
        assert done_before_event == 1, (
            f"the event came only after the reload ({seen:.2f} s, reload {took:.2f} s)"
        )
    finally:
        assert d.stop() == 0, "".join(d.stderr)
