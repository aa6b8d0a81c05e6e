# PRISM: `make demo` and `make test` are all a new user needs (as root, on Debian 12).
# Every target that runs code first runs `setup`, which is idempotent and takes about a
# second on a ready machine.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
# ifconfig (used by Mininet) and the Open vSwitch daemons live in sbin.
export PATH := $(PATH):/usr/local/sbin:/usr/sbin:/sbin

VENV := .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?= -v -ra
DEMO_ARGS ?=

.PHONY: setup test demo bench clean

setup:
	bash scripts/setup.sh

# The whole suite, integration tests on real Open vSwitch included. pytest's exit code
# is kept as it is: 5 ("no tests collected") fails the target like any other failure.
test: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS) tests

demo: setup
	$(VENV)/bin/prism demo $(DEMO_ARGS)

bench: setup
	@shopt -s nullglob; benches=(benchmarks/*.py); \
	if [ $${#benches[@]} -eq 0 ]; then echo "no benchmarks in benchmarks/"; fi; \
	for bench in "$${benches[@]}"; do echo "== $$bench"; $(PYTHON) "$$bench"; done

# The venv and the setup stamps only. The record of which Open vSwitch daemons this
# checkout started is kept, so that `scripts/ovs.sh stop` can still stop them.
clean:
	rm -rf $(VENV)
	if [ -d .stamps ]; then find .stamps -mindepth 1 ! -name ovs-started -delete; fi
