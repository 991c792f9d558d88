"""Subscriber filters (export/filters.py): semantics, validation, one matcher for both inputs."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from factories import BASH, IN_POD, IN_POD_NO_METADATA, INIT, LS, SSHD, T0, exec_ev, exit_ev, mkproc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.filters import (
    CACHED_TEXT,
    KINDS,
    MAX_FILTERS,
    MAX_PATTERNS,
    REGEX_MEM,
    REGISTRY,
    SUBSCRIBER_REGEX_MEM,
    TOTAL_REGEX_MEM,
    EventFilter,
    Facts,
    FilterBudgetExhausted,
    FilterError,
    facts_of_dict,
    facts_of_event,
)
from export.jsonl import Serializer
from export.proto_gen import tracer_v1_pb2 as pb
from tracer.core.events import ProcessExec
from tracer.core.labels import parse_selector

_made: list[EventFilter] = []


@pytest.fixture(autouse=True)
def _release_filters() -> Iterator[None]:
    """Each test starts with no compiled pattern held (the registry counts them all)."""
    yield
    for f in _made:
        f.release()
    _made.clear()
    assert REGISTRY.mem == 0


def ef(
    allow: list[dict[str, Any]] | None = None, deny: list[dict[str, Any]] | None = None
) -> EventFilter:
    req = pb.GetEventsRequest(
        allow=[pb.Filter(**f) for f in allow or []], deny=[pb.Filter(**f) for f in deny or []]
    )
    f = EventFilter.from_request(req)
    _made.append(f)
    return f


CURL = mkproc(300, BASH, binary="/usr/bin/curl", args=("curl", "-s", "https://example.com"))
EXEC_CURL = facts_of_event(exec_ev(CURL))
EXIT_CURL = facts_of_event(exit_ev(CURL))
EXEC_LS = facts_of_event(exec_ev(LS))  # /bin/ls ls -l, pid 200


def pod_facts(**kw: Any) -> Facts:
    base: dict[str, Any] = {
        "kind": "process_exec",
        "binary": "/usr/sbin/nginx",
        "args": "-g daemon off;",
        "pid": 42,
        "namespace": "web",
        "pod": "nginx-7d9f-abcde",
        "labels": {"app": "nginx", "tier": "front", "env": "prod"},
        "container_id": "3f4e5d6c7b8a9f0e1d2c",
    }
    base.update(kw)
    return Facts(**base)


def test_no_filter_passes_everything() -> None:
    f = ef()
    assert f.passes_everything
    assert f.matches(EXEC_CURL) and f.matches(EXIT_CURL)


def test_fields_in_one_filter_are_anded() -> None:
    f = ef([{"event_types": ["process_exec"], "binary_regex": ["curl"]}])
    assert f.matches(EXEC_CURL)
    assert not f.matches(EXIT_CURL)  # right binary, wrong type
    assert not f.matches(EXEC_LS)  # right type, wrong binary


def test_entries_of_one_field_are_ored() -> None:
    f = ef([{"binary_regex": ["^/bin/ls$", "wget"], "pid": [300, 200]}])
    assert f.matches(EXEC_LS)
    assert not f.matches(EXEC_CURL)


def test_allow_filters_are_ored() -> None:
    f = ef([{"binary_regex": ["curl"]}, {"pid": [200]}])
    assert f.matches(EXEC_CURL) and f.matches(EXEC_LS)
    assert not f.matches(facts_of_event(exec_ev(SSHD)))


def test_deny_wins() -> None:
    f = ef([{"event_types": ["process_exec"]}], deny=[{"binary_regex": ["curl"]}])
    assert f.matches(EXEC_LS)
    assert not f.matches(EXEC_CURL)
    only_deny = ef(deny=[{"event_types": ["process_exit"]}])
    assert only_deny.matches(EXEC_CURL) and not only_deny.matches(EXIT_CURL)


def test_args_regex_sees_the_arguments_after_argv0() -> None:
    assert EXEC_CURL.args == "-s https://example.com"
    assert ef([{"args_regex": [r"-s https://"]}]).matches(EXEC_CURL)
    assert not ef([{"args_regex": ["^curl"]}]).matches(EXEC_CURL)


def test_pod_fields() -> None:
    e = pod_facts()
    assert ef([{"namespace": ["web", "db"]}]).matches(e)
    assert not ef([{"namespace": ["we"]}]).matches(e)  # exact, not a prefix
    assert ef([{"pod_regex": ["^nginx-"]}]).matches(e)
    assert ef([{"container_id": ["3f4e5d6c7b8a"]}]).matches(e)  # short id
    assert not ef([{"container_id": ["4f"]}]).matches(e)
    assert ef([{"labels": ["app=nginx,env in (prod,stage)"]}]).matches(e)
    assert not ef([{"labels": ["app=nginx,tier!=front"]}]).matches(e)
    # A process outside any pod has no namespace, pod or container.
    host = EXEC_CURL
    for field in ({"namespace": ["web"]}, {"pod_regex": [""]}, {"container_id": ["3"]}):
        assert not ef([field]).matches(host), field
        assert ef(deny=[field]).matches(host), field


@pytest.mark.parametrize(
    ("selector", "labels", "want"),
    [
        ("", {}, True),
        ("app", {"app": "x"}, True),
        ("app", {}, False),
        ("!app", {}, True),
        ("!app", {"app": ""}, False),
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "web"}, True),
        ("app=web", {"app": "db"}, False),
        ("app!=web", {}, True),  # Kubernetes: != matches a missing key
        ("app!=web", {"app": "web"}, False),
        ("env in (a, b)", {"env": "b"}, True),
        ("env in (a,b)", {}, False),
        ("env notin (a,b)", {}, True),
        ("env notin (a,b)", {"env": "a"}, False),
        ("app.kubernetes.io/name=web,tier", {"app.kubernetes.io/name": "web", "tier": "1"}, True),
        ("app=", {"app": ""}, True),
    ],
)
def test_label_selector_semantics(selector: str, labels: dict[str, str], want: bool) -> None:
    assert all(r.matches(labels) for r in parse_selector(selector)) is want


@pytest.mark.parametrize(
    "bad", ["app===x", "a b", "env in a,b", "=x", "app=(x)", "env in ()x", "a!b"]
)
def test_bad_label_selectors_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_selector(bad)


@pytest.mark.parametrize(
    ("request_filters", "field", "words"),
    [
        (
            {"allow": [{"binary_regex": ["ok", "(unclosed"]}]},
            "allow[0].binary_regex[1]",
            "missing )",
        ),
        ({"deny": [{}, {"args_regex": [r"(a)\1"]}]}, "deny[1].args_regex[0]", "invalid RE2"),
        ({"allow": [{"pod_regex": ["(?=x)"]}]}, "allow[0].pod_regex[0]", "invalid RE2"),
        ({"allow": [{"labels": ["app in x"]}]}, "allow[0].labels[0]", "label selector"),
        (
            {"allow": [{"event_types": ["process_exec", "exec"]}]},
            "allow[0].event_types[1]",
            "'exec'",
        ),
        ({"allow": [{"container_id": [""]}]}, "allow[0].container_id[0]", "empty"),
        ({"allow": [{"binary_regex": ["x" * 5000]}]}, "allow[0].binary_regex[0]", "longer than"),
    ],
)
def test_invalid_filters_name_the_field(
    request_filters: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(FilterError) as exc:
        ef(request_filters.get("allow"), request_filters.get("deny"))
    assert exc.value.field == field
    assert words in str(exc.value)
    assert str(exc.value).startswith(field + ": ")


def test_regexes_are_re2_linear_time() -> None:
    # A backtracking engine would not finish this (2**5000 ways); RE2 is linear.
    f = ef([{"args_regex": ["(x+x+)+y"]}])
    assert not f.matches(pod_facts(args="x" * 5000))
    assert f.matches(pod_facts(args="x" * 5000 + "y"))


def test_short_texts_are_cached_long_ones_matched_and_both_agree() -> None:
    f = ef([{"args_regex": ["^a.*z$"]}])
    g = ef([{"args_regex": ["^a.*z$"]}])  # another subscriber, the same pattern
    for n in (1, CACHED_TEXT - 2, CACHED_TEXT + 50):
        hit, miss = "a" + "m" * n + "z", "a" + "m" * n + "y"
        for _ in range(2):  # the second time from the cache, for the short ones
            assert f.matches(pod_facts(args=hit)) and g.matches(pod_facts(args=hit))
            assert not f.matches(pod_facts(args=miss)) and not g.matches(pod_facts(args=miss))


@pytest.mark.parametrize(
    "ev",
    [
        exec_ev(CURL),
        exit_ev(LS),
        ProcessExec(time=T0, node="n1", process=INIT, parent=None, ancestors=()),
        exec_ev(mkproc(5, args=())),
        exec_ev(IN_POD),
        exec_ev(IN_POD_NO_METADATA),
    ],
)
def test_facts_are_the_same_from_an_event_and_from_its_json_line(ev: ProcessExec) -> None:
    line = json.loads(Serializer().line(ev))
    assert facts_of_dict(line) == facts_of_event(ev)


def test_facts_of_a_json_line_with_pod_and_container() -> None:
    d = {
        "type": "connect",
        "process": {
            "binary": "/app",
            "args": ["app", "--port", "80"],
            "pid": 7,
            "pod": {"namespace": "ns", "name": "p", "labels": {"a": "b"}},
            "container": {"id": "abc"},
        },
    }
    assert facts_of_dict(d) == Facts(
        "connect", "/app", "--port 80", 7, "ns", "p", {"a": "b"}, "abc"
    )


def test_pod_filters_select_enriched_events() -> None:
    f = ef([{"namespace": ["shop"], "labels": ["app=web"], "container_id": ["fff"]}])
    assert f.matches(facts_of_event(exec_ev(IN_POD)))
    assert not f.matches(facts_of_event(exec_ev(IN_POD_NO_METADATA)))  # no namespace known
    assert not f.matches(facts_of_event(exec_ev(LS)))  # on the host


# -- resource limits ------------------------------------------------------------------

# 12 bytes that RE2 compiles to a ~4 MiB program under its default budget.
HUGE_PROGRAM = r"(?:\pL{532})"


def big(i: int) -> str:
    """A distinct pattern charged REGEX_MEM (too large for the smaller budget)."""
    return rf"(?:\pL{{25}})x{i}"


def test_a_pattern_whose_program_is_too_large_is_refused_naming_the_limit() -> None:
    t = time.monotonic()
    with pytest.raises(FilterError) as exc:
        ef([{"args_regex": ["ok", HUGE_PROGRAM]}])
    assert exc.value.field == "allow[0].args_regex[1]"
    assert f"past {REGEX_MEM >> 10} KiB" in str(exc.value)
    assert time.monotonic() - t < 1.0
    assert REGISTRY.mem == 0  # what the request had compiled before the failure is freed


def test_patterns_per_request_are_capped() -> None:
    many = [f"p{i}" for i in range(MAX_PATTERNS)]
    ef([{"binary_regex": many}]).release()  # exactly the cap: fine
    with pytest.raises(FilterError) as exc:
        ef([{"binary_regex": many}, {"container_id": ["abc"]}])
    assert exc.value.field == "allow[1].container_id"
    assert f"more than {MAX_PATTERNS}" in str(exc.value)
    with pytest.raises(FilterError, match=f"more than {MAX_FILTERS} allow and deny filters"):
        ef([{}] * MAX_FILTERS, [{}])
    assert REGISTRY.mem == 0


def test_compiled_size_per_request_is_capped() -> None:
    n = SUBSCRIBER_REGEX_MEM // REGEX_MEM
    f = ef([{"args_regex": [big(i) for i in range(n)] * 2}])  # repeats are charged once
    assert REGISTRY.mem == SUBSCRIBER_REGEX_MEM
    f.release()
    with pytest.raises(FilterError) as exc:
        ef([{"args_regex": [big(i) for i in range(n)]}, {"pod_regex": [big(n)]}])
    assert exc.value.field == "allow[1].pod_regex[0]"
    assert f"past {SUBSCRIBER_REGEX_MEM >> 20} MiB" in str(exc.value)
    assert REGISTRY.mem == 0


def test_all_subscribers_compiled_patterns_are_capped_and_freed_when_they_leave() -> None:
    per = SUBSCRIBER_REGEX_MEM // REGEX_MEM
    filters = [
        ef([{"args_regex": [big(1000 * k + i) for i in range(per)]}])
        for k in range(TOTAL_REGEX_MEM // SUBSCRIBER_REGEX_MEM)
    ]
    assert REGISTRY.mem == TOTAL_REGEX_MEM
    shared = ef([{"args_regex": [big(0)]}])  # compiled already: shares it, costs nothing
    with pytest.raises(FilterBudgetExhausted, match=f"exceed {TOTAL_REGEX_MEM >> 20} MiB"):
        ef([{"args_regex": ["tiny", big(99999)]}])
    assert REGISTRY.mem == TOTAL_REGEX_MEM
    filters.pop().release()
    filters.append(ef([{"args_regex": [big(99999)]}]))
    shared.release()
    shared.release()  # once only
    assert shared.matches(pod_facts(args="é" * 25 + "x0"))  # still works after release
    for f in filters:
        f.release()
    assert REGISTRY.mem == 0


# Regex syntax, RE2's classes and repetitions: the material of both valid
# and invalid patterns, and of programs large and small.
_REGEX_PIECES = st.sampled_from(
    ["a", "x", ".", "*", "+", "?", "|", "(", ")", "[", "]", "^", "$", "\\", "{", "}",
     "{1000}", "{0,300}", "{532}", r"\pL", r"\w", r"\d", r"\1", "(?i)", "(?=", "(?P<n>",
     "[[:alpha:]]", "é", "\x00", "\n", ",", "=", "!", " in (", " notin ("]
)  # fmt: skip
_TEXT = st.one_of(st.text(max_size=40), st.lists(_REGEX_PIECES, max_size=12).map("".join))
_FILTER = st.builds(
    pb.Filter,
    event_types=st.lists(st.one_of(st.sampled_from(KINDS), st.text(max_size=12)), max_size=3),
    binary_regex=st.lists(_TEXT, max_size=3),
    args_regex=st.lists(_TEXT, max_size=3),
    pid=st.lists(st.integers(0, 2**32 - 1), max_size=3),
    namespace=st.lists(st.text(max_size=10), max_size=2),
    pod_regex=st.lists(_TEXT, max_size=2),
    labels=st.lists(_TEXT, max_size=2),
    container_id=st.lists(st.text(max_size=12), max_size=2),
)
_FACTS = st.builds(
    Facts,
    kind=st.sampled_from(KINDS),
    binary=st.text(max_size=300),
    args=st.text(max_size=600),
    pid=st.integers(0, 2**32 - 1),
    namespace=st.none() | st.text(max_size=10),
    pod=st.none() | st.text(max_size=20),
    labels=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    container_id=st.none() | st.text(max_size=12),
)


@settings(max_examples=300, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(
    allow=st.lists(_FILTER, max_size=3),
    deny=st.lists(_FILTER, max_size=2),
    facts=st.lists(_FACTS, min_size=1, max_size=3),
)
def test_any_filter_request_is_refused_cleanly_or_works_in_bounded_time(
    allow: list[pb.Filter], deny: list[pb.Filter], facts: list[Facts]
) -> None:
    req = pb.GetEventsRequest(allow=allow, deny=deny)
    t = time.monotonic()
    try:
        f = EventFilter.from_request(req)
    except FilterError as exc:
        assert re.match(r"(allow|deny)(\[\d+\])?(\.\w+(\[\d+\])?)?: .", str(exc)), str(exc)
    else:
        try:
            for e in facts:
                assert f.matches(e) in (True, False)
        finally:
            f.release()
    assert time.monotonic() - t < 2.0
    assert REGISTRY.mem == 0  # nothing compiled outlives its filter
