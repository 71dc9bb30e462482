#!/usr/bin/env bash
# tools/ceph/ceph-up.sh DIR — start a disposable one-node Ceph cluster for blockgate's tests.
#
#   eval "$(tools/ceph/ceph-up.sh /tmp/bg-ceph)"    # starts it and exports its settings
#   rbd create volumes/v1 --size 1G                  # CEPH_CONF points at DIR/ceph.conf
#   tools/ceph/ceph-down.sh /tmp/bg-ceph             # stops what this script started, removes DIR
#
# What it runs (Ceph 16.2 "pacific" from the Debian packages; no containers, no systemd,
# no cephx): one monitor, one manager, one OSD and one radosgw (S3), all on 127.0.0.1, every
# file (config, data, logs, pid files, sockets) inside DIR. Pools: CEPH_POOLS (rbd
# application). An S3 user with the key pair below.
#
# stdout carries nothing but `export NAME=value` lines (the same lines go to DIR/env.sh);
# progress and errors go to stderr. DIR must not exist, be empty, or hold a cluster made by
# this script (which is then stopped and replaced). On failure the daemons already started are stopped, their log tails
# are printed and DIR is kept for a post-mortem (remove it with ceph-down.sh).
#
# Settings (environment variables, all optional):
#   CEPH_MON_PORT      monitor msgr2 port        (default 3300)
#   CEPH_MON_V1_PORT   monitor legacy msgr1 port (default 6789)
#   CEPH_RGW_PORT      radosgw S3 port           (default 7480)
#                      (a port set here must be free; a default that is taken is replaced
#                      by a random free port, reported on stderr and in the exports)
#   CEPH_POOLS         RBD pools to create       (default "volumes backups")
#   CEPH_PG_NUM        placement groups per pool (default 8)
#   CEPH_OSD_STORE     bluestore | memstore      (default: bluestore, memstore when DIR is on tmpfs)
#   CEPH_OSD_SIZE      OSD capacity, e.g. 10G    (default 10G; a sparse file for bluestore)
#   CEPH_OSD_MEMORY    osd_memory_target bytes   (default 805306368 = 768 MiB)
#   CEPH_NO_RGW=1      no radosgw (RBD only; starts a few seconds faster)
#   CEPH_NO_INSTALL=1  never run apt-get; fail if a binary is missing
#   S3_USER / S3_ACCESS_KEY / S3_SECRET_KEY / S3_REGION   the S3 account to create
set -Eeuo pipefail

die() { echo "ceph-up: error: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: ceph-up.sh DIR"
DIR="$1"
[[ "$DIR" = /* ]] || DIR="$PWD/$DIR"
DIR="${DIR%/}"
[ -n "$DIR" ] && [ "$DIR" != / ] || die "refusing to use / as the cluster directory"
SELF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

MON_PORT="${CEPH_MON_PORT:-3300}"
MON_V1_PORT="${CEPH_MON_V1_PORT:-6789}"
RGW_PORT="${CEPH_RGW_PORT:-7480}"
POOLS="${CEPH_POOLS:-volumes backups}"
PG_NUM="${CEPH_PG_NUM:-8}"
OSD_SIZE="${CEPH_OSD_SIZE:-10G}"
OSD_MEMORY="${CEPH_OSD_MEMORY:-805306368}"
NO_RGW="${CEPH_NO_RGW:-0}"
S3_USER="${S3_USER:-blockgate-test}"
S3_ACCESS_KEY="${S3_ACCESS_KEY:-BLOCKGATETESTKEY0001}"
S3_SECRET_KEY="${S3_SECRET_KEY:-blockgate-test-secret-0123456789abcdefghij}"
S3_REGION="${S3_REGION:-us-east-1}"

is_port() { [[ "$1" =~ ^[0-9]+$ ]] && (( $1 > 0 && $1 < 65536 )); }
for p in "$MON_PORT" "$MON_V1_PORT" "$RGW_PORT"; do is_port "$p" || die "invalid port '$p'"; done
[[ "$PG_NUM" =~ ^[1-9][0-9]*$ ]] || die "invalid CEPH_PG_NUM '$PG_NUM'"
[[ "$OSD_SIZE" =~ ^[1-9][0-9]*[KMGT]?$ ]] || die "invalid CEPH_OSD_SIZE '$OSD_SIZE' (e.g. 10G)"
[[ "$OSD_MEMORY" =~ ^[1-9][0-9]*$ ]] || die "invalid CEPH_OSD_MEMORY '$OSD_MEMORY' (bytes)"
for v in "$S3_USER" "$S3_ACCESS_KEY" "$S3_SECRET_KEY" "$S3_REGION" $POOLS; do
  [[ "$v" =~ ^[A-Za-z0-9._+/=-]+$ ]] || die "invalid value '$v' (letters, digits and ._+/=- only)"
done

START=$SECONDS
say() { echo "[ceph-up +$(( SECONDS - START ))s] $*" >&2; }

# ------------------------------------------------------------------ packages (idempotent)
missing=0
for b in ceph ceph-mon ceph-mgr ceph-osd rbd rados radosgw radosgw-admin monmaptool ceph-authtool; do
  command -v "$b" >/dev/null 2>&1 || { missing=1; break; }
done
if [ "$missing" = 1 ]; then
  [ "${CEPH_NO_INSTALL:-0}" = 1 ] && die "Ceph binaries are missing and CEPH_NO_INSTALL=1"
  pkgs=(ceph-common ceph-mon ceph-mgr ceph-osd radosgw)
  SUDO=(); [ "$(id -u)" -eq 0 ] || SUDO=(sudo -n)
  say "installing ${pkgs[*]}"
  apt_get() { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@" >&2; }
  apt-cache show ceph-osd >/dev/null 2>&1 || apt_get update -qq
  apt_get install -y -qq --no-install-recommends "${pkgs[@]}" \
    || { apt_get update -qq && apt_get install -y -qq --no-install-recommends "${pkgs[@]}"; } \
    || die "could not install ${pkgs[*]}"
fi
say "$(ceph --version 2>/dev/null | cut -d' ' -f1-3)"

# ------------------------------------------------------------------ fresh directory
if [ -e "$DIR/.blockgate-ceph" ]; then
  say "replacing the cluster in $DIR"
  "$SELF_DIR/ceph-down.sh" "$DIR" >&2 || die "could not remove the previous cluster in $DIR"
elif [ -e "$DIR" ] && { [ ! -d "$DIR" ] || [ -n "$(ls -A "$DIR")" ]; }; then
  die "$DIR exists and is not an empty directory or a cluster made by this script"
fi

# ------------------------------------------------------------------ ports
# A port given explicitly must be free. A default port that is taken (another cluster on this
# machine) is replaced by a free one nearby; the exports and ceph.conf carry the real ports.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
taken=" "
pick_port() { # pick_port VAR DEFAULT EXPLICIT
  local var=$1 port=$2 explicit=$3 tries=0
  if [ -n "$explicit" ]; then
    port_in_use "$port" && die "127.0.0.1:$port ($var) is already in use"
  else
    while port_in_use "$port" || [[ "$taken" == *" $port "* ]]; do
      (( ++tries < 200 )) || die "no free port near ${2} for $var"
      port=$(( 20000 + RANDOM % 40000 ))
    done
    [ "$port" = "$2" ] || say "port $2 is taken; $var = $port"
  fi
  taken+="$port "
  printf -v "$var" '%s' "$port"
}
pick_port MON_PORT "$MON_PORT" "${CEPH_MON_PORT:-}"
pick_port MON_V1_PORT "$MON_V1_PORT" "${CEPH_MON_V1_PORT:-}"
[ "$NO_RGW" = 1 ] || pick_port RGW_PORT "$RGW_PORT" "${CEPH_RGW_PORT:-}"
mkdir -p "$DIR"/{run,log,mon,mgr,osd,rgw}
: > "$DIR/.blockgate-ceph"          # ceph-down.sh only removes directories carrying this mark

STORE="${CEPH_OSD_STORE:-}"
if [ -z "$STORE" ]; then
  # bluestore opens its block file with O_DIRECT, which tmpfs does not support
  if [ "$(stat -f -c %T "$DIR")" = tmpfs ]; then STORE=memstore; else STORE=bluestore; fi
fi

failed() {
  local rc=$?
  trap - ERR
  say "FAILED (exit $rc); stopping the daemons, keeping $DIR for inspection"
  local f
  for f in "$DIR"/log/*.log; do
    [ -s "$f" ] && { echo "----- tail of $f" >&2; tail -n 20 "$f" >&2; }
  done
  CEPH_DOWN_KEEP=1 "$SELF_DIR/ceph-down.sh" "$DIR" >&2 || true
  exit "$rc"
}
trap failed ERR

CONF="$DIR/ceph.conf"
export CEPH_CONF="$CONF"
FSID="$(cat /proc/sys/kernel/random/uuid)"
case "$STORE" in
  bluestore) store_conf="osd objectstore = bluestore
bluestore block create = true
bluestore block size = $OSD_SIZE
bluestore fsck on mkfs = false
bluestore fsck on mount = false" ;;
  memstore) store_conf="osd objectstore = memstore
memstore device bytes = $OSD_SIZE
memstore page set = true" ;;
  *) die "CEPH_OSD_STORE must be bluestore or memstore, not '$STORE'" ;;
esac

# Notes on the settings (learned the hard way):
# - auth "none" everywhere; radosgw has its own built-in client defaults (cephx, secure mon
#   mode) that must be overridden in its own section or it never gets past the monitor.
# - paxos propose interval 0.1 (default 1 s) makes every map change (pool create, OSD boot)
#   several times faster on a single monitor.
# - size-1 pools need "mon allow pool size one"; the warnings about it are silenced.
cat > "$CONF" <<EOF
# blockgate test cluster, written by tools/ceph/ceph-up.sh — do not edit
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_V1_PORT]
public network = 127.0.0.0/8
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
keyring = $DIR/keyring
run dir = $DIR/run
crash dir = $DIR/crash
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
mon cluster log file = $DIR/log/cluster.log
paxos propose interval = 0.1
mon allow pool delete = true
mon allow pool size one = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 1
mon data avail crit = 0
mon max pg per osd = 1000
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = $PG_NUM
osd pool default pgp num = $PG_NUM
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
# layering, exclusive-lock, object-map, fast-diff, deep-flatten
rbd default features = 61

[client]
# command line tools (rbd, ceph, radosgw-admin): no log files, no admin sockets
log file = /dev/null
admin socket =

[mon]
mon data = $DIR/mon

[mgr]
mgr data = $DIR/mgr

[osd]
osd data = $DIR/osd
osd memory target = $OSD_MEMORY
osd scrub begin hour = 0
osd scrub end hour = 0
$store_conf

[client.rgw.a]
log file = $DIR/log/\$name.log
admin socket = $DIR/run/\$name.asok
auth client required = none
ms mon client mode = crc
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw thread pool size = 32
rgw enable usage log = false
EOF

until_ok() { # until_ok SECONDS WHAT COMMAND... — poll every 0.3 s
  local limit=$(( SECONDS + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    (( SECONDS < limit )) || { say "timed out waiting for $what"; false; }
    sleep 0.3
  done
}
cephc() { timeout 30 ceph --connect-timeout 10 "$@"; }

# ------------------------------------------------------------------ monitor
say "monitor on 127.0.0.1:$MON_PORT (v2) and :$MON_V1_PORT (v1)"
# ceph-mon --mkfs wants a keyring even without cephx
CEPH_CONF=/dev/null ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_V1_PORT]" "$DIR/monmap" >/dev/null
ceph-mon -i a --mkfs --monmap "$DIR/monmap" --keyring "$DIR/keyring" 2>>"$DIR/log/mkfs.log"
ceph-mon -i a 2>>"$DIR/log/daemons.stderr.log"
until_ok 60 "the monitor" cephc mon stat

# ------------------------------------------------------------------ manager
ceph-mgr -i x 2>>"$DIR/log/daemons.stderr.log"

# ------------------------------------------------------------------ OSD
osd_uuid="$(cat /proc/sys/kernel/random/uuid)"
osd_id="$(cephc osd new "$osd_uuid")"
[ "$osd_id" = 0 ] || { say "expected osd id 0, got '$osd_id'"; false; }
say "osd.0 ($STORE, $OSD_SIZE)"
ceph-osd -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$DIR/log/mkfs.log" 2>&1
ceph-osd -i 0 >>"$DIR/log/daemons.stderr.log" 2>&1
osd_up() { cephc osd stat | grep -Eq '1 osds: 1 up.*1 in'; }
until_ok 120 "osd.0 to come up" osd_up

# ------------------------------------------------------------------ pools
for p in $POOLS; do cephc osd pool create "$p" "$PG_NUM" "$PG_NUM" >/dev/null 2>&1; done
for p in $POOLS; do timeout 120 rbd pool init "$p"; done
say "pools: $POOLS"

# ------------------------------------------------------------------ radosgw
S3_ENDPOINT="http://127.0.0.1:$RGW_PORT"
rgw_answers() { # any HTTP status line from GET / means the frontend and its pools are up
  local line
  exec 3<>"/dev/tcp/127.0.0.1/$RGW_PORT" || return 1
  printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  IFS= read -r -t 5 line <&3 || { exec 3<&-; return 1; }
  exec 3<&-
  [[ "$line" == HTTP/1.?\ [0-9][0-9][0-9]* ]]
}
if [ "$NO_RGW" != 1 ]; then
  radosgw -n client.rgw.a 2>>"$DIR/log/daemons.stderr.log"
  until_ok "${CEPH_RGW_TIMEOUT:-120}" "radosgw on $S3_ENDPOINT" rgw_answers
  timeout 60 radosgw-admin user create --uid="$S3_USER" --display-name="$S3_USER" \
    --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >/dev/null
  say "radosgw on $S3_ENDPOINT, user $S3_USER"
fi

# ------------------------------------------------------------------ settle
pgs_active() { # "N pgs: N active+clean; ..." — every PG active
  local out; out="$(cephc pg stat)" || return 1
  [[ "$out" =~ ^([0-9]+)\ pgs:\ ([0-9]+)\ active\+clean\; ]] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ] \
    && [ "${BASH_REMATCH[1]}" -gt 0 ]
}
until_ok 120 "all placement groups to be active+clean" pgs_active

{
  echo "export CEPH_CONF=$CONF"
  echo "export CEPH_DEV_DIR=$DIR"
  echo "export CEPH_POOLS=\"$POOLS\""
  if [ "$NO_RGW" != 1 ]; then
    echo "export S3_ENDPOINT=$S3_ENDPOINT"
    echo "export S3_REGION=$S3_REGION"
    echo "export S3_ACCESS_KEY=$S3_ACCESS_KEY"
    echo "export S3_SECRET_KEY=$S3_SECRET_KEY"
    echo "export AWS_ENDPOINT_URL=$S3_ENDPOINT"
    echo "export AWS_REGION=$S3_REGION"
    echo "export AWS_DEFAULT_REGION=$S3_REGION"
    echo "export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY"
    echo "export AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY"
  fi
} > "$DIR/env.sh"
cat "$DIR/env.sh"
trap - ERR
say "ready (pids: $(cat "$DIR"/run/*.pid 2>/dev/null | tr '\n' ' '))"
