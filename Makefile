# Front door: `make`, `make run`, `make test` (DESIGN B.1). CMake does the build.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)
CONF       ?= deploy/postern.conf
# ctest -j: the integration halves (two per backend) wait on their peers
# more than they compute, so four run at once even on 2 cores.
CTEST_JOBS ?= 4

.PHONY: all deps build asan run test test-release test-asan bench fuzz clean

all: build

deps:
	@bash scripts/install-deps.sh
	@bash scripts/fetch-promtool.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DPOSTERN_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)

run: build
	@mkdir -p var/spool var/drop
	$(BUILD)/postern -c $(CONF)

# fuzz_bounded runs alone (RUN_SERIAL): it takes every CPU.
test-release: build
	cd $(BUILD) && ctest -j $(CTEST_JOBS) --output-on-failure

test-asan: asan
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest -j $(CTEST_JOBS) --output-on-failure

test: test-release test-asan

bench: build
	bash bench/smtp-source-baseline.sh

# libFuzzer, long runs: every tests/fuzz/fuzz_<name>.c (or FUZZ_TARGETS, e.g.
# "smtp_cmd config") for FUZZ_SECONDS each, one per CPU at a time, built with
# clang under ASan/UBSan in $(BUILD)/fuzz. The working corpus starts from the
# seeds in tests/fuzz/corpus/<name>/ and grows in $(BUILD)/fuzz/corpus/<name>/
# from run to run; the committed seeds never change. `make test` runs the same
# script for 10 s a target (ctest fuzz_bounded, in the ASan build).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz: deps
	@bash tests/fuzz/run-fuzzers.sh -k -t $(FUZZ_SECONDS) $(BUILD)/fuzz $(FUZZ_TARGETS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
