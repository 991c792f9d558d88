"""Secrets in command lines are masked before any output sees them (enrich/redact.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import Daemon, new_marker, tracer_cmd
from hypothesis import given, settings
from hypothesis import strategies as st

from enrich.redact import DEFAULT_RULES, RedactError, Redactor, RedactRule, load_rules
from forensics.log import Problems, list_segments, read_bytes

R = Redactor()


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (("mysql", "-uroot", "-pS3cret", "db"), ("mysql", "-uroot", "-p***", "db")),
        (("app", "--db-password=hunter2", "-v"), ("app", "--db-password=***", "-v")),
        (("app", "--token", "abc123", "-v"), ("app", "--token", "***", "-v")),
        (
            ("app", "--API_KEY=k", "--private-key", "x"),
            ("app", "--API_KEY=***", "--private-key", "***"),
        ),
        (
            ("bash", "-c", "AWS_SECRET_ACCESS_KEY=AKIAxyz aws s3 ls; export GH_TOKEN=ghp_1"),
            ("bash", "-c", "AWS_SECRET_ACCESS_KEY=*** aws s3 ls; export GH_TOKEN=***"),
        ),
        (
            ("git", "clone", "https://me:pa55@git.example/x"),
            ("git", "clone", "https://me:***@git.example/x"),
        ),
        (
            ("curl", "-H", "Authorization: Bearer eyJ.x.y", "-u", "me:pw", "https://x"),
            ("curl", "-H", "Authorization: Bearer ***", "-u", "me:***", "https://x"),
        ),
        (("sshpass", "-p", "pw", "ssh", "host"), ("sshpass", "-p", "***", "ssh", "host")),
        (("/usr/bin/mysqldump", "-pS"), ("/usr/bin/mysqldump", "-p***")),
    ],
)
def test_default_rules_mask_the_secret_and_keep_the_rest(
    argv: tuple[str, ...], want: tuple[str, ...]
) -> None:
    assert R.args(argv[0], argv) == (want, True)


@pytest.mark.parametrize(
    "argv",
    [
        ("ps", "-p", "123"),  # -p is a password only for the tools that say so
        ("grep", "-r", "password", "/etc"),  # the word, not a secret
        ("curl", "https://git.example/x"),  # a URL without credentials
        ("ls", "-l", "/tmp"),
        ("--password=x",),  # argv[0] is the program, not an argument
        ("app", "--password"),  # a flag with nothing after it
        (),
    ],
)
def test_near_misses_are_left_alone(argv: tuple[str, ...]) -> None:
    assert R.args(argv[0] if argv else "", argv) == (argv, False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=6))
def test_any_argv_keeps_its_length_and_masking_again_changes_nothing(argv: list[str]) -> None:
    out, changed = R.args(argv[0], tuple(argv))
    assert len(out) == len(argv) and out[0] == argv[0]
    assert changed == (out != tuple(argv))
    assert R.args(out[0], out)[0] == out


# Rules that never match (no argument holds a NUL) make a Redactor that
# runs every rule on every argument: no screen.
_UNSCREENED = Redactor([*DEFAULT_RULES, RedactRule("never", arg="(?P<secret>\\x00)")])
# The screen's words, their letters in other cases and in the characters
# case-insensitive matching folds onto them (long s, Kelvin sign, dotted
# and dotless i), and what the rules look for around them.
_SECRETISH = st.lists(
    st.sampled_from(
        [
            *("pass", "word", "PASS", "pwd", "token", "key", "secret", "credential"),
            *("authorization", "api", "Bearer ", "://", "-", "--", "_", "=", ":", "@", " "),
            *("x", "S", "K", "I", "\u017f", "\u212a", "\u0130", "\u0131", "i\u0307"),
        ]
    ),
    max_size=12,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(_SECRETISH, min_size=2, max_size=4))
def test_the_screen_never_spares_an_argument_a_rule_would_mask(argv: list[str]) -> None:
    """The screen only skips work: with it, every argv is masked exactly as
    by every rule run on every argument."""
    argv[0] = "app"
    assert R.args("app", tuple(argv)) == _UNSCREENED.args("app", tuple(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ("app", "--pa\u017f\u017fword=hunter2"),  # long s
        ("app", "--api-\u212aey=k"),  # Kelvin sign
        ("app", "--TOKEN", "t"),
    ],
)
def test_secrets_spelled_with_folded_letters_are_masked(argv: tuple[str, ...]) -> None:
    out, changed = R.args("app", argv)
    assert changed and "***" in out[-1], out


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        ([RedactRule("x", arg="(?<=a)b(?P<secret>c)")], "is not an RE2 regex"),
        ([RedactRule("x", arg="--pw=(.+)")], "has no (?P<secret>...) group"),
        ([RedactRule("x")], "give it `arg` or `flag`"),
        ([RedactRule("x", arg="(?P<secret>a)", flag="b")], "give it `arg` or `flag`"),
        ([RedactRule("x", arg="(?P<secret>a)", value="(?P<secret>b)")], "`value` goes with"),
        ([RedactRule(f"r{i}", flag="x") for i in range(65)], "at most 64"),
    ],
)
def test_bad_rules_are_refused_naming_the_problem(rules: list[RedactRule], problem: str) -> None:
    with pytest.raises(RedactError, match=None) as exc:
        Redactor(rules)
    assert problem in str(exc.value)


def test_a_rules_file_replaces_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("redact:\n  - {name: pin, arg: '^--pin=(?P<secret>\\d+)$'}\n")
    r = Redactor(load_rules(f))
    assert r.args("app", ("app", "--pin=1234", "--password=x")) == (
        ("app", "--pin=***", "--password=x"),
        True,
    )
    f.write_text("redact: {name: x}\n")
    with pytest.raises(RedactError, match="one top-level `redact:` list"):
        load_rules(f)
    assert len(DEFAULT_RULES) >= 8


@pytest.mark.kernel
def test_no_output_sees_the_secret(tmp_path: Path) -> None:
    """Not the JSON lines, not the event log, not the process's children."""
    secret = "hunter2-" + new_marker()
    marker = new_marker("redact")
    log = tmp_path / "log"
    d = Daemon("--event-log-dir", str(log))
    try:
        subprocess.run(
            ["bash", "-c", "/bin/true child; exit 0", marker, f"--db-password={secret}"],
            check=True,
        )
        d.sync()
    finally:
        assert d.stop() == 0, "".join(d.stderr)
    ours = d.matching(lambda e: e["type"] == "process_exec" and marker in e["process"]["args"])
    assert ours and ours[0]["process"]["args"][-1] == "--db-password=***"
    assert "redacted" in ours[0]["process"]["flags"]
    child = d.matching(
        lambda e: e["type"] == "process_exec" and (e.get("parent") or {}).get("args", [""])[-1:]
        == ["--db-password=***"]
    )
    assert child, "the child's parent is the redacted process"
    everything = "".join(d.stderr) + str(d.events)
    problems = Problems(out=None)
    everything += b"".join(read_bytes(s, problems) for s in list_segments([log])).decode()
    assert secret not in everything and "--db-password=***" in everything


@pytest.mark.kernel
def test_no_redact_keeps_the_command_line() -> None:
    marker = new_marker("plain")
    d = Daemon("--no-redact")
    try:
        subprocess.run(["/bin/true", marker, "--password=visible"], check=True)
        ev = d.wait_for(lambda e: e["type"] == "process_exec" and marker in e["process"]["args"])
    finally:
        assert d.stop() == 0, "".join(d.stderr)
    assert ev["process"]["args"][-1] == "--password=visible"
    assert "redacted" not in ev["process"]["flags"]


def test_a_bad_rules_file_is_one_clear_line_at_start(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("redact:\n  - {name: x, arg: 'no-group'}\n")
    r = subprocess.run(
        tracer_cmd("run", "--redact-rules", str(f)), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "tracer: error: rule 'x': arg has no (?P<secret>...) group to mask"
    ]
