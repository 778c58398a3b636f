# Xenith — see README.md. Every target works from a fresh clone after .ci/run's packages.
PREFIX  ?= /usr/local
DESTDIR ?=
SWIFT   ?= swift
CC      ?= cc
LD      ?= ld
BUILD   ?= build
GUEST   ?= $(BUILD)/guest
# Release binaries link the Swift runtime statically: small, fast-starting processes.
RELEASE_FLAGS ?= -c release --static-swift-stdlib
BINARIES := xenith-core xenstored blkback netback xenconsoled xend xm migration

.PHONY: all release run stop run-core fixtures guest debian-image hvm-iso test unit integration integration-images bench install clean

all: release

release:
	$(SWIFT) build $(RELEASE_FLAGS)

include fixtures/Makefile.inc

# The main job: build, make the Debian image, start xend in a root of its own (RUN_ROOT,
# under build/, so the host's /etc/xen and /var are not touched) and boot the Debian example
# on the qemu engine with its console on this terminal: log in as root (no password);
# `poweroff` ends the domain, Ctrl-] detaches. `make stop` destroys the domains and stops
# xend and its daemons.
RUN_ROOT   ?= $(CURDIR)/$(BUILD)/root
RUN_CONFIG ?= services/examples/debian.cfg
BIN = $$($(SWIFT) build $(RELEASE_FLAGS) --show-bin-path)
run: release debian-image
	@XENITH_ROOT=$(RUN_ROOT) "$(BIN)/xend" status >/dev/null 2>&1 || XENITH_ROOT=$(RUN_ROOT) "$(BIN)/xend" start
	XENITH_ROOT=$(RUN_ROOT) "$(BIN)/xm" create -c $(RUN_CONFIG)
	@echo "xend keeps running in $(RUN_ROOT): XENITH_ROOT=$(RUN_ROOT) $(BIN)/xm list; make stop"

# Destroys that root's domains (xend stop alone leaves domains running, as in Xen), then
# stops xend, xenconsoled and xenstored and removes their run files.
stop:
	-@XENITH_ROOT=$(RUN_ROOT) "$(BIN)/xm" list 2>/dev/null | awk 'NR > 2 { print $$1 }' | \
	    while read -r d; do XENITH_ROOT=$(RUN_ROOT) "$(BIN)/xm" destroy "$$d"; done
	-XENITH_ROOT=$(RUN_ROOT) "$(BIN)/xend" stop
	-@for d in xenconsoled xenstored; do f=$(RUN_ROOT)/run/$$d/$$d.pid; \
	    [ -f $$f ] && kill $$(cat $$f) 2>/dev/null; sleep 0.2; rm -f $$f $(RUN_ROOT)/run/$$d/socket; done; true

# The core alone: boot the PVH test fixture in xenith-core, console on this terminal (it
# ticks until Ctrl-C, which destroys the domain).
RUN_ARGS ?= --kernel $(BUILD)/fixtures/pvh.elf --extra t --memory 32
run-core: release fixtures
	"$(BIN)/xenith-core" $(RUN_ARGS)

fixtures: $(FIXTURES)

guest:
	guest/build-test-guest.sh $(GUEST)

debian-image:
	guest/build-debian-image.sh $(GUEST)

# CD-ROM for HVM domains (services/examples/hvm-cdrom.cfg).
hvm-iso:
	guest/build-hvm-iso.sh $(GUEST)

# The whole suite: unit tests, then the integration tests (KVM, root, QEMU; each one
# prints SKIP with its reason where the machine cannot run it).
# Guest images first, so the tests that boot them run rather than skip. Suites run one
# at a time: several boot real guests under TCG or run supervisors with timing-sensitive
# restarts, and on 2 cores in parallel they starve each other.
test: fixtures guest debian-image hvm-iso
	$(SWIFT) build --build-tests
	XENITH_TEST_KERNEL=$(CURDIR)/$(GUEST)/vmlinuz timeout 3000 $(SWIFT) test --skip-build --no-parallel
	$(MAKE) integration-images

unit:
	$(SWIFT) test --skip IntegrationTests

integration: fixtures guest debian-image hvm-iso
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --no-parallel --filter IntegrationTests
	$(MAKE) integration-images

# Real Linux (Debian's kernel) under QEMU TCG with the test initramfs.
integration-images: guest
	guest/test-images.sh $(GUEST)

bench: release fixtures guest
	python3 bench/core_boot.py
	SCRATCH=.build bench/blk.sh
	python3 bench/control_plane.py
	python3 bench/net.py
	python3 bench/qemu_overhead.py
	python3 bench/save_restore.py

install: release
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/xenith/manifests
	for b in $(BINARIES); do install -m 0755 "$$($(SWIFT) build $(RELEASE_FLAGS) --show-bin-path)/$$b" $(DESTDIR)$(PREFIX)/bin/; done
	[ ! -d manifests ] || cp -r manifests/. $(DESTDIR)$(PREFIX)/share/xenith/manifests/
	install -d $(DESTDIR)$(PREFIX)/share/xenith/scripts && cp services/scripts/* $(DESTDIR)$(PREFIX)/share/xenith/scripts/
	@id xenith-qemu >/dev/null 2>&1 || echo "note: qemu domains run QEMU as root until the user exists: useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin xenith-qemu"

clean:
	rm -rf $(BUILD)
	$(SWIFT) package clean
