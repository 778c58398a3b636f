# Xenith — see README.md. `make run` and `make test` first run `make deps`, which installs
# what is missing on a Debian 12 machine (as root); every other target assumes it has run.
PREFIX  ?= /usr/local
DESTDIR ?=
# Install directories (`make install`): init scripts and settings go to /etc whatever PREFIX.
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
MANDIR     ?= $(PREFIX)/share/man
UNITDIR    ?= $(PREFIX)/lib/systemd/system
DATADIR    ?= $(PREFIX)/share/xenith
# The Swift toolchain's usual place on these machines, after whatever PATH already has.
export PATH := $(PATH):/opt/swift/usr/bin
SWIFT   ?= swift
CC      ?= cc
LD      ?= ld
BUILD   ?= build
GUEST   ?= $(BUILD)/guest
# Release binaries link the Swift runtime statically: small, fast-starting processes.
RELEASE_FLAGS ?= -c release --static-swift-stdlib
# What `make install` puts in BINDIR: the executable products of Package.swift.
BINARIES := $(shell sed -n 's/.*\.executable.name: "\([^"]*\)".*/\1/p' Package.swift)

.PHONY: all deps release run stop run-core fixtures guest debian-image hvm-iso test unit integration integration-images sanitize sanitize-asan sanitize-tsan bench fuzz fuzz-smoke install install-tree clean

all: release

release:
	$(SWIFT) build $(RELEASE_FLAGS)

# Debian packages, Python modules and the QEMU user (.ci/deps); a no-op when all are there.
# As a user other than root it names what is missing and stops: `sudo make deps`.
deps:
	@bash .ci/deps

include fixtures/Makefile.inc

# The main job: build, make the Debian image, start xend in a root of its own (RUN_ROOT,
# under build/, so the host's /etc/xen and /var are not touched; services/xend-config.sxp is
# its settings unless it has its own, so xenbr0 is network-nat-default's private, NATed
# bridge and the host's uplink is left alone) and boot the Debian example
# on the qemu engine with its console on this terminal: log in as root (no password);
# `poweroff` ends the domain, Ctrl-] detaches. `make stop` destroys the domains and stops
# xend and its daemons.
RUN_ROOT   ?= $(CURDIR)/$(BUILD)/root
RUN_CONFIG ?= services/examples/debian.cfg
BIN = $$($(SWIFT) build $(RELEASE_FLAGS) --show-bin-path)
run: deps release debian-image
	@[ -f $(RUN_ROOT)/etc/xen/xend-config.sxp ] || { mkdir -p $(RUN_ROOT)/etc/xen && \
	    cp services/xend-config.sxp $(RUN_ROOT)/etc/xen/xend-config.sxp; }
	@XENITH_ROOT=$(RUN_ROOT) "$(BIN)/xend" status >/dev/null 2>&1 || XENITH_ROOT=$(RUN_ROOT) "$(BIN)/xend" start
	XENITH_ROOT=$(RUN_ROOT) "$(BIN)/xm" create -c $(RUN_CONFIG)
	@echo "xend keeps running in $(RUN_ROOT): XENITH_ROOT=$(RUN_ROOT) $(BIN)/xm list; make stop"

# Destroys that root's domains (xend stop alone leaves domains running, as in Xen), then
# stops xend, xenconsoled and xenstored and removes their run files, and takes down the
# default network (bridge, dnsmasq, NAT rules).
stop:
	-@XENITH_ROOT=$(RUN_ROOT) "$(BIN)/xm" list 2>/dev/null | awk 'NR > 2 { print $$1 }' | \
	    while read -r d; do XENITH_ROOT=$(RUN_ROOT) "$(BIN)/xm" destroy "$$d"; done
	-XENITH_ROOT=$(RUN_ROOT) "$(BIN)/xend" stop
	-@[ ! -d $(RUN_ROOT)/run/xen/network-nat-default ] || XENITH_ROOT=$(RUN_ROOT) services/scripts/network-nat-default stop
	-@for d in xenconsoled xenstored; do f=$(RUN_ROOT)/run/$$d/$$d.pid; \
	    [ -f $$f ] && kill $$(cat $$f) 2>/dev/null; sleep 0.2; rm -f $$f $(RUN_ROOT)/run/$$d/socket; done; true

# The core alone: boot the PVH test fixture in xenith-core, console on this terminal (it
# ticks until Ctrl-], which destroys the domain: Ctrl-C goes to the guest, as on a serial
# line). Exit status 4 (destroyed) is the normal end here.
RUN_ARGS ?= --kernel $(BUILD)/fixtures/pvh.elf --extra t --memory 32
run-core: release fixtures
	"$(BIN)/xenith-core" $(RUN_ARGS) || [ $$? -eq 4 ]

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
# restarts, and on 2 cores in parallel they starve each other. Last, every fuzz target for a
# few seconds (fuzz-smoke: about 8 minutes to build them, 90 s to run them).
# TEST_NESTED=1 (the default) runs the PCI-passthrough test one level down (TCG inside TCG
# with an emulated IOMMU, 6 to 17 minutes; integration/README.md); TEST_NESTED=0 skips it.
TEST_NESTED ?= 1
test: deps fixtures guest debian-image hvm-iso
	$(SWIFT) build --build-tests
	XENITH_TEST_NESTED=$(TEST_NESTED) XENITH_TEST_KERNEL=$(CURDIR)/$(GUEST)/vmlinuz timeout 3000 $(SWIFT) test --skip-build --no-parallel
	$(MAKE) integration-images
	$(MAKE) fuzz-smoke

unit:
	$(SWIFT) test --skip IntegrationTests

# Unit tests under AddressSanitizer, then ThreadSanitizer: each a full build of its own in
# .build-asan / .build-tsan (git-ignored), so the normal build is untouched. SANITIZE_FILTER
# picks the test suites (default: the back ends and xenstore, which parse what guests and
# peers send; `SANITIZE_FILTER=.` runs every unit suite). Reports inside the toolchain,
# Foundation or NIO that are not ours are suppressed in Tests/sanitizers/ (each with its
# reason); any other report fails the run. SANITIZE_SKIP leaves out the integration tests.
# The builds define XENITH_SANITIZED: the sandbox then leaves out manifests' `rlimit data`
# and `rlimit as` (the ASan/TSan runtime maps more than a service's limit before its main),
# its seccomp filters also allow what the runtime calls (sigaltstack, prctl, memory mapping,
# /proc/self/maps), and LeakSanitizer's exit check is off in a sandboxed process (it stops
# threads with clone and ptrace; Sources/Sandbox/SanitizerHooks.swift); so the migration
# suites run the real, sandboxed `migration` service under AddressSanitizer. Not under
# ThreadSanitizer (TSAN_SKIP): the sandbox makes its PID namespace with a raw clone that
# TSan's runtime does not see, and in the child its interceptors fail their own check
# ("thr->slot != 0") at the first call; TSan runs the migration library's suites only.
SANITIZE_FILTER ?= VhostUserTests|BlockBackendTests|NetBackendTests|VirtioTests|XenStoreTests|MigrationTests|ConsoleBackendTests
SANITIZE_SKIP   ?= IntegrationTests
TSAN_SKIP       ?= $(SANITIZE_SKIP)|MigrationTests.ServiceTests|MigrationTests.QemuStreamTests
SANITIZE_JOBS   ?=
sanitize: sanitize-asan sanitize-tsan
sanitize-asan:
	$(SWIFT) build --build-tests $(SANITIZE_JOBS) --sanitize=address --scratch-path .build-asan -Xswiftc -DXENITH_SANITIZED
	ASAN_OPTIONS=halt_on_error=1:detect_leaks=1 \
	LSAN_OPTIONS=suppressions=$(CURDIR)/Tests/sanitizers/lsan.supp:print_suppressions=0 \
	    $(SWIFT) test --skip-build --sanitize=address --scratch-path .build-asan \
	    --skip '$(SANITIZE_SKIP)' --filter '$(SANITIZE_FILTER)'
sanitize-tsan:
	$(SWIFT) build --build-tests $(SANITIZE_JOBS) --sanitize=thread --scratch-path .build-tsan -Xswiftc -DXENITH_SANITIZED
	TSAN_OPTIONS=halt_on_error=1:suppressions=$(CURDIR)/Tests/sanitizers/tsan.supp:print_suppressions=0 \
	    $(SWIFT) test --skip-build --sanitize=thread --scratch-path .build-tsan \
	    --skip '$(TSAN_SKIP)' --filter '$(SANITIZE_FILTER)'

integration: deps fixtures guest debian-image hvm-iso
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --no-parallel --filter IntegrationTests
	$(MAKE) integration-images

# Real Linux (Debian's kernel) under QEMU TCG with the test initramfs.
integration-images: guest
	guest/test-images.sh $(GUEST)

bench: release fixtures guest
	python3 bench/core_boot.py
	SCRATCH=.build bench/blk.sh
	SCRATCH=.build bench/blk_direct.sh
	python3 bench/control_plane.py
	python3 bench/net.py
	python3 bench/qemu_overhead.py
	python3 bench/save_restore.py
	python3 bench/migration.py

# libFuzzer targets (fuzz/README.md), built apart from everything else: their own scratch
# path, -sanitize=fuzzer,address, and XENITH_FUZZ so Package.swift declares them. lld links
# them (gold fails on the sanitizer runtimes' debug info). One product at a time: building
# the whole package with these flags would give every service two `main`s.
FUZZ_SCRATCH ?= .build-fuzz
FUZZ_TARGETS ?= $(notdir $(wildcard fuzz/fuzz-*))
FUZZ_JOBS ?=
FUZZ_FLAGS = -c release $(FUZZ_JOBS) --scratch-path $(FUZZ_SCRATCH) -Xswiftc -sanitize=fuzzer,address \
	-Xswiftc -parse-as-library -Xswiftc -enable-testing -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld
fuzz:
	@for t in $(FUZZ_TARGETS); do echo "fuzz: building $$t"; \
	    XENITH_FUZZ=1 $(SWIFT) build $(FUZZ_FLAGS) --product $$t || exit 1; done

# Every target for a few seconds over its seeds (`make test` runs it: keeps them building, and the crashes
# found so far fixed); fuzz/run.sh says what it ran and fails on any finding.
FUZZ_SECONDS ?= 8
fuzz-smoke: fuzz
	FUZZ_BIN=$(FUZZ_SCRATCH)/release fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# Binaries, manifests, host scripts, init scripts (SysV and systemd), settings and man pages
# under $(DESTDIR): BINDIR, DATADIR (manifests, network scripts), SYSCONFDIR (init.d,
# default/xendomains, xen/xend-config.sxp and xen/auto; existing settings are kept), UNITDIR,
# MANDIR. install-tree lays the same out from the binaries in BUILT, without building.
install: release
	$(MAKE) install-tree BUILT="$$($(SWIFT) build $(RELEASE_FLAGS) --show-bin-path)"

SUBST = sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
	    -e '/set by make install$$/s|:-[^}]*}|:-$(BINDIR)}|'
install-tree:
	@test -n "$(BUILT)" || { echo "install-tree: set BUILT to the directory holding the binaries" >&2; exit 1; }
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/manifests $(DESTDIR)$(DATADIR)/scripts \
	    $(DESTDIR)$(SYSCONFDIR)/init.d $(DESTDIR)$(SYSCONFDIR)/default $(DESTDIR)$(SYSCONFDIR)/xen/auto \
	    $(DESTDIR)$(UNITDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5
	for b in $(BINARIES); do install -m 0755 "$(BUILT)/$$b" $(DESTDIR)$(BINDIR)/; done
	cp -r manifests/. $(DESTDIR)$(DATADIR)/manifests/
	for f in services/scripts/*; do case $$f in *.md) ;; *.sh) install -m 0644 $$f $(DESTDIR)$(DATADIR)/scripts/ ;; \
	    *) install -m 0755 $$f $(DESTDIR)$(DATADIR)/scripts/ ;; esac; done
	for f in xend xendomains; do $(SUBST) services/init.d/$$f > $(DESTDIR)$(SYSCONFDIR)/init.d/$$f; \
	    chmod 0755 $(DESTDIR)$(SYSCONFDIR)/init.d/$$f; done
	for f in services/systemd/*.service; do $(SUBST) $$f > $(DESTDIR)$(UNITDIR)/$${f##*/}; \
	    chmod 0644 $(DESTDIR)$(UNITDIR)/$${f##*/}; done
	@for f in default/xendomains:services/default/xendomains xen/xend-config.sxp:services/xend-config.sxp; do \
	    dst=$(DESTDIR)$(SYSCONFDIR)/$${f%%:*}; \
	    if [ -e $$dst ]; then echo "kept $$dst (the new one is $${f#*:})"; \
	    else echo "install -m 0644 $${f#*:} $$dst"; install -m 0644 $${f#*:} $$dst; fi; done
	install -m 0644 services/man/xm.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 services/man/xmdomain.cfg.5 services/man/xend-config.sxp.5 $(DESTDIR)$(MANDIR)/man5/
	@id xenith-qemu >/dev/null 2>&1 || echo "note: qemu domains run QEMU as root until the user exists: useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin xenith-qemu"

clean:
	rm -rf $(BUILD)
	$(SWIFT) package clean
