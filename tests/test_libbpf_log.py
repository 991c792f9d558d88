"""A program the verifier refuses: the error names the verifier's reason.

The verifier log of a refused program runs to many kilobytes and its last
lines say why; libbpf hands it to our print callback as one message.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tracer.core import bpf

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parent.parent

_SRC = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tp/syscalls/sys_enter_getppid")
int refused(void *ctx)
{
	volatile __u64 x = 0;

	/* A long verified path first, so the log is far over 4 KiB... */
#pragma unroll
	for (int i = 0; i < 400; i++)
		x += i;
	/* ...then a read through a number, which the verifier refuses. */
	return *(int *)(long)x;
}

char LICENSE[] SEC("license") = "GPL";
"""


def test_the_verifier_reason_reaches_the_error(tmp_path: Path) -> None:
    src = tmp_path / "refused.bpf.c"
    src.write_text(_SRC)
    obj = tmp_path / "refused.bpf.o"
    subprocess.run(
        ["clang", "-g", "-O2", "-target", "bpf", f"-I{REPO / 'build' / 'bpf'}",
         "-c", str(src), "-o", str(obj)],
        check=True,
    )
    o = bpf.BpfObject(obj)
    try:
        with pytest.raises(bpf.LibbpfError) as info:
            o.load()
    finally:
        o.close()
    err = info.value
    assert sum(len(line) for line in err.detail) > 16 * 1024  # the whole log
    assert re.search(r"invalid mem access", str(err)), str(err)[-2000:]
