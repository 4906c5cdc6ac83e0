#!/usr/bin/env bash
# Installs the Debian programs the tests and benchmarks drive from the Linux side (a load tool, a SOCKS wrapper, a
# capture tool, an HTTP client), when running as root and they are missing. Without root it does nothing: the tests that need them skip and say so
# (or fail under TCPCHIMNEY_REQUIRE_NET=1).
set -euo pipefail
want=(ab:apache2-utils wrk:wrk proxychains4:proxychains4 tcpdump:tcpdump curl:curl tshark:tshark)
missing=()
for pair in "${want[@]}"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "tools: not installing ${missing[*]} (needs root and apt-get); the tests that drive them will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "tools: installed ${missing[*]}" >&2
