"""tracer: eBPF runtime security and forensics for Linux and Kubernetes."""

__version__ = "0.1.0"
