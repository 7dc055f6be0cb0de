# The README's two commands: `make demo` and `make test`. Both install what they need on a fresh Debian 12.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Debian's own python3: the hook and the package run on it, and pyenv's python3 breaks pybuild.
PYTHON := /usr/bin/python3
VENV := .venv
VPY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# What the package build needs, from Debian. A minimal Debian has no compiler: musl-tools builds the hook's
# static launcher, and dpkg-buildpackage checks for build-essential. `make deb` installs only these.
BUILD_PACKAGES := debhelper dh-python python3-all python3-setuptools pybuild-plugin-pyproject dpkg-dev fakeroot \
	build-essential musl-tools
# Everything the tests, the demo and the benchmarks use besides (gcc and libc6-dev build a test library).
APT_PACKAGES := $(BUILD_PACKAGES) python3 python3-venv python3-yaml python3-filelock python3-humanfriendly \
	openssh-server openssh-client pamtester iproute2 procps util-linux passwd \
	debootstrap systemd-container systemd lintian groff-base gcc libc6-dev \
	hyperfine prometheus-node-exporter prometheus

# The hook's launcher built for this checkout: what the tests and the benchmarks give pam_exec. It execs
# `/usr/bin/python3 -I -S` on this tree's hooks/pam-session (the package's build points it at
# /usr/share/idle-reaper instead; packaging/debian/rules). tests/conftest.py builds it through `make launcher`.
LAUNCHER_SOURCE := hooks/pam-session-launch.c
LAUNCHER := build/hook/pam-session-launch
LAUNCHER_HOOK := $(CURDIR)/hooks/pam-session

.PHONY: help deps deb-deps venv launcher lint test test-unit test-integration reliability deb demo bench clean

help:
	@echo "make demo   boot a throwaway Debian with the package, connect, disconnect, watch it power off"
	@echo "make test   install what the tests need, lint, run every test tier"
	@echo "make deb    build the Debian package into dist/"
	@echo "make bench  measure login overhead, tick cost and deadline precision (see BENCHMARKS.md)"
	@echo "make reliability  the fault and load suite at full counts (see RELIABILITY.md)"

# Install what is missing of a package list (needs root; apt-get update once first).
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		[ "$$(id -u)" = 0 ] || { echo "installing Debian packages needs root"; exit 1; }; \
		apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps:
	$(call apt_install,$(APT_PACKAGES))

deb-deps:
	$(call apt_install,$(BUILD_PACKAGES))

$(VENV)/.stamp: setup.cfg pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(VENV)/.stamp

launcher: $(LAUNCHER)

# Into a temp file, then renamed: two test runs at once may both build it.
$(LAUNCHER): $(LAUNCHER_SOURCE)
	@mkdir -p $(@D)
	musl-gcc -static -Os -Wall -Wextra -Werror -DHOOK='"$(LAUNCHER_HOOK)"' -o $@.$$$$.tmp $< \
		&& chmod 0755 $@.$$$$.tmp && mv -f $@.$$$$.tmp $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Tiers, fastest first: logic, then a real sshd and PAM stack, faults and load, the package, a booted systemd.
TIERS := tests/unit tests/integration tests/reliability tests/package tests/system
LOCAL_TIERS := tests/unit tests/integration tests/reliability
MACHINE_TIERS := tests/package tests/system

# Two runs at once, as much of the package and system tiers is waiting for booted machines' clocks. The
# logic, sshd and fault tiers run in a network namespace of their own (loopback only): machines the other
# tiers boot share this host's network, and their SSH sessions would be seen by these tiers' live checks.
# The package and system tiers stay here: a cold cache fetches their images from Debian's archive.
test: deps venv lint launcher
	@mkdir -p build
	@unshare --net sh -c 'ip link set lo up && exec $(VPY) -m pytest -p no:cacheprovider $(LOCAL_TIERS)' \
		> build/test-local.log 2>&1 & local=$$!; \
	machines=0; $(VPY) -m pytest $(MACHINE_TIERS) || machines=$$?; \
	localrc=0; wait $$local || localrc=$$?; \
	echo "== $(LOCAL_TIERS) (in a network namespace of their own; log: build/test-local.log)"; \
	cat build/test-local.log; \
	[ $$machines -eq 0 ] && [ $$localrc -eq 0 ]

test-unit: venv launcher
	$(VPY) -m pytest tests/unit

test-integration: deps venv launcher
	$(VPY) -m pytest tests/integration

# The fault and load suite at the full counts RELIABILITY.md reports (make test runs smaller ones).
reliability: deps venv launcher
	IDLE_REAPER_FULL=1 $(VPY) -m pytest -v -s tests/reliability

deb: deb-deps
	@mkdir -p build
	@echo "building the Debian package (log: build/deb.log)"
	@packaging/build-deb dist > build/deb.log 2>&1 || { tail -n 40 build/deb.log; exit 1; }
	@tail -n 1 build/deb.log

demo: deps venv deb
	$(VPY) -m tests.system.demo

bench: deps venv launcher deb
	$(VPY) -m bench

clean:
	rm -rf build dist .pytest_cache .ruff_cache
