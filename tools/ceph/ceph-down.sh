#!/usr/bin/env bash
# tools/ceph/ceph-down.sh DIR — stop the cluster that tools/ceph/ceph-up.sh started in DIR and
# remove DIR. Only the processes named by DIR/run/*.pid are signalled, and only while their
# command line still mentions a ceph daemon and their environment/config points at DIR (a
# recycled pid is left alone). CEPH_DOWN_KEEP=1 stops the daemons but keeps DIR (logs).
set -uo pipefail

[ $# -eq 1 ] || { echo "usage: ceph-down.sh DIR" >&2; exit 2; }
DIR="$1"
[[ "$DIR" = /* ]] || DIR="$PWD/$DIR"
DIR="${DIR%/}"
[ -n "$DIR" ] && [ "$DIR" != / ] || { echo "ceph-down: refusing to touch /" >&2; exit 2; }
if [ ! -e "$DIR" ]; then echo "ceph-down: $DIR does not exist; nothing to stop" >&2; exit 0; fi
if [ ! -e "$DIR/.blockgate-ceph" ]; then
  echo "ceph-down: $DIR was not made by tools/ceph/ceph-up.sh (no .blockgate-ceph mark); not touching it" >&2
  exit 1
fi

# true while PID is alive and is one of our daemons: a ceph binary whose environment has
# CEPH_CONF=DIR/ceph.conf (ceph-up.sh exports it before starting anything)
is_ours() {
  local pid=$1 exe
  [ -d "/proc/$pid" ] || return 1
  exe="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$exe" =~ (^|/)(ceph-mon|ceph-mgr|ceph-osd|radosgw)( |$) ]] || return 1
  tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qxF "CEPH_CONF=$DIR/ceph.conf"
}

stopped=()
# radosgw and the OSD first, while the monitor can still hear their goodbyes
for name in client.rgw.a osd.0 mgr.x mon.a; do
  f="$DIR/run/$name.pid"
  [ -s "$f" ] || continue
  pid="$(tr -cd '0-9' < "$f")"
  [ -n "$pid" ] || continue
  if is_ours "$pid"; then
    echo "ceph-down: stopping $name (pid $pid)" >&2
    kill -TERM "$pid" 2>/dev/null || true
    stopped+=("$pid")
    for _ in $(seq 30); do is_ours "$pid" || break; sleep 0.1; done
  fi
done
for pid in "${stopped[@]}"; do
  for _ in $(seq 100); do is_ours "$pid" || break; sleep 0.1; done
  if is_ours "$pid"; then
    echo "ceph-down: pid $pid ignored SIGTERM for 10 s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 20); do is_ours "$pid" || break; sleep 0.1; done
  fi
done

if [ "${CEPH_DOWN_KEEP:-0}" = 1 ]; then
  rm -f "$DIR"/run/*.pid
  echo "ceph-down: daemons stopped; kept $DIR" >&2
else
  rm -rf -- "$DIR"
  echo "ceph-down: removed $DIR" >&2
fi
