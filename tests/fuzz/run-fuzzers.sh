#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz_<name>.c) with clang under
# ASan/UBSan in OUT, then runs each for SECONDS from its seed corpus
# tests/fuzz/corpus/<name>/, one per CPU at a time. Exits 1 when any target
# crashes, leaks, hangs or trips a sanitizer, printing the reproducer.
# Nothing is ever written under tests/: inputs libFuzzer finds go to a
# scratch copy (or, with -k, to OUT/corpus/<name>), crash files to
# OUT/artifacts/<name>/.
#
# usage: run-fuzzers.sh [-t SECONDS] [-k] OUT [NAME...]
#   -t  seconds per target (default 10)
#   -k  keep the working corpus in OUT/corpus/<name> across runs (long runs)
#   NAME  fuzz_smtp_cmd or smtp_cmd; default: every target
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../.." && pwd)
SECONDS_EACH=10
KEEP=0
while getopts "t:k" o; do
	case $o in
	t) SECONDS_EACH=$OPTARG ;;
	k) KEEP=1 ;;
	*) echo "usage: $0 [-t SECONDS] [-k] OUT [NAME...]" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-t SECONDS] [-k] OUT [NAME...]" >&2; exit 2; }
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
shift

if ! command -v clang >/dev/null; then
	echo "fuzz: clang not found: install clang and libclang-rt-dev (make deps)" >&2
	exit 1
fi

names=()
if [ $# -gt 0 ]; then
	for n in "$@"; do names+=("${n#fuzz_}"); done
else
	for f in "$SRC"/tests/fuzz/fuzz_*.c; do
		n=$(basename "$f" .c)
		names+=("${n#fuzz_}")
	done
fi

# Debug keeps the asserts (they are oracles too); -O1 runs about three times
# more inputs per second than -O0.
start=$(date +%s)
if ! { cmake -S "$SRC" -B "$OUT" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
	-DCMAKE_C_FLAGS=-O1 -DPOSTERN_SANITIZE=ON -DPOSTERN_FUZZ=ON &&
	cmake --build "$OUT" -j "$(nproc)" --target "${names[@]/#/fuzz_}"; } >"$OUT/build.log" 2>&1; then
	tail -40 "$OUT/build.log"
	echo "fuzz: building the targets failed (log: $OUT/build.log)" >&2
	exit 1
fi
echo "fuzz: built ${#names[@]} targets with clang in $(($(date +%s) - start)) s"

# The make test-asan options (abort_on_error) are not for libFuzzer, which
# catches the report itself and writes the input out.
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/postern-fuzz.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT

# One target: its own corpus directory and working directory (relative
# paths in a fuzzed configuration land there), stdin from /dev/null so
# nothing it opens can wait on the terminal. Writes rc and the log.
run_one() {
	local n=$1 corpus art work
	art=$OUT/artifacts/$n
	rm -rf "$art"
	mkdir -p "$art"
	if [ "$KEEP" = 1 ]; then
		corpus=$OUT/corpus/$n
	else
		corpus=$SCRATCH/corpus/$n
	fi
	mkdir -p "$corpus"
	if [ -d "$SRC/tests/fuzz/corpus/$n" ]; then
		cp -n "$SRC/tests/fuzz/corpus/$n"/* "$corpus"/ 2>/dev/null || true
	fi
	work=$SCRATCH/work/$n
	mkdir -p "$work"
	local rc=0
	(cd "$work" &&
		"$OUT/fuzz_$n" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=1024 \
			-artifact_prefix="$art/" -print_final_stats=1 "$corpus" \
			</dev/null >"$OUT/$n.log" 2>&1) || rc=$?
	echo "$rc" >"$SCRATCH/$n.rc"
}

jobs_max=$(nproc)
for n in "${names[@]}"; do
	if [ ! -d "$SRC/tests/fuzz/corpus/$n" ]; then
		echo "fuzz: warning: no seed corpus tests/fuzz/corpus/$n/" >&2
	fi
	while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do
		wait -n || true
	done
	run_one "$n" &
done
wait

failed=0
for n in "${names[@]}"; do
	rc=$(cat "$SCRATCH/$n.rc" 2>/dev/null || echo 1)
	log=$OUT/$n.log
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
	if [ "$rc" = 0 ]; then
		printf 'fuzz_%-12s ok   %s runs in %s s, %s, %s seeds\n' "$n" "${runs:-?}" \
			"$SECONDS_EACH" "${cov:-cov: ?}" "$(ls "$SRC/tests/fuzz/corpus/$n" 2>/dev/null | wc -l)"
		continue
	fi
	failed=1
	printf 'fuzz_%-12s FAILED (exit %s)\n' "$n" "$rc"
	grep -v '^#[0-9]' "$log" | tail -60
	for a in "$OUT/artifacts/$n"/*; do
		[ -f "$a" ] || continue
		case $(basename "$a") in slow-unit-*) continue ;; esac
		echo "reproducer: $a"
		echo "  run it:   $OUT/fuzz_$n $a"
		[ "$(stat -c %s "$a")" -le 4096 ] && echo "  base64:   $(base64 -w0 "$a")"
	done
	echo "log: $log"
done
echo "fuzz: done in $(($(date +%s) - start)) s"
exit $failed
