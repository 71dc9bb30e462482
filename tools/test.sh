#!/usr/bin/env bash
# The test command (`npm test`): sets up what the tests need on this machine (Debian
# packages, npm modules, a throw-away Ceph cluster with radosgw), builds, runs every ava
# suite, and ends with one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bash tools/setup.sh --test || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }
# (a node_modules that is a symlink is shared with another checkout: never wiped from here)
if [ ! -d node_modules ] || { [ ! -L node_modules ] && [ package-lock.json -nt node_modules/.package-lock.json ]; }; then
  npm ci --no-audit --no-fund || { echo "npm ci failed"; echo "0 passed, 1 failed"; exit 1; }
fi
npm run build --silent || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }

cleanup() {
  if [ -n "${BG_KAFKA_DIR:-}" ]; then bash "$root/tools/kafka/kafka.sh" down "$BG_KAFKA_DIR" >/dev/null 2>&1 || true; fi
  if [ -n "${BG_CEPH_DIR:-}" ]; then
    bash "$root/tools/ceph/ceph-down.sh" "$BG_CEPH_DIR" >/dev/null 2>&1 || true
    rm -f "$BG_CEPH_DIR.log"
  fi
}
trap cleanup EXIT INT TERM

# one Ceph cluster (RBD + S3) for every suite that needs it
if [ -x tools/ceph/ceph-up.sh ] && [ -z "${CEPH_CONF:-}" ]; then
  BG_CEPH_DIR=$(mktemp -d /tmp/blockgate-ceph.XXXXXX)
  if out=$(bash tools/ceph/ceph-up.sh "$BG_CEPH_DIR" 2>"$BG_CEPH_DIR.log"); then
    eval "$out"
  else
    echo "ceph failed to start (log: $BG_CEPH_DIR.log):"; tail -20 "$BG_CEPH_DIR.log"
    [ "${CI:-}" = true ] && { echo "0 passed, 1 failed"; exit 1; }
  fi
fi

files=("$@")
[ ${#files[@]} -gt 0 ] || files=(dist/test/*.test.js)

# one Kafka-protocol broker (tools/kafka: librdkafka's mock cluster) for the events and nodes suites
if [ -z "${KAFKA_BROKERS:-}" ] && printf '%s\n' "${files[@]}" | grep -qE '(events|nodes)-[^/]*$'; then
  BG_KAFKA_DIR=$(mktemp -d /tmp/blockgate-kafka.XXXXXX)
  if out=$(bash tools/kafka/kafka.sh up "$BG_KAFKA_DIR" 2>&1); then
    eval "$out"; export KAFKA_BROKERS
  else
    echo "kafka broker failed to start:"; echo "$out"
    [ "${CI:-}" = true ] && { echo "0 passed, 1 failed"; exit 1; }
  fi
fi
tap=$(mktemp)
npx ava --tap "${files[@]}" 2>&1 | tee "$tap"
status=${PIPESTATUS[0]}
passed=$(grep -cE '^ok [0-9]+' "$tap" || true)
failed=$(grep -cE '^not ok [0-9]+' "$tap" || true)
rm -f "$tap"
# a crashed runner that reported nothing is a failure, never a green run
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
exit "$status"
