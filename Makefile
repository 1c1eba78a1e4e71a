# Front door: `make`, `make run`, `make test` (DESIGN B.1). CMake does the build.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)
CONF       ?= deploy/postern.conf

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

test-release: build
	cd $(BUILD) && ctest --output-on-failure

test-asan: asan
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure

test: test-release test-asan

bench: build
	bash bench/smtp-source-baseline.sh

# libFuzzer targets for every proto/ parser (opt-in: not part of `make test`).
FUZZ_SECONDS ?= 60
fuzz: deps
	@command -v clang >/dev/null || apt-get install -y -qq clang
	@mkdir -p $(BUILD)/fuzz
	@for t in tests/fuzz/fuzz_*.c; do \
	  n=$$(basename $$t .c); \
	  clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	    -D_GNU_SOURCE -Iproto -Iengine $$t proto/*.c engine/envelope.c -o $(BUILD)/fuzz/$$n || exit 1; \
	  echo "== $$n ($(FUZZ_SECONDS)s)"; \
	  $(BUILD)/fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 2>&1 | tail -3 || exit 1; \
	done

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
