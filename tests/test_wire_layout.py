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

from policy import compile, kernel, workload_map
from policy.model import Action, Kind
from tracer.core import decode, loader

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "bpf"


@pytest.fixture(scope="module")
def btf_structs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    tmp = tmp_path_factory.mktemp("btf")
    src = tmp / "wire.c"
    src.write_text(
        '#include "vmlinux.h"\n#include "tracer.h"\n'
        "struct tr_exec a; struct tr_fork b; struct tr_exit c;\n"
        "struct tr_file_open d; struct tr_connect e; struct tr_kind_cfg f; struct tr_glob n;\n"
        "struct tr_rule g; struct tr_str_key h; struct tr_lpm_str_key i;\n"
        "struct tr_lpm_addr_key j; struct tr_uid_key k; struct tr_hits l;\n"
        "struct tr_cgroup m; struct tr_summary o; struct tr_throttle_rule p;\n"
        "struct tr_flush_args q; struct tr_workload r;\n"
        "struct tr_priv s; struct tr_file_attr t;\n"
        # Macros reach BTF as the values of an enum.
        "enum tr_macros { M_F_WORKLOAD = TR_F_WORKLOAD,\n"
        "  M_WORKLOAD_CGROUPS = TR_WORKLOAD_CGROUPS };\n"
        "enum tr_macros e_macros;\n"
        # Enums reach BTF only through a typed variable.
        + "".join(f"enum {e} e_{e};\n" for e in _ENUMS)
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
    return {t["name"]: t for t in types if t.get("kind") in ("STRUCT", "ENUM") and t.get("name")}


_ENUMS = (
    "tr_kind",
    "tr_exec_flags",
    "tr_task_flags",
    "tr_stat",
    "tr_pkind",
    "tr_field",
    "tr_action",
    "tr_hook",
    "tr_file_flags",
    "tr_cgroup_op",
    "tr_file_op",
    "tr_conn_via",
    "tr_conn_flags",
    "tr_throttle_flags",
    "tr_throttle_stat",
    "tr_priv_op",
    "tr_priv_flags",
    "tr_attr_op",
    "tr_attr_call",
    "tr_attr_flags",
)


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
        ("tr_glob", kernel._GLOB),
        ("tr_rule", kernel._RULE),
        ("tr_str_key", kernel._STR_KEY),
        ("tr_lpm_str_key", kernel._LPM_STR_KEY),
        ("tr_lpm_addr_key", kernel._ADDR_KEY),
        ("tr_uid_key", kernel._UID_KEY),
        ("tr_hits", kernel._HITS),
        ("tr_workload", workload_map.VALUE),
    ],
)
def test_policy_map_layouts(
    btf_structs: dict[str, dict[str, object]], name: str, fmt: struct.Struct
) -> None:
    """The policy writer packs keys and values exactly as the maps declare them."""
    assert btf_structs[name]["size"] == fmt.size


def test_workload_constants(btf_structs: dict[str, dict[str, object]]) -> None:
    """The workload field's bit and the map's default size, as the C header says."""
    assert _enum(btf_structs, "tr_macros") == {
        "M_F_WORKLOAD": compile.F_WORKLOAD,
        "M_WORKLOAD_CGROUPS": loader.WORKLOAD_CGROUPS_DEFAULT,
    }


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


def test_summary_record(btf_structs: dict[str, dict[str, object]]) -> None:
    got = _btf_offsets(btf_structs["tr_summary"])
    want = {
        "hdr": 0,
        "task": decode.TASK_OFFSET,
        "verdict": decode.VERDICT_OFFSET,
        **_offsets(decode.SUMMARY_TAIL_FIELDS, decode.SUMMARY_TAIL_OFFSET),
    }
    assert got == want
    assert btf_structs["tr_summary"]["size"] == decode.SUMMARY_SIZE


def test_throttle_layouts_and_numbers(btf_structs: dict[str, dict[str, object]]) -> None:
    """What the policy writer and the daemon pack for throttle.bpf.h."""
    assert btf_structs["tr_throttle_rule"]["size"] == kernel._THROTTLE.size
    assert btf_structs["tr_flush_args"]["size"] == loader._FLUSH_ARGS.size
    assert _enum(btf_structs, "tr_throttle_flags") == {
        "TR_THR_BY_CGROUP": decode.THROTTLE_BY_CGROUP,
        "TR_THR_AGGREGATE": decode.THROTTLE_AGGREGATE,
    }
    stats = _enum(btf_structs, "tr_throttle_stat")
    assert {k: v for k, v in stats.items() if k != "TR_THR_STATS"} == {
        f"TR_THR_{name.upper()}": i for i, name in enumerate(loader.THROTTLE_STATS)
    }
    assert loader.RULE_SLOTS == 2 * kernel.KINDS * compile.MAX_RULES


def test_privilege_change_record(btf_structs: dict[str, dict[str, object]]) -> None:
    got = _btf_offsets(btf_structs["tr_priv"])
    want = {
        "hdr": 0,
        "task": decode.TASK_OFFSET,
        "verdict": decode.VERDICT_OFFSET,
        **_offsets(decode.PRIV_TAIL_FIELDS, decode.PRIV_TAIL_OFFSET),
        "old": decode.PRIV_OLD_OFFSET,
        "new": decode.PRIV_NEW_OFFSET,
    }
    assert got == want
    assert btf_structs["tr_priv"]["size"] == decode.PRIV_SIZE
    assert _btf_offsets(btf_structs["tr_cred"]) == _offsets(decode.CRED_FIELDS)
    assert btf_structs["tr_cred"]["size"] == decode.CRED.size


def test_file_attr_record(btf_structs: dict[str, dict[str, object]]) -> None:
    got = _btf_offsets(btf_structs["tr_file_attr"])
    want = {
        "hdr": 0,
        "task": decode.TASK_OFFSET,
        "verdict": decode.VERDICT_OFFSET,
        **_offsets(decode.ATTR_TAIL_FIELDS, decode.ATTR_TAIL_OFFSET),
        "path": decode.ATTR_PATH_OFFSET,
    }
    assert got == want


def _enum(btf: dict[str, dict[str, object]], name: str) -> dict[str, int]:
    values = btf[name]["values"]
    assert isinstance(values, list)
    return {v["name"]: v["val"] for v in values}


def test_record_kinds_flags_and_counters(btf_structs: dict[str, dict[str, object]]) -> None:
    """The numbers tracer.h gives its enums are the ones Python decodes with."""
    kinds = _enum(btf_structs, "tr_kind")
    assert {k: v for k, v in kinds.items() if k != "TR_KIND_MAX"} == {
        f"TR_KIND_{name.upper().removeprefix('PROCESS_')}": code
        for code, name in decode.KIND_NAMES.items()
    }
    assert kinds["TR_KIND_MAX"] > max(decode.KIND_NAMES)
    assert _enum(btf_structs, "tr_stat") == {
        "TR_STAT_EMITTED": decode.STAT_EMITTED,
        "TR_STAT_RB_DROPPED": decode.STAT_RB_DROPPED,
        "TR_STAT_EVALUATED": decode.STAT_EVALUATED,
        "TR_STAT_PREFILTERED": decode.STAT_PREFILTERED,
        "TR_STAT_LIMITED": decode.STAT_LIMITED,
        "TR_STAT_COUNT": decode.STAT_COUNT,
    }
    assert _enum(btf_structs, "tr_exec_flags") == {
        "TR_EXEC_TRUNC_ARGS": decode.EXEC_TRUNC_ARGS,
        "TR_EXEC_TRUNC_PATH": decode.EXEC_TRUNC_PATH,
        "TR_EXEC_TRUNC_CWD": decode.EXEC_TRUNC_CWD,
        "TR_EXEC_NO_MM": decode.EXEC_NO_MM,
        "TR_EXEC_MEMFD": decode.EXEC_MEMFD,
        "TR_EXEC_DELETED": decode.EXEC_DELETED,
    }
    assert _enum(btf_structs, "tr_task_flags") == {"TR_TASK_EXE_DELETED": decode.TASK_EXE_DELETED}
    assert _enum(btf_structs, "tr_file_flags") == {
        "TR_FILE_TRUNC_PATH": decode.FILE_TRUNC_PATH,
        "TR_FILE_UNRESOLVED": decode.FILE_UNRESOLVED,
        "TR_FILE_USER_MEMORY": decode.FILE_USER_MEMORY,
    }
    assert _enum(btf_structs, "tr_file_op") == {
        f"TR_FILE_OP_{name.upper()}": code for code, name in decode.FILE_OPS.items()
    }
    assert _enum(btf_structs, "tr_conn_via") == {
        f"TR_VIA_{name.upper()}": code for code, name in decode.CONN_VIAS.items()
    }
    assert _enum(btf_structs, "tr_conn_flags") == {"TR_CONN_USER_MEMORY": decode.CONN_USER_MEMORY}
    assert _enum(btf_structs, "tr_priv_op") == {
        f"TR_PRIV_{name.upper()}": code for code, name in decode.PRIV_OPS.items()
    }
    assert _enum(btf_structs, "tr_priv_flags") == {
        "TR_PRIV_TO_ROOT": decode.PRIV_TO_ROOT,
    }
    assert _enum(btf_structs, "tr_attr_op") == {
        f"TR_ATTR_{name.upper()}": code for code, name in decode.ATTR_OPS.items()
    }
    assert _enum(btf_structs, "tr_attr_call") == {
        f"TR_CALL_{name.upper()}": code for code, name in decode.ATTR_CALLS.items()
    }
    assert _enum(btf_structs, "tr_attr_flags") == {
        "TR_ATTR_TRUNC_PATH": decode.ATTR_TRUNC_PATH,
        "TR_ATTR_UNRESOLVED": decode.ATTR_UNRESOLVED,
        "TR_ATTR_WORLD_WRITABLE_DIR": decode.ATTR_WORLD_WRITABLE_DIR,
    }
    assert _enum(btf_structs, "tr_cgroup_op") == {
        "TR_CGROUP_MKDIR": decode.CGROUP_MKDIR,
        "TR_CGROUP_RMDIR": decode.CGROUP_RMDIR,
    }
    # Every hook the programs can name has a name in the decoder; the bits
    # or'ed into a hook (how the call was made) are decoded apart, and no
    # base id reaches them.
    hooks = _enum(btf_structs, "tr_hook")
    via = {hooks[f"TR_HOOK_{name.upper()}"]: name for name in decode.HOOK_VIA.values()}
    assert via == decode.HOOK_VIA
    base = sorted(v for v in hooks.values() if v not in via)
    assert base == sorted(decode.HOOK_NAMES)
    assert max(base) < min(via)


def test_policy_enums(btf_structs: dict[str, dict[str, object]]) -> None:
    actions = _enum(btf_structs, "tr_action")
    assert actions == {
        f"TR_ACT_{(name or 'none').upper()}": code for code, name in decode.ACTION_NAMES.items()
    }
    assert {a.label: a.code for a in Action} == {
        name: code for code, name in decode.ACTION_NAMES.items() if name
    }
    pkinds = _enum(btf_structs, "tr_pkind")
    assert {f"TR_PK_{k.name.removesuffix('_OPEN')}": k.index for k in Kind} == {
        k: v for k, v in pkinds.items() if k != "TR_PK_MAX"
    }
    assert pkinds["TR_PK_MAX"] == kernel.KINDS
    fields = _enum(btf_structs, "tr_field")
    assert fields == {
        "TR_F_BINARY": compile.F_BINARY,
        "TR_F_PATH": compile.F_PATH,
        "TR_F_PARENT_BINARY": compile.F_PARENT_BINARY,
        "TR_F_ANCESTOR_BINARY": compile.F_ANCESTOR_BINARY,
        "TR_F_DADDR": compile.F_DADDR,
        "TR_F_DPORT": compile.F_DPORT,
        "TR_F_UID": compile.F_UID,
        "TR_F_EUID": compile.F_EUID,
        "TR_F_MAX": compile.F_MAX,
    }
