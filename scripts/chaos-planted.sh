#!/usr/bin/env bash
# Proves the chaos suite catches a real bug: builds medpool with a fault planted on purpose (cargo
# feature `planted-fault-skip-lease`, debug builds only: a granted lease lasts an hour, so a frozen
# node that wakes still believes it may act) into target/planted, runs the `sigstop` scenario against
# it, and expects the run to FAIL with `single-actor-per-shard` VIOLATED and the seed printed.
# Exit 0 when the planted fault was caught, 1 when it was not. Extra arguments go to medpool-chaos
# (e.g. --seed 0x1234 to replay).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p medpool --features planted-fault-skip-lease --target-dir target/planted
cargo build -p medpool-chaos-tests --bin medpool-chaos
out=target/planted/chaos-summary.txt
set +e
MEDPOOL_BIN="$PWD/target/planted/debug/medpool" target/debug/medpool-chaos \
  --scenario sigstop --rounds 1 --net 76 "$@" | tee "$out"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ] && grep -Eq '^single-actor-per-shard +VIOLATED' "$out" && grep -q 'seed 0x' "$out"; then
  echo "planted fault caught: single-actor-per-shard violated, seed printed (summary in $out)"
  exit 0
fi
echo "the planted fault was NOT caught (exit $status; summary in $out)"
exit 1
