#!/usr/bin/env bash
# Puts Prometheus's promtool (from Debian's prometheus package) in
# build-tools/, without installing the package: installing it would start a
# Prometheus server. The integration tests check /metrics with it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build-tools/promtool ] && exit 0
command -v promtool >/dev/null && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
  echo "fetch-promtool: could not download Debian's prometheus package; /metrics will be checked without promtool" >&2
  exit 0
fi
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
mkdir -p build-tools
cp "$tmp/x/usr/bin/promtool" build-tools/promtool
