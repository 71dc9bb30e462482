#!/usr/bin/env bash
# Idempotent machine set-up for blockgate: installs the Debian packages that the daemon,
# the tests (--test) and the benchmark (--bench) need. Safe to run again; does nothing when
# everything is present. Needs root (or sudo) only when something is missing.
set -euo pipefail
mode="${1:---runtime}"
runtime=(fuse3 libfuse2 e2fsprogs util-linux mount)
testing=(qemu-utils libnbd-bin python3-libnbd nbdkit fio gdisk xfsprogs parted openssl curl python3-cinderclient python3-openstackclient)  # libnbd-bin also provides nbdfuse
bench=(restic borgbackup time)
kafka=(gcc libc6-dev librdkafka-dev kcat)  # tools/kafka: the test broker (librdkafka's mock cluster)
ceph=(ceph ceph-mon ceph-osd ceph-mgr radosgw ceph-common python3-rados python3-rbd)
pkgs=("${runtime[@]}")
case "$mode" in
  --runtime) ;;
  --test) pkgs+=("${testing[@]}" "${kafka[@]}" "${ceph[@]}") ;;
  --bench) pkgs+=("${testing[@]}" "${bench[@]}" "${kafka[@]}" "${ceph[@]}") ;;
  --all) pkgs+=("${testing[@]}" "${bench[@]}" "${kafka[@]}" "${ceph[@]}") ;;
  *) echo "usage: tools/setup.sh [--runtime|--test|--bench|--all]" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
