#!/usr/bin/env bash
# A Kafka-protocol broker for blockgate's tests and benchmarks: librdkafka's mock cluster
# (kafka-mock.c) as a stand-alone process on 127.0.0.1. Debian ships no Apache Kafka, but the
# mock cluster speaks the real wire protocol, so node-rdkafka talks to it as to any broker.
#
#   tools/kafka/kafka.sh build              gcc kafka-mock.c -> $KAFKA_MOCK_BIN (needs librdkafka-dev: tools/setup.sh --test)
#   tools/kafka/kafka.sh up DIR [BROKERS]   start it with its state in DIR (made 0700), wait until it answers
#                                           a Metadata request, print "export KAFKA_BROKERS=host:port,..."
#   tools/kafka/kafka.sh down DIR           SIGTERM the broker that "up" started in DIR (by its pid, only if it
#                                           still is kafka-mock), then remove DIR
#
# Env: KAFKA_MOCK_PORT (base port, default 0 = free ports; a fixed port survives a restart),
#      KAFKA_MOCK_TOPICS ("name:partitions ..." created at start), KAFKA_MOCK_BIN (the binary,
#      default .cache/kafka-mock/kafka-mock under the checkout).
# Limits (librdkafka's mock): memory only (a restart is empty), ~5 MiB kept per partition, no
# admin API, first consumer-group join ~3 s (session.timeout.ms=4000, heartbeat.interval.ms=1000).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${KAFKA_MOCK_BIN:-$root/.cache/kafka-mock/kafka-mock}
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${s#Z}" = "$s" ]; }
ours() { alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "kafka-mock"; }

build() {
  if [ -x "$bin" ] && [ "$bin" -nt "$here/kafka-mock.c" ]; then return 0; fi
  mkdir -p "$(dirname "$bin")"
  gcc -O2 -Wall -o "$bin.tmp.$$" "$here/kafka-mock.c" -lrdkafka
  mv "$bin.tmp.$$" "$bin"
}

case "${1:-}" in
build)
  build
  echo "built $bin" >&2
  ;;
up)
  [ $# -ge 2 ] || { echo "usage: kafka.sh up DIR [BROKERS]" >&2; exit 2; }
  dir=$2; brokers=${3:-1}
  build
  mkdir -p "$dir"; chmod 700 "$dir"
  if [ -s "$dir/kafka-mock.pid" ] && ours "$(cat "$dir/kafka-mock.pid")"; then
    echo "export KAFKA_BROKERS=$(cat "$dir/bootstrap.txt")"; exit 0
  fi
  rm -f "$dir/bootstrap.txt"
  args=()
  if [ "${KAFKA_MOCK_PORT:-0}" != 0 ]; then args+=(-p "$KAFKA_MOCK_PORT"); fi
  for t in ${KAFKA_MOCK_TOPICS:-}; do args+=(-t "$t"); done
  "$bin" "${args[@]}" "$brokers" "$dir/bootstrap.txt" >/dev/null 2>"$dir/kafka-mock.log" </dev/null &
  pid=$!
  echo "$pid" >"$dir/kafka-mock.pid"
  for _ in $(seq 1 200); do
    [ -s "$dir/bootstrap.txt" ] && break
    alive "$pid" || { echo "kafka-mock failed to start:" >&2; cat "$dir/kafka-mock.log" >&2; exit 1; }
    sleep 0.05
  done
  [ -s "$dir/bootstrap.txt" ] || { kill -TERM "$pid" 2>/dev/null || true; echo "kafka-mock did not start" >&2; exit 1; }
  # over the wire, as a client sees it
  if command -v kcat >/dev/null; then kcat -L -b "$(cat "$dir/bootstrap.txt")" -m 5 >/dev/null; fi
  echo "export KAFKA_BROKERS=$(cat "$dir/bootstrap.txt")"
  ;;
down)
  [ $# -eq 2 ] || { echo "usage: kafka.sh down DIR" >&2; exit 2; }
  dir=$2
  [ -d "$dir" ] || exit 0
  if [ -s "$dir/kafka-mock.pid" ]; then
    pid=$(cat "$dir/kafka-mock.pid")
    if ours "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
    fi
  fi
  rm -f "$dir/kafka-mock.pid" "$dir/bootstrap.txt" "$dir/kafka-mock.log"
  rmdir "$dir" 2>/dev/null || true
  ;;
*)
  echo "usage: tools/kafka/kafka.sh build | up DIR [BROKERS] | down DIR" >&2; exit 2 ;;
esac
