"""The Python decoder and the C header agree on every field offset.

The header is compiled with clang and the offsets read back from the BTF
it emits, so the check is against what the BPF programs really use.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from policy import kernel
from tracer.core import decode

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "bpf"


@pytest.fixture(scope="module")
def btf_structs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    tmp = tmp_path_factory.mktemp("btf")
    src = tmp / "wire.c"
    src.write_text(
        '#include "vmlinux.h"\n#include "tracer.h"\n'
        "struct tr_exec a; struct tr_fork b; struct tr_exit c;\n"
        "struct tr_file_open d; struct tr_connect e; struct tr_kind_cfg f;\n"
        "struct tr_rule g; struct tr_str_key h; struct tr_lpm_str_key i;\n"
        "struct tr_lpm_addr_key j; struct tr_uid_key k; struct tr_hits l;\n"
        "struct tr_cgroup m;\n"
    )
    obj = tmp / "wire.o"
    subprocess.run(
        [
            "clang",
            "-g",
            "-O2",
            "-target",
            "bpf",
            f"-I{BUILD}",
            f"-I{REPO / 'bpf_probes'}",
            "-c",
            str(src),
            "-o",
            str(obj),
        ],
        check=True,
    )
    out = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", str(obj)], check=True, capture_output=True
    ).stdout
    types = json.loads(out)["types"]
    return {t["name"]: t for t in types if t.get("kind") == "STRUCT" and t.get("name")}


def _offsets(fields: tuple[tuple[str, str], ...], base: int = 0) -> dict[str, int]:
    out, fmt = {}, "<"
    for name, f in fields:
        out[name] = base + struct.calcsize(fmt)
        fmt += f
    return out


def _btf_offsets(t: dict[str, object]) -> dict[str, int]:
    members = t["members"]
    assert isinstance(members, list)
    return {m["name"]: m["bits_offset"] // 8 for m in members}


def test_header_and_task(btf_structs: dict[str, dict[str, object]]) -> None:
    assert _btf_offsets(btf_structs["tr_hdr"]) == _offsets(decode.HDR_FIELDS)
    assert btf_structs["tr_hdr"]["size"] == decode.HDR.size
    assert _btf_offsets(btf_structs["tr_task"]) == _offsets(decode.TASK_FIELDS)
    assert btf_structs["tr_task"]["size"] == decode.TASK.size


def test_exec_record(btf_structs: dict[str, dict[str, object]]) -> None:
    got = _btf_offsets(btf_structs["tr_exec"])
    want = {
        "hdr": 0,
        "task": decode.TASK_OFFSET,
        "verdict": decode.VERDICT_OFFSET,
        **_offsets(decode.EXEC_TAIL_FIELDS, decode.EXEC_TAIL_OFFSET),
    }
    want["data"] = decode.EXEC_DATA_OFFSET
    assert got == want


def test_verdict(btf_structs: dict[str, dict[str, object]]) -> None:
    assert _btf_offsets(btf_structs["tr_verdict"]) == _offsets(decode.VERDICT_FIELDS)
    assert btf_structs["tr_verdict"]["size"] == decode.VERDICT.size


def test_file_open_record(btf_structs: dict[str, dict[str, object]]) -> None:
    got = _btf_offsets(btf_structs["tr_file_open"])
    want = {
        "hdr": 0,
        "task": decode.TASK_OFFSET,
        "verdict": decode.VERDICT_OFFSET,
        **_offsets(decode.FILE_TAIL_FIELDS, decode.FILE_TAIL_OFFSET),
        "path": decode.FILE_PATH_OFFSET,
    }
    assert got == want


def test_connect_record(btf_structs: dict[str, dict[str, object]]) -> None:
    got = _btf_offsets(btf_structs["tr_connect"])
    want = {
        "hdr": 0,
        "task": decode.TASK_OFFSET,
        "verdict": decode.VERDICT_OFFSET,
        **_offsets(decode.CONNECT_TAIL_FIELDS, decode.CONNECT_TAIL_OFFSET),
    }
    assert got == want
    # The C struct is padded to 8 bytes; the decoder needs the fields only.
    assert btf_structs["tr_connect"]["size"] == (decode.CONNECT_SIZE + 7) // 8 * 8


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("tr_kind_cfg", kernel._CFG),
        ("tr_rule", kernel._RULE),
        ("tr_str_key", kernel._STR_KEY),
        ("tr_lpm_str_key", kernel._LPM_STR_KEY),
        ("tr_lpm_addr_key", kernel._ADDR_KEY),
        ("tr_uid_key", kernel._UID_KEY),
        ("tr_hits", kernel._HITS),
    ],
)
def test_policy_map_layouts(
    btf_structs: dict[str, dict[str, object]], name: str, fmt: struct.Struct
) -> None:
    """The policy writer packs keys and values exactly as the maps declare them."""
    assert btf_structs[name]["size"] == fmt.size


def test_fork_and_exit_records(btf_structs: dict[str, dict[str, object]]) -> None:
    assert btf_structs["tr_fork"]["size"] == decode.FORK_SIZE
    got = _btf_offsets(btf_structs["tr_exit"])
    want = {
        "hdr": 0,
        "task": decode.TASK_OFFSET,
        **_offsets(decode.EXIT_TAIL_FIELDS, decode.FORK_SIZE),
    }
    assert got == want
    assert btf_structs["tr_exit"]["size"] == decode.EXIT_SIZE


def test_cgroup_record(btf_structs: dict[str, dict[str, object]]) -> None:
    got = _btf_offsets(btf_structs["tr_cgroup"])
    want = {"hdr": 0, **_offsets(decode.CGROUP_FIELDS, decode.CGROUP_OFFSET)}
    want["path"] = decode.CGROUP_PATH_OFFSET
    assert got == want
