// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The capture object: every program and map in one ELF, so process,
 * file and network programs share the ring buffer, the counters and the
 * policy maps. The loader enables one variant per hook.
 */
#include "process.bpf.h"
#include "file.bpf.h"
#include "net.bpf.h"
#include "cgroup.bpf.h"
#include "hooks.bpf.h"
#include "evasion.bpf.h"
#include "priv.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
