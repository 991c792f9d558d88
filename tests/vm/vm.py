#!/usr/bin/env python3
"""Run the test suite inside qemu guests booted from Debian's kernels.

Our machines' kernel cannot load kprobe, fentry or LSM programs; Debian's
generic 6.12 and 6.1 kernels can. virtme-ng boots them under qemu with
the host's root file system shared read-only, so the guest runs this very
checkout, its virtualenv and its built objects.

    vm.py setup            install qemu, busybox and the kernels; prepare modules
    vm.py run [-k 6.12] [--modes lsm,kprobe] [-- PYTEST ARGS]
                           boot each kernel and run pytest inside it (default:
                           the VM suite, file/connect tests under every mode);
                           after `--`, pytest's own -k is not taken for ours

Software emulation only: KVM fails in the kernel's decompressor here.
The guests run one after the other: two at once on our two CPUs made
neither print a line in 30 minutes (each alone runs the suite in 30 to
40). Each line of a guest's output is tagged with its kernel. A guest
that does not finish in --timeout seconds is killed and counted as a
failure, never as a pass.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "build" / "vm"
CACHE = Path("/var/cache/tracer-vm")
# The file/connect tests run once per variant in every guest.
CAPTURE_MODES = ("lsm", "fentry", "kprobe", "tracepoint")
# What runs in each guest: what differs between kernels and variants. The
# probe and loader fallback; the file/connect/policy suite once per capture
# mode (tests/capture.py); the exec/fork/exit suite (tp_btf and raw_tp,
# the same programs under every capture mode). Suites that only exercise
# user space (gRPC, export, parsing, rendering) run on the host alone: an
# emulated guest runs Python ~30 times slower.
VM_SUITE = (
    "tests/test_probe_vm.py",
    "tests/test_policy_events.py",
    "tests/test_policy_selectors.py",
    "tests/test_evasion_net.py",
    "tests/test_process_events.py",
    "tests/test_evasion.py",
    "tests/test_evasion_exec.py",
    # Credentials (their layout differs between kernels) and chown's
    # directory hook per mode. Throttles and workload rules stay on the
    # host: their decision is the same global function in every mode
    # (tr_policy_decide), reached through the file_open hooks that
    # test_policy_events runs per mode, and their storms cost ~6 minutes
    # a guest, which the hour each guest has cannot spare.
    "tests/test_priv_events.py",
    "tests/test_priv_policy.py::test_rules_select_in_the_kernel_and_the_dry_run_agrees",
)
LSM_CMDLINE = "lsm=lockdown,capability,landlock,yama,bpf lockdown=integrity"
HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "xz-utils", "kmod")
# Kernel series -> package name pattern (the generic flavour: -cloud- has no 9p).
SERIES = {
    "6.12": re.compile(r"^linux-image-(6\.12\.\d+\+deb12-amd64)$"),
    "6.1": re.compile(r"^linux-image-(6\.1\.0-\d+-amd64)$"),
}
# What apt-cache is asked for: it takes POSIX regular expressions, where
# \d matches nothing, so it gets a plain prefix and SERIES picks the names.
_APT_SEARCH = {"6.12": r"^linux-image-6\.12\.", "6.1": r"^linux-image-6\.1\.0-"}
# An emulated guest runs Python ~30 times slower: the per-test timeout too.
_GUEST_TEST_TIMEOUT_S = 1200
# What vng's initramfs loads to mount the host's root; its busybox insmod
# cannot read .ko.xz, so these few are decompressed.
BOOT_MODULES = (
    "fs/netfs/netfs",
    "net/9p/9pnet",
    "fs/9p/9p",
    "net/9p/9pnet_virtio",
    "drivers/virtio/virtio_mmio",
)


_APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")


class VmError(RuntimeError):
    pass


def _apt(*args: str) -> str:
    return subprocess.run(["apt-cache", *args], check=True, capture_output=True, text=True).stdout


def _installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return r.returncode == 0 and "install ok installed" in r.stdout


def _release_key(release: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", release)]


def kernel_release(series: str) -> str:
    """The newest installed release of a series, else the newest in apt."""
    pattern = SERIES[series]
    installed = [
        m.group(1)
        for d in Path("/lib/modules").glob("*")
        if (m := pattern.match(f"linux-image-{d.name}"))
        and (Path("/boot") / f"vmlinuz-{d.name}").exists()
    ]
    if installed:
        return max(installed, key=_release_key)
    found = _in_apt(series)
    if not found and os.geteuid() == 0:
        # A fresh host's lists may predate the kernel (or be empty).
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=_APT_ENV)
        found = _in_apt(series)
    if not found:
        raise VmError(
            f"no Debian kernel package for {series} in apt (looked for {pattern.pattern} "
            "after apt-get update)"
        )
    return max(found, key=_release_key)


def _in_apt(series: str) -> list[str]:
    names = _apt("search", "--names-only", _APT_SEARCH[series]).split("\n")
    return [m.group(1) for line in names if (m := SERIES[series].match(line.split(" ")[0]))]


def setup(series: list[str]) -> None:
    if os.geteuid() != 0:
        raise VmError("vm setup installs packages: run it as root")
    releases = {s: kernel_release(s) for s in series}
    missing = [p for p in HOST_PACKAGES if not _installed(p)]
    missing += [f"linux-image-{r}" for r in releases.values() if not _installed(f"linux-image-{r}")]
    if missing:
        print(f"vm: installing {' '.join(missing)}", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=_APT_ENV)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env=_APT_ENV,
            stdout=subprocess.DEVNULL,
        )
    for release in releases.values():
        _prepare_modules(release)


def _prepare_modules(release: str) -> None:
    base = Path("/lib/modules") / release / "kernel"
    stamp = CACHE / f"{release}.modules-ready"
    if stamp.exists():
        return
    changed = False
    for mod in BOOT_MODULES:
        xz = base / f"{mod}.ko.xz"
        if xz.exists() and not (base / f"{mod}.ko").exists():
            subprocess.run(["xz", "-d", "-k", str(xz)], check=True)
            changed = True
    if changed:
        subprocess.run(["depmod", release], check=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    stamp.touch()


def _vng() -> str:
    venv_bin = Path(sys.executable).parent
    vng = venv_bin / "vng"
    if not vng.exists():
        raise VmError(f"{vng} missing: install virtme-ng into the virtualenv (make vm-deps)")
    return str(vng)


# A guest whose qemu exits before the suite wrote its exit status: the
# 6.12 guest did so in 6 of 6 runs while the daemon detached its links
# from a thread each (README, "Supported kernels"). The cause is not
# found, so such a guest is booted once more, and the summary says so; a
# second one fails the run.
VANISHED = "guest ended before pytest finished"


@dataclass
class Result:
    release: str
    rc: int
    seconds: float
    note: str


def run_guest(
    release: str, pytest_args: list[str], timeout: int, modes: tuple[str, ...] = CAPTURE_MODES
) -> Result:
    """Boot one kernel, run pytest in it, relay its output tagged with the release."""
    kernel = Path("/boot") / f"vmlinuz-{release}"
    if not kernel.exists():
        raise VmError(f"{kernel} missing: run `make vm-deps` (tests/vm/vm.py setup)")
    if shutil.which("qemu-system-x86_64") is None:
        raise VmError("qemu-system-x86_64 missing: apt-get install qemu-system-x86 (make vm-deps)")
    OUT.mkdir(parents=True, exist_ok=True)
    rc_file = OUT / f"rc-{release}"
    rc_file.unlink(missing_ok=True)
    # The guest's kernel log, followed onto the shared directory: without
    # --verbose virtme-ng sends the console to /dev/null, and a guest that
    # vanishes leaves here what its kernel said up to the end (a panic's
    # own lines may not reach the file).
    klog = OUT / f"dmesg-{release}.log"
    klog.unlink(missing_ok=True)
    qlog = OUT / f"qemu-{release}.log"
    qlog.unlink(missing_ok=True)
    inner = " ".join(
        [
            "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf;",
            f"(dmesg -w > {klog} 2>&1 &);",
            f"cd {REPO} &&",
            "PYTHONDONTWRITEBYTECODE=1 TRACER_IN_VM=1",
            f"TRACER_CAPTURE_MODES={','.join(modes)}",
            f"{REPO / '.venv' / 'bin' / 'pytest'} -p no:cacheprovider -q",
            f"--timeout={_GUEST_TEST_TIMEOUT_S}",
            *map(shlex.quote, pytest_args),  # one shell word each: `-k "a or b"`
            f"; echo $? > {rc_file}",
        ]
    )
    cmd = [
        _vng(),
        "--disable-kvm",
        "--run",
        str(kernel),
        "--memory",
        "2G",
        "--cpus",
        "2",
        "--append",
        LSM_CMDLINE,
        "--rwdir",
        str(OUT),
        # qemu's own account of why the guest ended: a shutdown request
        # with reason 6 is the guest powering off (virtme-ng does when
        # its script ends), 4 a signal to qemu. None at all is a guest
        # reset (a panic with panic=-1, a triple fault, a watchdog), which
        # under -no-reboot ends qemu without a request, or qemu crashing.
        f"--qemu-opts=-d trace:qemu_system_shutdown_request,trace:runstate_set -D {qlog}",
        "--",
        inner,
    ]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    tag = _tag(release)
    _say(tag + f"booting (software emulation, timeout {timeout}s)\n".encode())
    t0 = time.monotonic()
    # Pipes, not files: qemu reopens its stdout/stderr with O_TRUNC.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    relay = threading.Thread(target=_relay, args=(proc.stdout, tag), daemon=True)
    relay.start()
    try:
        # The deadline holds also for a guest that prints nothing.
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        relay.join(5)
        return Result(release, 124, time.monotonic() - t0, f"guest killed after {timeout}s")
    relay.join(5)
    seconds = time.monotonic() - t0
    if not rc_file.exists():
        _say_tail(klog, tag)
        _say(tag + f"vng exit status {proc.returncode}; qemu: ".encode())
        _say(_read(qlog).strip().replace(b"\n", b"; ") + b"\n")
        return Result(release, proc.returncode or 1, seconds, VANISHED)
    rc = int(rc_file.read_text().strip() or 1)
    return Result(release, rc, seconds, "passed" if rc == 0 else f"pytest exit {rc}")


def _run_guest_twice_if_vanished(
    release: str, pytest_args: list[str], timeout: int, modes: tuple[str, ...]
) -> Result:
    first = run_guest(release, pytest_args, timeout, modes)
    if first.note != VANISHED:
        return first
    again_line = f"the guest vanished after {first.seconds:.0f}s: booting it again\n"
    _say(_tag(release) + again_line.encode())
    again = run_guest(release, pytest_args, timeout, modes)
    return Result(
        release,
        again.rc,
        first.seconds + again.seconds,
        f"{again.note} (2nd boot; 1st vanished at {first.seconds:.0f}s)",
    )


def _tag(release: str) -> bytes:
    """What each line of a guest's output starts with."""
    return f"[{release}] ".encode()


def _say(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def _read(log: Path) -> bytes:
    try:
        return log.read_bytes()
    except OSError as exc:
        return f"({exc})".encode()


def _say_tail(log: Path, tag: bytes, lines: int = 80) -> None:
    """The kernel's messages since the suite started (the boot's are noise)."""
    text = _read(log)
    _, marker, after = text.rpartition(b"virtme-ng-init: starting script")
    since = after.splitlines()[1:] if marker else text.splitlines()
    _say(tag + f"the guest's kernel messages after the suite started: {len(since)}\n".encode())
    for line in since[-lines:]:
        _say(tag + b"  " + line + b"\n")


def _relay(stream: IO[bytes], tag: bytes) -> None:
    for line in stream:
        _say(tag + line if line.endswith(b"\n") else tag + line + b"\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("-k", "--kernel", action="append", choices=sorted(SERIES), dest="series")
    r = sub.add_parser("run")
    r.add_argument("-k", "--kernel", action="append", choices=sorted(SERIES), dest="series")
    r.add_argument("--timeout", type=int, default=3600, help="seconds per guest")
    r.add_argument(
        "--modes",
        default=",".join(CAPTURE_MODES),
        help="capture modes the file/connect tests run under (comma-separated)",
    )
    r.add_argument("pytest_args", nargs="*", default=list(VM_SUITE))
    args = p.parse_args()
    series = args.series or list(SERIES)
    try:
        if args.cmd == "setup":
            setup(series)
            return 0
        modes = tuple(args.modes.split(","))
        results = [
            _run_guest_twice_if_vanished(kernel_release(s), args.pytest_args, args.timeout, modes)
            for s in series
        ]
    except (VmError, subprocess.CalledProcessError) as exc:
        print(f"vm: error: {exc}", file=sys.stderr)
        return 1
    print("\nvm: summary")
    for res in results:
        print(f"  {res.release:<24} {res.note:<40} {res.seconds:6.0f}s")
    return 0 if all(res.rc == 0 for res in results) else 1


if __name__ == "__main__":
    sys.exit(main())
