#!/usr/bin/env bash
# The whole test suite, as README.md documents it. Installs what the tests need when it is missing
# (SIPp from Debian's sip-tester; baresip and linphone-cli for the real user agents; iproute2 and iptables for the chaos suite when root), then: formatting, clippy with warnings as errors, every test.
# Usage: scripts/test.sh            (CI calls exactly this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# The medpool binary links mimalloc, built from C by libmimalloc-sys (cc); its `jemalloc` feature needs make too.
command -v make >/dev/null 2>&1 || need+=(make)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
# node/medpool/tests/dns.rs: a real DNS server with NAPTR, SRV and A records (dnsmasq-base: the
# program only, without the system service the dnsmasq package would start on port 53).
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
# The front door's scanner test (node/medpool/tests/sipvicious.rs): svmap, svwar, svcrack.
command -v svmap >/dev/null 2>&1 || need+=(sipvicious)
# Real SIP user agents (node/medpool/tests/real_ua.rs): baresip and linphone's daemon.
command -v baresip >/dev/null 2>&1 || need+=(baresip)
# node/sip/tests/tls_door.rs: a TLS 1.1 client (openssl s_client -tls1_1) must be refused.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v linphone-daemon >/dev/null 2>&1 || need+=(linphone-cli)
# The chaos suite's network faults (a namespace of its own, iptables inside it) need root; without
# root it reports those scenarios NOT RUN.
if [ "$(id -u)" -eq 0 ]; then
    command -v ip >/dev/null 2>&1 || need+=(iproute2)
    command -v iptables >/dev/null 2>&1 || need+=(iptables)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "test.sh: installing ${need[*]} (needed by the end-to-end tests)"
    if [ "$(id -u)" -ne 0 ]; then
        echo "test.sh: not root; install ${need[*]} yourself (apt-get install -y ${need[*]})" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace --no-fail-fast -- --test-threads "${TEST_THREADS:-4}"
echo "== all tests passed"
