"""Reading a log someone else may have written: any bytes give warnings, never a traceback,
and nothing a terminal obeys reaches one raw (`tracer tree -o json` included)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import zstandard
from conftest import tracer_cmd
from factories import BASH, exec_ev, mkproc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.config import EventLogConfig
from export.eventlog import EventLog
from export.jsonl import Serializer
from forensics.index import scan
from forensics.log import Problems, Segment, events

# Characters a terminal acts on that JSON leaves raw: CSI (C1), a bidi
# override, DEL, a line separator.
_HOSTILE = "\x9b31m\u202e\x7f\u2028"


def test_tree_json_escapes_what_a_terminal_would_obey(tmp_path: Path) -> None:
    p = mkproc(200, BASH, binary="/bin/ls", args=("ls", f"-{_HOSTILE}x"), cwd=f"/tmp/{_HOSTILE}")
    log = tmp_path / "ev"
    sink = EventLog(EventLogConfig(directory=log))
    sink.offer(exec_ev(p))
    sink.close()
    r = subprocess.run(
        tracer_cmd("tree", "--from", str(log), "--pid", "200", "-o", "json"),
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    for ch in "\x9b\u202e\x7f\u2028":
        assert ch not in out, f"U+{ord(ch):04X} written raw"
    tree = json.loads(out)  # the same JSON values, escaped
    (root,) = tree["roots"]

    def find(node: dict[str, object]) -> dict[str, object]:
        if node["process"]["pid"] == 200:  # type: ignore[index]
            return node
        for child in node["children"]:  # type: ignore[attr-defined]
            hit = find(child)
            if hit:
                return hit
        return {}

    proc = find(root)["process"]
    assert proc["args"] == ["ls", f"-{_HOSTILE}x"]  # type: ignore[index]
    assert proc["cwd"] == f"/tmp/{_HOSTILE}"  # type: ignore[index]


# -- any bytes in a segment: Problems, never an exception ----------------------

_LINE = Serializer().line(exec_ev())
_LINES = st.one_of(
    st.binary(max_size=200),
    st.just(_LINE),
    st.builds(lambda n: _LINE[:n], st.integers(0, len(_LINE))),  # torn
    st.builds(
        lambda old, new: _LINE.replace(old, new, 1),
        st.sampled_from([b'"pid":200', b'"time":"', b'"args":[', b'"process":{', b'"type":']),
        st.sampled_from([b'"pid":"x"', b'"time":7', b'"args":{', b'"process":[', b'"type":null']),
    ),
    st.text(max_size=80).map(str.encode),
)


def _read_all(seg: Segment) -> Problems:
    problems = Problems(out=None)
    for _t, ev in events(seg, problems):
        assert isinstance(ev, dict)
    scan(seg, Problems(out=None))  # the index builder reads the same lines
    return problems


@settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINES, max_size=8), st.sampled_from([b"\n", b"\r\n", b""]))
def test_any_lines_in_a_plain_segment_give_problems_not_exceptions(
    lines: list[bytes], sep: bytes
) -> None:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "events-00000001.jsonl"
        f.write_bytes(sep.join(lines))
        _read_all(Segment(f, 1))


@settings(max_examples=100, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(_LINES, max_size=4), min_size=1, max_size=3),
    st.integers(0, 600),
    st.binary(max_size=16),
)
def test_any_damage_to_a_compressed_segment_gives_problems_not_exceptions(
    frames: list[list[bytes]], at: int, junk: bytes
) -> None:
    z = zstandard.ZstdCompressor(write_checksum=True)
    data = b"".join(z.compress(b"\n".join(lines) + b"\n") for lines in frames)
    damaged = data[:at] + junk + data[at + len(junk) :]
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "events-00000001.jsonl.zst"
        f.write_bytes(damaged)
        _read_all(Segment(f, 1))


def test_the_factories_line_reads_back() -> None:
    # The strategies above start from this line: it must be one the reader takes.
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "events-00000001.jsonl"
        f.write_bytes(_LINE)
        problems = Problems(out=None)
        got = [ev for _, ev in events(Segment(f, 1), problems)]
    assert problems.count == 0
    assert [ev["process"]["pid"] for ev in got] == [200]
