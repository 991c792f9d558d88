# Two commands on a fresh Debian 12, as root:
#   make run   set everything up and run the daemon with its defaults
#   make test  set everything up and run the whole test suite (real kernel)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BPF_OUT := build/bpf
# Build and run-time system packages (Debian names).
APT_PACKAGES := clang llvm bpftool libbpf-dev libbpf1 make python3 python3-venv
PY_STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: all run test test-vm vm-deps deps apt venv bpf lint clean

all: deps bpf

# Installs only what is missing, so a ready machine pays one dpkg query.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "error: run as root to install $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(PY_STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(PY_STAMP)

deps: apt venv

bpf: apt
	$(MAKE) -C bpf_probes OUT=$(abspath $(BPF_OUT))

run: deps bpf
	$(VENV)/bin/tracer run --policy policy/library

test: deps bpf
	$(VENV)/bin/pytest -v -m "not vm"

# Kernels with kprobe/fentry/BPF-LSM, under qemu (see tests/vm/vm.py).
vm-deps: deps
	$(VENV)/bin/pip install -q -e '.[dev,vm]'
	$(VENV)/bin/python tests/vm/vm.py setup

test-vm: deps bpf vm-deps
	$(VENV)/bin/python tests/vm/vm.py run

lint: deps
	$(VENV)/bin/ruff check tracer enrich export policy tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf build $(VENV)
