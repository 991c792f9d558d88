// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * One empty program per attach type. `tracer probe` and the daemon's
 * start-up load and attach each one alone: a program type the verifier
 * knows can still fail to load (fentry/LSM under lockdown) or to attach
 * (kprobe without CONFIG_KPROBES), so only a real attach is proof.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tracepoint/syscalls/sys_enter_openat")
int probe_tracepoint(void *ctx) { return 0; }

SEC("raw_tp/sched_process_exec")
int probe_raw_tp(void *ctx) { return 0; }

SEC("tp_btf/sched_process_exec")
int BPF_PROG(probe_tp_btf) { return 0; }

SEC("kprobe/security_file_open")
int BPF_KPROBE(probe_kprobe) { return 0; }

SEC("fentry/security_file_open")
int BPF_PROG(probe_fentry) { return 0; }

SEC("lsm/file_open")
int BPF_PROG(probe_lsm, struct file *file) { return 0; }
