"""`throttle` and `aggregate` in policy files: refused with file:line when wrong,
compiled to what the kernel's tr_throttle_rules holds, and modelled by the dry-run."""

from __future__ import annotations

import textwrap

import pytest

from policy import PolicyError, compile_policies, parse_text
from policy.evaluate import Evaluator, ThrottleModel
from policy.kernel import _throttle
from policy.model import PolicySet, Throttle, ThrottleBy


def _rule(extra: str, action: str = "post", mode: str = "enforce") -> str:
    return textwrap.dedent(
        f"""\
        policies:
          - name: storm
            mode: {mode}
            rules:
              - event: file_open
                match: {{path: [/tmp/x]}}
                action: {action}
        """
    ) + textwrap.indent(textwrap.dedent(extra), " " * 8)


def _parse(extra: str, action: str = "post", mode: str = "enforce") -> PolicySet:
    return PolicySet(parse_text(_rule(extra, action, mode), "p.yaml"))


@pytest.mark.parametrize(
    ("extra", "line", "needle"),
    [
        ("throttle: yes\n", 8, "throttle needs numbers"),
        ("throttle: 10\n", 8, "throttle needs numbers"),
        ("throttle: {}\n", 8, "throttle needs numbers"),
        ("throttle: {events: 10}\n", 8, "throttle needs numbers"),
        ("throttle: {per: 1s}\n", 8, "throttle needs numbers"),
        ("throttle: {events: ten, per: 1s}\n", 8, "throttle.events must be an integer"),
        ("throttle: {events: 0, per: 1s}\n", 8, "throttle.events 0 is out of range"),
        ("throttle: {events: 16777216, per: 1s}\n", 8, "out of range"),
        ("throttle: {events: 5, per: soon}\n", 8, "throttle.per: not a duration: 'soon'"),
        ("throttle: {events: 5, per: 0s}\n", 8, "not between 1ms and 1d"),
        ("throttle: {events: 5, per: -1s}\n", 8, "not between 1ms and 1d"),
        ("throttle: {events: 5, per: 2d}\n", 8, "not between 1ms and 1d"),
        ("throttle: {events: 5, per: nan}\n", 8, "not between 1ms and 1d"),
        ("throttle: {events: 5, per: 1.5ms}\n", 8, "not a whole number of milliseconds"),
        ("throttle: {events: 5, per: [1s]}\n", 8, "throttle.per must be a duration"),
        ("throttle: {events: 5, per: 1s, by: pod}\n", 8, "throttle.by must be one of"),
        ("throttle: {events: 5, per: 1s, every: 2}\n", 8, "unknown key 'every' in throttle"),
        ("aggregate: forever\n", 8, "aggregate: not a duration"),
        ("aggregate: {per: 1s}\n", 8, "aggregate must be a duration"),
        ("throttle: {events: 5, per: 1s}\naggregate: 1s\n", 9, "throttle or aggregate, not both"),
    ],
)
def test_bad_throttles_are_refused_with_file_and_line(extra: str, line: int, needle: str) -> None:
    with pytest.raises(PolicyError) as info:
        _parse(extra)
    assert (info.value.source, info.value.line) == ("p.yaml", line)
    assert needle in info.value.message


def test_an_ignore_rule_has_nothing_to_throttle() -> None:
    with pytest.raises(PolicyError, match=r"^p.yaml:8: aggregate on an ignore rule"):
        _parse("aggregate: 1s\n", action="ignore")


def test_throttle_and_aggregate_compile_to_the_kernels_table() -> None:
    ps = _parse("throttle: {events: 10, per: 250ms, by: cgroup}\n")
    assert ps.policies[0].rules[0].throttle == Throttle(10, 250, ThrottleBy.CGROUP)
    ref = compile_policies(ps, lsm_active=False).kinds[ps.policies[0].rules[0].kind].rules[0]
    assert _throttle(ref) == (10).to_bytes(4, "little") + (1).to_bytes(4, "little") + (
        250
    ).to_bytes(8, "little")
    ps = _parse("aggregate: 1s\n")
    assert ps.policies[0].rules[0].throttle == Throttle(1, 1000, aggregate=True)
    ref = compile_policies(ps, lsm_active=False).kinds[ps.policies[0].rules[0].kind].rules[0]
    assert _throttle(ref)[:8] == (1).to_bytes(4, "little") + (2).to_bytes(4, "little")


@pytest.mark.parametrize(("action", "mode", "throttled"), [
    ("sigkill", "enforce", False),
    ("deny", "enforce", False),
    ("sigkill", "monitor", True),  # it only posts, so its posts are throttled
    ("post", "enforce", True),
])
def test_enforcement_is_never_throttled(action: str, mode: str, throttled: bool) -> None:
    ps = _parse("aggregate: 1s\n", action=action, mode=mode)
    ref = compile_policies(ps, lsm_active=True).kinds[ps.policies[0].rules[0].kind].rules[0]
    assert (ref.kernel_throttle is not None) == throttled
    assert (_throttle(ref) != bytes(16)) == throttled


def _open(pid: int, path: str, ms: int) -> tuple[dict[str, object], int]:
    ev = {
        "type": "file_open",
        "process": {"binary": "/bin/cat", "pid": pid, "uid": 0, "flags": [], "cgroup_id": "9"},
        "file_open": {"path": path, "flags": ["O_RDONLY"]},
    }
    return ev, ms * 1_000_000


def test_the_dry_run_models_windows_per_key() -> None:
    ps = PolicySet(
        parse_text(
            _rule("throttle: {events: 2, per: 1s}\n").replace("[/tmp/x]", "{prefix: [/tmp/]}"),
            "p.yaml",
        )
    )
    ev = Evaluator(ps)
    model = ThrottleModel()

    def posts(pid: int, path: str, ms: int) -> bool:
        e, t = _open(pid, path, ms)
        v = ev.verdict(e)
        assert v is not None
        return model.posts(v, e, t)

    # Two per second per process, whatever the path; the window opens at the first.
    assert [posts(1, "/tmp/a", ms) for ms in (0, 10, 20, 999)] == [True, True, False, False]
    assert posts(2, "/tmp/a", 30)  # another process: its own window
    assert [posts(1, "/tmp/b", ms) for ms in (1000, 1001, 1002)] == [True, True, False]


def test_the_dry_run_models_aggregate_by_path() -> None:
    ps = PolicySet(
        parse_text(_rule("aggregate: 1s\n").replace("[/tmp/x]", "{prefix: [/tmp/]}"), "p.yaml")
    )
    ev = Evaluator(ps)
    model = ThrottleModel()
    seen = []
    for path, ms in (("/tmp/a", 0), ("/tmp/a", 5), ("/tmp/b", 6), ("/tmp/a", 1000)):
        e, t = _open(1, path, ms)
        v = ev.verdict(e)
        assert v is not None
        seen.append(model.posts(v, e, t))
    assert seen == [True, False, True, True]
