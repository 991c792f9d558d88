"""The layers hold at run time: libraries never load the composition root, and the
read-side commands never load the daemon or the gRPC server (tracer/cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_LOADED = "import sys, json; print(json.dumps(sorted(sys.modules)))"


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\n{_LOADED}"], check=True, capture_output=True, text=True
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_importing_the_libraries_never_loads_the_composition_root() -> None:
    loaded = _modules_after("import enrich, export, forensics, policy")
    root = {m for m in loaded if m.startswith("tracer.") and not m.startswith("tracer.core")}
    assert root == set()


@pytest.mark.parametrize("command", ["tree", "events", "replay"])
def test_read_side_help_never_loads_the_daemon_or_grpc(command: str) -> None:
    loaded = _modules_after(
        "from tracer.cli import main\n"
        "try:\n"
        f"    main([{command!r}, '--help'])\n"
        "except SystemExit:\n"
        "    pass"
    )
    heavy = {"grpc", "export.grpc_server", "export.hub", "tracer.daemon", "enrich", "policy"}
    assert heavy & loaded == set()
