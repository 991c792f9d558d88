"""Where the control socket may go: the daemon is root, the path is the user's."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from tracer import control


def _echo(req: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "echo": req}


def test_serves_root_at_a_socket_of_mode_0600_in_a_directory_it_makes_0700(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run" / "ctl.sock"
    srv = control.ControlServer(path, _echo)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert control.request(path, {"op": "x"}) == {"ok": True, "echo": {"op": "x"}}
    finally:
        srv.close()
    assert not path.exists()


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    # As /tmp: `--control-socket /tmp/ctl.sock` once made /tmp 0700.
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    srv = control.ControlServer(shared / "ctl.sock", _echo)
    try:
        assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
        assert stat.S_IMODE((shared / "ctl.sock").stat().st_mode) == 0o600
    finally:
        srv.close()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


def test_a_file_at_the_path_is_never_removed(tmp_path: Path) -> None:
    precious = tmp_path / "shadow"
    precious.write_text("root:x:0:0\n")
    with pytest.raises(control.ControlError, match="exists and is not a socket"):
        control.ControlServer(precious, _echo)
    assert precious.read_text() == "root:x:0:0\n"


def test_a_live_socket_is_not_taken_over_and_a_stale_one_is(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    first = control.ControlServer(path, _echo)
    try:
        with pytest.raises(control.ControlError, match="another process listens"):
            control.ControlServer(path, _echo)
        assert control.request(path, {"op": "still"})["ok"]  # the first one still serves
    finally:
        first.close()
    # A socket left by a daemon that did not stop cleanly: nobody listens on it.
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()
    second = control.ControlServer(path, _echo)
    try:
        assert control.request(path, {"op": "new"})["echo"] == {"op": "new"}
    finally:
        second.close()
