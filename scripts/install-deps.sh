#!/usr/bin/env bash
# Installs the Debian packages Postern builds, tests and benchmarks with, when
# they are missing. Safe to run repeatedly; does nothing when all are present.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config
  liburing-dev libjemalloc-dev android-libboringssl-dev libhyperscan-dev
  libconfig-dev libc-ares-dev libcmocka-dev
  # libFuzzer and the ASan/UBSan runtimes live in libclang-rt-14-dev, which
  # clang only recommends (and recommends are not installed here).
  clang libclang-rt-dev
  python3 python3-pytest python3-seccomp swaks libnet-ssleay-perl libio-socket-ssl-perl
  postfix socat dnsmasq-base openssl haproxy python3-yaml systemd
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Postfix is only a peer (smtp-source/smtp-sink) and the benchmark baseline:
# install it unconfigured so it never starts a system MTA.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
