#!/usr/bin/env bash
# Opt-in check (not part of `make test`): does README's set-up work as written
# on a truly fresh Debian 12? Debootstraps a minbase bookworm chroot (no make,
# no git, empty apt lists), puts a clean clone of the committed HEAD in it and,
# inside it as root, runs README's set-up line(s) exactly as written, then
# `make run` (one message through it with swaks, a file in var/drop/, SIGTERM,
# exit status 0) and `make test`. Prints a PASS/FAIL summary with timings.
#
#   scripts/fresh-debian-check.sh [--clean] [--no-test] [--dir DIR] [--mirror URL] [--repo PATH]
#                                 [--overlay FILE]...
#
#   --clean      forget the cached debootstrap and debootstrap again
#   --no-test    skip `make test` (the make run part is still checked)
#   --dir DIR    where the cache and the chroot live (/var/tmp/postern-fresh-debian)
#   --mirror URL Debian mirror for debootstrap (http://deb.debian.org/debian)
#   --repo PATH  the repository to clone (the one this script is in)
#   --overlay FILE  copy the work tree's FILE (relative to the repository)
#                over the clean clone: to check a change before committing it
#                (README.md to check a new set-up line); repeatable
#
# Runs as root on a Debian host with git. The freshly debootstrapped chroot is
# cached as a tarball in DIR and unpacked anew on every run, so every run
# starts from a pristine minbase; the chroot of the last run stays in DIR/root
# for inspection until the next run. The chroot shares the host's network
# (loopback included), so port 2525 must be free on the host. Inside it,
# /usr/sbin/policy-rc.d keeps package scripts from starting daemons (postfix,
# dnsmasq), which would otherwise be left running on the host's network.
# `make test` runs with PYTEST_ADDOPTS=-rfEs, which only adds the reason of
# every skipped test to its output.
#
# Every wait is bounded; the bounds (seconds) can be changed from the
# environment: T_DEBOOTSTRAP T_SETUP T_RUN T_SWAKS T_DROP T_STOP T_TEST.
# `make test` writes ~25 GB under the chroot's /tmp (pytest keeps its last
# three base directories; removed afterwards): the preflight wants MIN_FREE_GB
# (35; 5 with --no-test) free in DIR.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=/var/tmp/postern-fresh-debian
MIRROR=http://deb.debian.org/debian
SUITE=bookworm
CLEAN=0
OVERLAY=()
RUN_TEST=1
T_DEBOOTSTRAP=${T_DEBOOTSTRAP:-1800}  # host apt-get install debootstrap + debootstrap
T_SETUP=${T_SETUP:-1200}              # README's set-up line(s)
T_RUN=${T_RUN:-2400}                  # make run: install-deps + build until 127.0.0.1:2525 listens
T_SWAKS=${T_SWAKS:-60}
T_DROP=${T_DROP:-60}                  # the message reaching var/drop/
T_STOP=${T_STOP:-90}                  # SIGTERM to exit (shutdown_grace is 30 s)
T_TEST=${T_TEST:-5400}                # make test
PORT=2525
MIN_FREE_GB=${MIN_FREE_GB:-}

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --clean) CLEAN=1 ;;
    --no-test) RUN_TEST=0 ;;
    --dir) DIR=$2; shift ;;
    --mirror) MIRROR=$2; shift ;;
    --repo) REPO=$(cd "$2" && pwd) || exit 2; shift ;;
    --overlay) OVERLAY+=("$2"); shift ;;
    -h|--help) usage 0 ;;
    *) echo "fresh-debian-check: unknown argument $1" >&2; usage 2 >&2 ;;
  esac
  shift
done

ROOT=$DIR/root                  # the chroot
CACHE=$DIR/$SUITE-minbase.tar   # the pristine debootstrap, unpacked anew every run
LOGS=$DIR/logs                  # make-run.log, make-test.log of the last run
SRC=/root/postern               # where the clone is, inside the chroot
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# ---- steps and the summary ------------------------------------------------
S_NAME=() S_RES=() S_TIME=() S_NOTE=()
T_ALL=$EPOCHREALTIME
secs() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
begin() { CUR=$1; T0=$EPOCHREALTIME; STEP_OPEN=1; echo; echo "==== [$(date +%T)] $CUR"; }
end() {  # end PASS|FAIL|SKIP [note]
  local dt; dt=$(secs "$T0"); STEP_OPEN=0
  S_NAME+=("$CUR"); S_RES+=("$1"); S_TIME+=("$dt"); S_NOTE+=("${2:-}")
  echo "==== $CUR: $1 (${dt}s)${2:+ - $2}"
  [ "$1" != FAIL ]
}
skip() { S_NAME+=("$1"); S_RES+=(SKIP); S_TIME+=("-"); S_NOTE+=("${2:-}"); echo; echo "==== $1: SKIP${2:+ - $2}"; }

summary() {
  local i overall=PASS
  SUMMARIZED=1
  echo
  echo "================ fresh-debian-check summary ================"
  echo "repository: $REPO at ${COMMIT:-?}"
  echo "chroot:     $ROOT (debootstrap --variant=minbase $SUITE, $MIRROR)"
  for i in "${!S_NAME[@]}"; do
    printf '%-4s %8ss  %s\n' "${S_RES[$i]}" "${S_TIME[$i]}" "${S_NAME[$i]}"
    [ -n "${S_NOTE[$i]}" ] && printf '               %s\n' "${S_NOTE[$i]}"
    [ "${S_RES[$i]}" = FAIL ] && overall=FAIL
  done
  [ ${#S_NAME[@]} -eq 0 ] && overall=FAIL
  echo "------------------------------------------------------------"
  echo "$overall  (total $(secs "$T_ALL")s)"
  [ $overall = PASS ]
}

# ---- the chroot -----------------------------------------------------------
in_chroot() {  # in_chroot 'shell command': as root, a clean login-like environment
  chroot "$ROOT" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash \
    TERM=dumb PATH="$CHROOT_PATH" ${EXTRA_ENV:-} /bin/bash -c "$1"
}

# bounded SECONDS CMD...: CMD under timeout(1), run in the background and
# waited for, so that a signal to this script is acted on at once instead of
# when CMD ends; timeout makes CMD its own process group, which cleanup stops.
FG_PID=""
bounded() {
  local rc
  timeout -k 30 "$@" &
  FG_PID=$!
  wait $FG_PID; rc=$?
  FG_PID=""
  return $rc
}

chroot_pids() {  # every process whose root is the chroot
  find /proc -mindepth 2 -maxdepth 2 -name root -printf '%h %l\n' 2>/dev/null |
    awk -v r="$ROOT" '$2 == r { sub("^/proc/", "", $1); print $1 }'
}

mounts_under() {  # mount points under the chroot, deepest first
  awk -v r="$ROOT/" 'index($2, r) == 1 { print length($2), $2 }' /proc/mounts | sort -rn | cut -d' ' -f2-
}

cleanup() {
  local pids m i sig=TERM
  [ "$HAVE_LOCK" = 1 ] && [ -d "$ROOT" ] || return 0   # only the run that holds the lock
  if [ -n "$FG_PID" ] && kill -0 "$FG_PID" 2>/dev/null; then
    echo "fresh-debian-check: stopping the step's process group $FG_PID"
    kill -TERM "$FG_PID" 2>/dev/null               # timeout passes it on to its group
    for i in $(seq 1 20); do kill -0 -- -"$FG_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- -"$FG_PID" 2>/dev/null
  fi
  # TERM for 10 s (what is stopped may start others meanwhile), then KILL.
  for i in $(seq 1 40); do
    pids=$(chroot_pids)
    [ -z "$pids" ] && break
    [ $i = 21 ] && sig=KILL
    [ $i = 1 ] || [ $i = 21 ] && echo "fresh-debian-check: $sig to what still runs in the chroot: $(echo $pids)"
    kill -$sig $pids 2>/dev/null
    sleep 0.5
  done
  for m in $(mounts_under); do
    umount "$m" 2>/dev/null || umount -l "$m" || echo "fresh-debian-check: could not unmount $m" >&2
  done
}
on_exit() {  # stopped early (a signal, an error): the summary all the same
  local rc=$?
  exec 1>&5 2>&6                          # not into the log of the step it stopped
  cleanup
  if [ "$SUMMARIZED" = 0 ]; then
    [ "$STEP_OPEN" = 1 ] && end FAIL "interrupted (exit status $rc)"
    summary
    [ $rc -eq 0 ] && rc=1
  fi
  exit $rc
}
SUMMARIZED=0 STEP_OPEN=0 HAVE_LOCK=0
exec 5>&1 6>&2
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mount_chroot() {
  local d
  for d in /proc /sys /dev /dev/pts /dev/shm; do
    [ "$d" = /dev/shm ] && ! mountpoint -q /dev/shm && continue   # only where the host has one
    mkdir -p "$ROOT$d"
    mount --bind "$d" "$ROOT$d" || return 1
  done
}

# The lines of README's "## The two commands" block that are not `make run` or
# `make test`: what a new user types before them.
readme_setup() {  # readme_setup README.md
  awk '/^## The two commands/ { s = 1; next }
       s && /^## /           { exit }
       s && /^```/           { if (b) exit; b = 1; next }
       s && b                { sub(/[ \t]+#.*$/, ""); if ($0 !~ /^[ \t]*(make (run|test))?[ \t]*$/) print }' \
    "$1"
}

# Sockets listening on 127.0.0.1:PORT or 0.0.0.0:PORT (their inodes).
listen_inodes() {
  awk -v p=":$(printf '%04X' "$1")" \
    'NR > 1 && $4 == "0A" && ($2 == "0100007F" p || $2 == "00000000" p) { print $10 }' /proc/net/tcp
}

# The chroot's postern that holds a listener on PORT, if there is one.
chroot_listener_pid() {
  local inodes p
  inodes=$(listen_inodes $PORT | sed 's/.*/socket:[&]/')
  [ -n "$inodes" ] || return 1
  for p in $(chroot_pids); do
    [ "$(cat /proc/$p/comm 2>/dev/null)" = postern ] || continue
    find /proc/$p/fd -mindepth 1 -printf '%l\n' 2>/dev/null | grep -qxF "$inodes" && { echo "$p"; return 0; }
  done
  return 1
}

# ---- preflight ------------------------------------------------------------
begin "preflight (host)"
pre_fail=""
[ "$(id -u)" -eq 0 ] || pre_fail="must run as root (debootstrap, chroot, mount)"
[ -z "$pre_fail" ] && ! command -v git >/dev/null && pre_fail="git is needed on the host to clone $REPO"
[ -z "$pre_fail" ] && ! command -v apt-get >/dev/null && pre_fail="a Debian host is needed (apt-get)"
if [ -z "$pre_fail" ]; then
  COMMIT=$(git -C "$REPO" rev-parse HEAD 2>/dev/null) || pre_fail="$REPO is not a git repository with a commit"
fi
if [ -z "$pre_fail" ] && [ -n "$(listen_inodes $PORT)" ]; then
  pre_fail="127.0.0.1:$PORT is already listened on on this host (another make run?); the chroot shares the host's network"
fi
if [ -z "$pre_fail" ]; then
  mkdir -p "$DIR" "$LOGS"
  : "${MIN_FREE_GB:=$([ $RUN_TEST = 1 ] && echo 35 || echo 5)}"
  free_gb=$(df -P -k "$DIR" | awk 'NR == 2 { printf "%d", $4 / 1048576 }')
  [ "$free_gb" -lt "$MIN_FREE_GB" ] &&
    pre_fail="$free_gb GB free in $DIR, $MIN_FREE_GB wanted (make test fills the chroot's /tmp; MIN_FREE_GB= to change)"
fi
if [ -z "$pre_fail" ]; then
  exec 9>"$DIR/lock"
  if flock -n 9; then HAVE_LOCK=1; else pre_fail="another fresh-debian-check is running ($DIR/lock)"; fi
fi
if [ -n "$pre_fail" ]; then end FAIL "$pre_fail"; summary; exit 1; fi
echo "repository $REPO, HEAD $COMMIT"
end PASS "HEAD ${COMMIT:0:12}; $free_gb GB free in $DIR"

# ---- the chroot: a fresh minbase bookworm -----------------------------------
cleanup                                   # what an interrupted run may have left mounted
if [ -n "$(mounts_under)" ]; then
  begin "chroot"; end FAIL "mounts left under $ROOT that could not be unmounted"; summary; exit 1
fi
rm -rf --one-file-system "$ROOT"
[ $CLEAN = 1 ] && rm -f "$CACHE"

if [ -s "$CACHE" ]; then
  begin "chroot: unpack cached debootstrap ($CACHE)"
  mkdir -p "$ROOT" && tar -C "$ROOT" --numeric-owner -xpf "$CACHE"
  end $([ $? -eq 0 ] && echo PASS || echo FAIL) "cache from $(date -r "$CACHE" '+%F %T'); --clean to debootstrap again" \
    || { summary; exit 1; }
else
  begin "host: debootstrap installed"
  if command -v debootstrap >/dev/null; then
    end PASS "already there"
  else
    export DEBIAN_FRONTEND=noninteractive
    bounded "$T_DEBOOTSTRAP" bash -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap' \
      && command -v debootstrap >/dev/null
    end $([ $? -eq 0 ] && echo PASS || echo FAIL) "apt-get install debootstrap" || { summary; exit 1; }
  fi
  begin "chroot: debootstrap --variant=minbase $SUITE"
  bounded "$T_DEBOOTSTRAP" debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$LOGS/debootstrap.log" 2>&1
  rc=$?
  tail -3 "$LOGS/debootstrap.log"
  if [ $rc -eq 0 ]; then
    tar -C "$ROOT" --numeric-owner -cpf "$CACHE.tmp" . && mv "$CACHE.tmp" "$CACHE"
    end PASS "cached as $CACHE"
  else
    tail -30 "$LOGS/debootstrap.log"
    end FAIL "debootstrap exited $rc, $LOGS/debootstrap.log"; summary; exit 1
  fi
fi

begin "chroot: mounts, policy-rc.d, resolv.conf"
note=""
mount_chroot || note="bind mount failed"
# What a real machine has and a bare chroot does not: working DNS (the host's),
# and no daemons started by package scripts (they would run on the host's network).
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" || note="${note:+$note; }no resolv.conf"
printf '#!/bin/sh\n# fresh-debian-check: package scripts start no daemon in this chroot\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
# debootstrap leaves the Packages list it installed from; a fresh minimal
# system (Debian's container images, built by debootstrap too) has none, so
# the first apt-get install needs an apt-get update: have none here either.
find "$ROOT/var/lib/apt/lists" -maxdepth 1 -type f ! -name lock -delete
for t in make git; do in_chroot "command -v $t" >/dev/null && { echo "note: $t is already in the chroot"; note="$t already there"; }; done
echo "apt lists in the chroot: $(find "$ROOT/var/lib/apt/lists" -maxdepth 1 -type f -name '*_Packages*' | wc -l) Packages files"
end $([ -z "$note" ] && echo PASS || echo FAIL) "$note" || { summary; exit 1; }

begin "clean clone of HEAD into the chroot ($SRC)"
git clone --quiet --no-hardlinks "$REPO" "$ROOT$SRC"
rc=$?
# What is tested is what the clone holds (HEAD may have moved on since the preflight).
[ $rc -eq 0 ] && COMMIT=$(git -C "$ROOT$SRC" rev-parse HEAD)
note="$(git -C "$ROOT$SRC" log -1 --format='%h %s' 2>/dev/null | cut -c1-60)"
for f in "${OVERLAY[@]}"; do
  if [ $rc -eq 0 ] && cp "$REPO/$f" "$ROOT$SRC/$f"; then
    echo "overlay: the work tree's $f over the clone"; note="$note; + work tree's $f"
  else rc=1
  fi
done
end $([ $rc -eq 0 ] && echo PASS || echo FAIL) "$note" || { summary; exit 1; }

SETUP=$(readme_setup "$ROOT$SRC/README.md")
echo "README set-up line(s):"; printf '    %s\n' "$SETUP"
if [ -z "$SETUP" ]; then
  begin "README set-up"; end FAIL "no set-up line before make run in README's '## The two commands'"; summary; exit 1
fi

# ---- README's set-up line(s), exactly as written ----------------------------
begin "README set-up: $(echo "$SETUP" | paste -sd';')"
setup_ok=1
while IFS= read -r line; do
  echo "chroot# $line"
  bounded "$T_SETUP" chroot "$ROOT" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash \
    TERM=dumb PATH="$CHROOT_PATH" /bin/bash -c "cd $SRC && $line" </dev/null
  rc=$?
  [ $rc -eq 0 ] || { echo "exit status $rc"; setup_ok=0; break; }
done <<<"$SETUP"
[ $setup_ok = 1 ] && { in_chroot "command -v make" >/dev/null || { echo "make is still not there"; setup_ok=0; }; }
end $([ $setup_ok = 1 ] && echo PASS || echo FAIL) "$(in_chroot 'make --version 2>/dev/null | head -1')" \
  || { summary; exit 1; }

# ---- make run ---------------------------------------------------------------
run_ok=0
begin "make run: 127.0.0.1:$PORT listening (install-deps + build, <= ${T_RUN}s)"
if [ -n "$(listen_inodes $PORT)" ]; then
  end FAIL "127.0.0.1:$PORT is taken on the host by something else"
else
  in_chroot "cd $SRC && exec make run" </dev/null >"$LOGS/make-run.log" 2>&1 &
  MAKE_PID=$!
  deadline=$((SECONDS + T_RUN)); POSTERN_PID=""
  while [ $SECONDS -lt $deadline ]; do
    POSTERN_PID=$(chroot_listener_pid) && break
    kill -0 $MAKE_PID 2>/dev/null || break
    sleep 1
  done
  if [ -n "$POSTERN_PID" ]; then
    run_ok=1
    end PASS "postern pid $POSTERN_PID; log $LOGS/make-run.log"
  elif kill -0 $MAKE_PID 2>/dev/null; then
    tail -40 "$LOGS/make-run.log"
    end FAIL "not listening after ${T_RUN}s"
  else
    wait $MAKE_PID; rc=$?
    tail -40 "$LOGS/make-run.log"
    end FAIL "make run exited $rc before listening"
  fi
fi

if [ $run_ok = 1 ]; then
  begin "swaks: one message, 250 after DATA"
  bounded "$T_SWAKS" chroot "$ROOT" /usr/bin/env -i PATH="$CHROOT_PATH" HOME=/root \
    swaks --server 127.0.0.1:$PORT --from a@b.example --to x@corp.example </dev/null >"$LOGS/swaks.log" 2>&1
  rc=$?
  cat "$LOGS/swaks.log"
  # The reply to the lone "." that ends DATA.
  reply=$(awk 'after { print; exit } /^ -> \.$/ { after = 1 }' "$LOGS/swaks.log")
  if [ $rc -eq 0 ] && [[ "$reply" == "<-  250"* ]]; then
    end PASS "${reply#<-  }"
  else
    end FAIL "swaks exit $rc, reply to DATA: ${reply:-none}"; run_ok=0
  fi
fi

if [ $run_ok = 1 ]; then
  begin "a file arrived in var/drop/ (<= ${T_DROP}s)"
  deadline=$((SECONDS + T_DROP)); f=""
  while [ $SECONDS -lt $deadline ]; do
    f=$(find "$ROOT$SRC/var/drop" -maxdepth 1 -type f -name '*.eml' 2>/dev/null | head -1)
    [ -n "$f" ] && break
    sleep 0.5
  done
  if [ -n "$f" ]; then
    ls -l "$ROOT$SRC/var/drop"; grep -m3 -E '^X-(Sender|Receiver):' "$f"
    grep -qi '^X-Receiver: *<\?x@corp.example' "$f" && end PASS "var/drop/$(basename "$f")" \
      || end FAIL "$(basename "$f") has no X-Receiver: x@corp.example"
  else
    ls -la "$ROOT$SRC/var/drop" 2>&1
    end FAIL "nothing in var/drop/ after ${T_DROP}s"
  fi
fi

if [ -n "${MAKE_PID:-}" ]; then
  begin "SIGTERM: postern exits 0 (<= ${T_STOP}s)"
  [ -n "${POSTERN_PID:-}" ] && kill -TERM "$POSTERN_PID" 2>/dev/null
  deadline=$((SECONDS + T_STOP))
  while kill -0 $MAKE_PID 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
  if kill -0 $MAKE_PID 2>/dev/null; then
    for p in $(chroot_pids); do kill -KILL "$p" 2>/dev/null; done
    wait $MAKE_PID 2>/dev/null
    end FAIL "still running ${T_STOP}s after SIGTERM"
  else
    # make run's exit status is postern's: 0 only when postern exited 0.
    wait $MAKE_PID; rc=$?
    echo "---- make run output ($LOGS/make-run.log):"; cat "$LOGS/make-run.log"; echo "----"
    if [ -z "${POSTERN_PID:-}" ]; then end SKIP "postern never listened"
    elif [ $rc -eq 0 ]; then end PASS "make run exited 0"
    else end FAIL "make run exited $rc"
    fi
  fi
fi

# ---- make test --------------------------------------------------------------
if [ $RUN_TEST = 0 ]; then
  skip "make test" "--no-test"
else
  begin "make test (<= ${T_TEST}s)"
  EXTRA_ENV="PYTEST_ADDOPTS=-rfEs"
  bounded "$T_TEST" chroot "$ROOT" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash \
    TERM=dumb PATH="$CHROOT_PATH" $EXTRA_ENV /bin/bash -c "cd $SRC && make test" </dev/null > >(tee "$LOGS/make-test.log") 2>&1
  rc=$?
  wait $! 2>/dev/null                     # tee has written everything
  # ctest shows a passing test's output only in its LastTest.log: the pytest
  # counts and the reason of every skipped test are read from there.
  results="" skipped="" failed=""
  for b in build build-asan; do
    l="$ROOT$SRC/$b/Testing/Temporary/LastTest.log"
    [ -f "$l" ] || continue
    ct=$(grep -E '^[0-9]+% tests passed' "$LOGS/make-test.log" | sed -n "$([ $b = build ] && echo 1 || echo 2)p" | awk '{ print $NF - $4 "/" $NF " passed" }')
    py=$(grep -E '^=* *[0-9]+ (passed|failed|skipped|errors?)\b' "$l" | sed 's/=//g; s/^ *//; s/ in [0-9.]*s.*$//' | paste -sd'+')
    results="${results:+$results; }$b: ctest ${ct:-?}, pytest (integration_1,_2 + integration_epoll_1,_2) ${py:-?}"
    skipped+=$(grep -E '^SKIPPED' "$l" | sed "s|^|    $b: |")
    failed+=$(grep -E '^FAILED ' "$l" | sed "s|^FAILED \(\.\./\)*tests/integration/||; s| - .*||; s|^|$b:|; s|\$|, |" | tr -d '\n')
  done
  [ -n "$skipped" ] && { echo "skipped tests:"; echo "$skipped"; }
  nskip=$(printf '%s' "$skipped" | grep -c SKIPPED)
  # pytest keeps its last three base directories (/tmp/pytest-of-root): many
  # gigabytes of spools. Say how much, and give the disk back.
  left=$(du -xsh "$ROOT/tmp/pytest-of-root" 2>/dev/null | cut -f1)
  [ -n "$left" ] && { echo "make test left $left in /tmp/pytest-of-root: removed"; left="; left $left in /tmp/pytest-of-root"; }
  rm -rf --one-file-system "$ROOT/tmp/pytest-of-root"
  if [ $rc -eq 0 ]; then end PASS "$results; $nskip skipped$left"
  elif [ $rc -eq 124 ]; then end FAIL "timed out after ${T_TEST}s${results:+; $results}$left"
  else end FAIL "exit $rc${results:+; $results}${failed:+; failed: ${failed%, }}$left"
  fi
fi

summary
