# Stateroom for Swift. `make run` serves the built-in counter on :8080; `make test` runs every test.
SWIFT ?= swift
PYTHON ?= python3
APT_PACKAGES := liburing-dev libssl-dev openssl zlib1g-dev libdeflate-dev wabt chromium libhiredis-dev redis-server haproxy nodejs curl
SERVER := .build/release/stateroom-server
PORT ?= 8080

.PHONY: run test deps build build-debug unit-test e2e-test clean

run: deps build
	$(SERVER) --port $(PORT) --service counter

# Every product in one invocation with one set of settings: building products one at a time makes
# SwiftPM plan each differently and recompile shared modules (WasmKit) on every switch. SwiftPM 6.3
# still re-plans now and then (on a fresh checkout the invocation after the first, after a debug
# build or `swift test`, at times twice in a row) and then recompiles WasmKit (about a minute);
# the second invocation here takes that hit where it is due. `make no-rebuild` reports whether one
# more release build compiles anything; it is not part of `make test`, since the re-planning is not
# predictable enough to fail a run on.
build:
	$(SWIFT) build -c release
	$(SWIFT) build -c release

.PHONY: no-rebuild
no-rebuild:
	@out="$$($(SWIFT) build -c release 2>&1)" || { echo "$$out"; exit 1; }; \
	if echo "$$out" | grep -v "Compiling plugin" | grep -q "Compiling"; then \
		echo "$$out"; echo "one more 'swift build -c release' recompiled the modules above"; exit 1; \
	fi; echo "no-rebuild: one more build compiles nothing"

# System packages (apt) and the Python test clients (PyPI). As root they are installed;
# otherwise the exact command to run is printed.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = "0" ]; then \
			echo "installing:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
		else \
			echo "missing system packages; run: sudo apt-get install -y$$missing"; exit 1; \
		fi; \
	fi
	@$(PYTHON) -c "import websockets, pytest, jwt, cryptography" 2>/dev/null || \
		$(PYTHON) -m pip install -q --disable-pip-version-check -r Tests/e2e/requirements.txt

test: deps build examples unit-test js-test e2e-test

unit-test:
	$(SWIFT) test

# The JavaScript client's own tests (a fake WebSocket; no server).
.PHONY: js-test client-js
js-test:
	node --test Clients/js/test/stateroom.test.mjs

# After editing Clients/js/stateroom.js: the copy every server serves at /stateroom.js.
client-js:
	$(PYTHON) scripts/embed-client-js.py

# Every end-to-end test runs once per I/O backend.
e2e-test:
	STATEROOM_IO=$${STATEROOM_IO:-uring,epoll} $(PYTHON) -m pytest Tests/e2e -q

clean:
	rm -rf .build

# Benchmarks (Benchmarks/README.md). `make bench` runs the micro-benchmarks (ordo-one/benchmark),
# which live in their own package so that they stay out of `make test`'s build.
# `make bench-compare` runs every load scenario against our server and uWebSockets (socketify),
# interleaved rounds, server on CPU 0 and the bench on CPU 1.
.PHONY: bench bench-compare floor
bench:
	cd Benchmarks && $(SWIFT) package benchmark

bench-compare: build
	@dpkg-query -W -f='$${Status}' libuv1 2>/dev/null | grep -q "ok installed" || apt-get install -y -qq libuv1
	@$(PYTHON) -c "import socketify" 2>/dev/null || $(PYTHON) -m pip install -q --disable-pip-version-check socketify
	taskset -c 1 .build/release/stateroom-bench --scenario all --compare ours --rounds 3 --chart bench-latency.svg

# `make alloc-gates` (in CI, after `make test`) fails if a hot-path micro-benchmark allocates (frame
# parse/encode, unmask, UTF-8 validation, HTTP head parse): it runs WireProtocolBenchmarks measuring
# only `mallocCountTotal` (STATEROOM_ALLOC_GATE=1: 100 iterations each) and `thresholds check`
# compares each p90 with Benchmarks/Thresholds/*.p90.json (0, no tolerance; a canary that allocates
# once per message must read 1000). Timings are neither measured nor checked. Needs no jemalloc: on
# Swift 6.3 the benchmark package counts with its malloc interposer (LD_PRELOAD). Scratch .build-gates.
ALLOC_GATES_SCRATCH ?= $(CURDIR)/.build-gates
.PHONY: alloc-gates
alloc-gates: deps
	cd Benchmarks && STATEROOM_ALLOC_GATE=1 $(SWIFT) package --scratch-path $(ALLOC_GATES_SCRATCH) \
		benchmark thresholds check --target WireProtocolBenchmarks --metric mallocCountTotal --no-progress

# `make floor` measures the kernel's loopback floor with no WebSocket work (Benchmarks/floor/floor.c):
# sender CPU per 66-byte frame through plain send() and through io_uring, interleaved; sender on
# CPU 0, receiver on CPU 1. FLOOR_ARGS passes options (e.g. FLOOR_ARGS="--batch 0 --repeats 7").
floor: deps
	@mkdir -p .build
	$(CC) -O2 -Wall -Wextra -o .build/floor Benchmarks/floor/floor.c -luring -lpthread
	.build/floor $(FLOOR_ARGS)

# Swift services compiled to wasm (Examples/*, README "Services in Swift, compiled to wasm"):
# `make examples` builds the stateroom CLI and every guest example to Examples/<name>/dist/<name>.wasm
# (Examples/EmbeddedServer is a package of its own, built by its e2e test)
# (release; up-to-date modules are not rebuilt). `make guest-bench` prints module sizes, build
# times and the per-message cost of each example compiled to wasm vs natively.
STATEROOM_CLI := .build/release/stateroom
.PHONY: examples guest-bench
examples: build
	@for d in Examples/*/; do [ -f $$d/Package.swift ] || $(STATEROOM_CLI) build --release --path $$d || exit 1; done

guest-bench: examples
	Examples/guest-bench.sh

# Fuzzing and sanitizers (Fuzz/README.md). `make fuzz` builds every libFuzzer target (parsers of
# untrusted bytes, each checking properties) into .build-fuzz and runs each for FUZZ_SECONDS
# (default 60), printing libFuzzer's `Done N runs` line per target; it fails if any target
# crashes, leaks or breaks a property (the input is kept in .build-fuzz/artifacts/<target>/).
# `make sanitize` runs the unit tests under AddressSanitizer (with LeakSanitizer, .build-asan)
# and then under ThreadSanitizer (.build-tsan). Both run under $(NICE): off the measured cores'
# toes on a shared machine (NICE= to run at normal priority).
FUZZ_SECONDS ?= 60
NICE ?= nice -n 19
.PHONY: fuzz sanitize sanitize-address sanitize-thread
fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) NICE="$(NICE)" Fuzz/run.sh

sanitize: sanitize-address sanitize-thread

sanitize-address: deps
	LSAN_OPTIONS=suppressions=$(CURDIR)/Fuzz/sanitizers/lsan.supp:print_suppressions=0 \
		$(NICE) $(SWIFT) test --sanitize=address --scratch-path .build-asan

# ThreadSanitizer writes its reports to .build-tsan/reports/; they are printed after the run, with
# their one-line summaries last, so the end of a CI log names the race.
sanitize-thread: deps
	@rm -rf .build-tsan/reports && mkdir -p .build-tsan/reports
	@TSAN_OPTIONS=second_deadlock_stack=1:log_path=$(CURDIR)/.build-tsan/reports/tsan \
		$(NICE) $(SWIFT) test --sanitize=thread --scratch-path .build-tsan; rc=$$?; \
	if ls .build-tsan/reports/tsan* >/dev/null 2>&1; then \
		cat .build-tsan/reports/tsan*; \
		echo "ThreadSanitizer reports:"; grep -h '^SUMMARY:' .build-tsan/reports/tsan*; \
		[ $$rc -ne 0 ] || rc=1; \
	fi; exit $$rc
