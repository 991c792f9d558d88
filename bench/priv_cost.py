"""Run time of the privilege_change and file_attr programs (bpf_stats).

Starts `tracer run` with the default library, turns kernel.bpf_stats_enabled
on, and runs, one after the other: N fork+exec of /bin/true (exec's
programs, incl. the execve enter and the credential compare at exec), N
setresgid calls that change the gids (root toggling between two gids:
each one is a privilege_change event), N chmod that set S_ISUID (each a
file_attr event) and N chmod that do not (the exit program's quick way
out), N chown to root: by a bare name in a 1777 directory, by an
absolute name in one (tracepoint mode walks the name's directories in
the dentry cache), by an absolute name in a 755 directory (the walk, no
event), and N / 10 through a directory whose dentry 50,000 negative
dentries (names looked up and not found) come before; N getppid (the
quick way out of the raw sys_enter and sys_exit programs of 32-bit
calls, which every syscall runs) and, on x86, N setresgid calls through
the 32-bit entry (bench/int80_setid.c, each a change). Prints ns per run
of each of the daemon's programs that ran.

    .venv/bin/python bench/priv_cost.py [--n 20000] [--bpf-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIBRARY = REPO / "policy" / "library"

# @N: the count, @P: the chmod target, @W: the work directory (0700)
# holding drop/ (1777) and safe/ (755), each with a file f.
_CHOWN = "import os\nfor _ in range(@N):\n    os.chown({}, 0, -1)\n"
_WORK = {
    "exec": "import subprocess\nfor _ in range(@N):\n    subprocess.run(['/bin/true'])\n",
    "setresgid": "import os\nfor i in range(@N):\n    os.setresgid(i % 2, i % 2, i % 2)\n"
    "os.setresgid(0, 0, 0)\n",
    "chmod-setid": "import os\nfor _ in range(@N):\n    os.chmod(@P, 0o4755)\n",
    "chmod-plain": "import os\nfor _ in range(@N):\n    os.chmod(@P, 0o755)\n",
    "chown-bare": "import os\nos.chdir(@W + '/drop')\n" + _CHOWN.format("'f'"),
    "chown-abs": _CHOWN.format("@W + '/drop/f'"),
    "chown-abs-755": _CHOWN.format("@W + '/safe/f'"),
    # The lookups are made before bpf_stats is on: see _PREPARE.
    "chown-padded": _CHOWN.format("@W + '/drop/f'").replace("@N", "(@N // 10)"),
    "getppid": "import os\nfor _ in range(@N):\n    os.getppid()\n",
    "ia32-setresgid": "import subprocess\n"
    "subprocess.run([@W + '/int80_setid', '@N'], check=True)\n",
}
# Run before a workload's measurement: 50,000 negative dentries in @W,
# newer than drop's, so before it in @W's list of children.
_PREPARE = {
    "chown-padded": "import os\nfor i in range(50000):\n"
    "    try:\n        os.stat(@W + f'/missing-{i}')\n    except FileNotFoundError:\n"
    "        pass\n",
}
_ATTR = ("tr_attr_exit",)
# The 32-bit programs: tracepoint mode's exit (the one this host runs) and
# the credentials' enter; bpftool shows the kernel's first 15 characters.
_IA32 = ("tr_tp_ia32_enter", "tr_tp_ia32_exit")
_PROGRAMS = {
    "exec": ("tr_exec_btf", "tr_priv_exec_btf", "tr_execve_enter"),
    "setresgid": ("tr_cred_enter", "tr_cred_exit"),
    "chmod-setid": _ATTR,
    "chmod-plain": _ATTR,
    "chown-bare": _ATTR,
    "chown-abs": _ATTR,
    "chown-abs-755": _ATTR,
    "chown-padded": _ATTR,
    "getppid": _IA32,
    "ia32-setresgid": _IA32,
}


def _stats(pid: int) -> dict[str, tuple[int, int]]:
    ids = set()
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        for line in fd.read_text().splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    shown = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], check=True,
                                      capture_output=True).stdout)
    return {p["name"]: (p.get("run_cnt", 0), p.get("run_time_ns", 0))
            for p in shown if p["id"] in ids}


def _fill(script: str, n: int, target: Path, work: Path) -> str:
    return script.replace("@N", str(n)).replace("@P", repr(str(target))).replace(
        "@W", repr(str(work)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--bpf-dir", type=Path, default=REPO / "build" / "bpf",
                    help="the directory of tracer.bpf.o (another checkout's, to compare)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="priv-cost-"))
    work_kinds = dict(_WORK)
    cc = shutil.which("cc") or shutil.which("gcc")
    if platform.machine() == "x86_64" and cc:
        subprocess.run([cc, "-O2", "-o", str(work / "int80_setid"),
                        str(REPO / "bench" / "int80_setid.c")], check=True)
    else:
        del work_kinds["ia32-setresgid"]
    target = work / "payload"
    target.write_text("x")
    for name, mode in (("drop", 0o1777), ("safe", 0o755)):
        (work / name).mkdir()
        (work / name).chmod(mode)
        (work / name / "f").write_text("x")
    out = work / "events.jsonl"
    d = subprocess.Popen(
        [sys.executable, "-m", "tracer", "--bpf-dir", str(args.bpf_dir), "run",
         "--no-event-log", "--policy", str(LIBRARY), "--export-file", str(out),
         "--control-socket", str(work / "ctl.sock"), "--grpc-socket", str(work / "g.sock")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert d.stderr is not None
    for line in d.stderr:
        if "event='ready'" in line:
            break
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = knob.read_text().strip()
    try:
        print(f"priv_cost: {args.n:,} calls per workload, kernel {os.uname().release}")
        for name, script in work_kinds.items():
            if name in _PREPARE:
                subprocess.run([sys.executable, "-c", _fill(_PREPARE[name], args.n, target, work)],
                               check=True)
            knob.write_text("0")
            before = _stats(d.pid)  # stats restart from what they were: take the difference
            knob.write_text("1")
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-c", _fill(script, args.n, target, work)], check=True)
            wall = time.monotonic() - t0
            knob.write_text("0")
            after = _stats(d.pid)
            parts = []
            for prog in _PROGRAMS[name]:
                # bpftool shows the whole name, or the kernel's first 15 characters
                key = prog if prog in after else prog[:15]
                n = after.get(key, (0, 0))[0] - before.get(key, (0, 0))[0]
                ns = after.get(key, (0, 0))[1] - before.get(key, (0, 0))[1]
                parts.append(f"{prog} {n:,} runs {ns / n:.0f} ns" if n else f"{prog} 0 runs")
            print(f"  {name:<12} {wall:6.2f} s   " + "; ".join(parts))
    finally:
        knob.write_text(old)
        d.send_signal(signal.SIGTERM)
        d.wait(30)
    lines = out.read_bytes().count(b"\n") if out.exists() else 0
    print(f"  events written: {lines:,}")


if __name__ == "__main__":
    main()
