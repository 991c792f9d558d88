"""What this kernel lets us load and attach, found by trying.

A program type the kernel knows can still fail here to load (fentry and
LSM when ftrace hooks are locked down) or to attach (kprobes without
CONFIG_KPROBES), so each type is proven by loading and attaching one
empty program of bpf_probes/probe.bpf.c, then detaching it.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from tracer.core import bpf

# Preference order of the capture variants for file/connect hooks.
CAPTURE_MODES = ("lsm", "fentry", "kprobe", "tracepoint")
PROGRAM_TYPES = ("tracepoint", "raw_tp", "tp_btf", "kprobe", "fentry", "lsm")
BTF_PATH = Path("/sys/kernel/btf/vmlinux")
LSM_LIST = Path("/sys/kernel/security/lsm")


@dataclass(slots=True, frozen=True)
class TypeSupport:
    loads: bool
    attaches: bool
    error: str | None = None

    @property
    def usable(self) -> bool:
        return self.loads and self.attaches


@dataclass(slots=True)
class ProbeReport:
    kernel: str
    btf: bool
    libbpf: str
    bpf_lsm_enabled: bool
    types: dict[str, TypeSupport] = field(default_factory=dict)
    seconds: float = 0.0

    def _usable(self, kind: str) -> bool:
        return self.types.get(kind, TypeSupport(False, False)).usable

    def capture_modes(self) -> list[str]:
        """The file/connect variants this kernel can run, best first.

        lsm also needs BPF-LSM active (a program attached to an LSM hook
        that is not in `lsm=` loads and attaches but is never called) and
        fexit, which its programs use for the result of the syscall.
        """
        needs = {
            "lsm": self.bpf_lsm_enabled and self._usable("lsm") and self._usable("fentry"),
            "fentry": self._usable("fentry"),
            "kprobe": self._usable("kprobe"),
            "tracepoint": self._usable("tracepoint"),
        }
        return [m for m in CAPTURE_MODES if needs[m]]

    @property
    def capture_mode(self) -> str:
        """The best variant for file/connect hooks that works here."""
        modes = self.capture_modes()
        return modes[0] if modes else "none"

    @property
    def process_hooks(self) -> str:
        """tp_btf when usable (typed, cheaper), else raw_tp."""
        for mode in ("tp_btf", "raw_tp"):
            if self.types.get(mode, TypeSupport(False, False)).usable:
                return mode
        return "none"


def _lsm_enabled() -> bool:
    try:
        return "bpf" in LSM_LIST.read_text().strip().split(",")
    except OSError:
        return False


def _try(obj_path: Path, kind: str) -> TypeSupport:
    with bpf.quiet():
        try:
            obj = bpf.BpfObject(obj_path)
        except OSError as exc:
            return TypeSupport(False, False, str(exc))
        with obj:
            for prog in obj.programs.values():
                prog.set_autoload(prog.name == f"probe_{kind}")
            try:
                obj.load()
            except bpf.LibbpfError as exc:
                return TypeSupport(False, False, os.strerror(exc.errno))
            try:
                obj.attach(f"probe_{kind}")
            except bpf.LibbpfError as exc:
                return TypeSupport(True, False, os.strerror(exc.errno))
    return TypeSupport(True, True)


def probe(bpf_dir: Path) -> ProbeReport:
    t0 = time.perf_counter()
    report = ProbeReport(
        kernel=platform.release(),
        btf=BTF_PATH.exists(),
        libbpf=bpf.libbpf_version(),
        bpf_lsm_enabled=_lsm_enabled(),
    )
    obj_path = bpf_dir / "probe.bpf.o"
    if not obj_path.is_file():
        raise FileNotFoundError(
            f"BPF object {obj_path} not found; build the objects with `make bpf` "
            "or point --bpf-dir at them"
        )
    for kind in PROGRAM_TYPES:
        report.types[kind] = _try(obj_path, kind)
    report.seconds = time.perf_counter() - t0
    return report
