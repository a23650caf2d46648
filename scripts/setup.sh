#!/usr/bin/env bash
# NHAM machine setup: installs every system package the project needs and
# CRIU >= 4.2 (built from Debian's source tarball when missing).
#
# Idempotent: every step whose result is already present is skipped, so a
# re-run takes seconds. Must run as root (it calls apt-get and installs to
# /usr/local/sbin).
set -euo pipefail

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get, CRIU install, namespaces and XDP all need it)"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

CRIU_VERSION="4.2.1"
CRIU_DEB_VERSION="4.2.1-1"
CRIU_TARBALL="criu_${CRIU_VERSION}.orig.tar.xz"
CRIU_SHA256="29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9"
CRIU_MIN="4.2"

# Packages the project itself needs (build of the eBPF program and AF_XDP
# crates, gRPC code generation, namespaces, tshark for the dissection test,
# gdb for the stacks the HA harness prints when a recovery stalls,
# etcd-server for the lab of hosts' etcd cluster, prometheus for promtool,
# which checks the metrics a scrape returns and the alert rules; util-linux
# for setpriv, which starts VNFs with their user and capabilities; and for
# the package check: dpkg-dev (cargo-deb's dependency scan), binutils
# (readelf), systemd (systemd-analyze verify; not started) and man-db (which
# verify uses for the unit's Documentation= pages); iputils-ping for the
# test that ARP and ping reach the host through a chain's ingress.
PROJECT_PKGS=(clang llvm libbpf-dev libelf-dev zlib1g-dev m4 make pkg-config
  protobuf-compiler iproute2 tshark python3 xz-utils ca-certificates openssl gdb
  etcd-server prometheus util-linux dpkg-dev binutils systemd man-db
  fonts-dejavu-core iputils-ping)
# What building CRIU from source needs.
CRIU_BUILD_PKGS=(gcc make pkg-config libprotobuf-c-dev protobuf-c-compiler
  libprotobuf-dev protobuf-compiler libnl-3-dev libnet1-dev libcap-dev libaio-dev
  libgnutls28-dev libnftables-dev libbsd-dev uuid-dev python3-protobuf
  libdrm-dev asciidoc-base xmlto)

apt_updated=0
apt_install() {
  local missing=()
  local p
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    apt-get update -qq
    apt_updated=1
  fi
  log "installing: ${missing[*]}"
  # tshark asks whether non-root users may capture; answer no, non-interactively.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

version_ge() { # version_ge A B: A >= B
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

criu_ok() {
  command -v criu >/dev/null 2>&1 || return 1
  local v
  v="$(criu --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1)"
  [ -n "$v" ] && version_ge "$v" "$CRIU_MIN" || return 1
  criu check 2>&1 | grep -q "Looks good" || return 1
  kdat_cache_ok
}

# CRIU probes the kernel (~25 ms) on every run unless it can keep its cache
# (criu.kdat) on a tmpfs in its RUNDIR, /run by default. Where /run is no
# tmpfs (some containers and VMs), every dump and restore pays that again,
# so CRIU is built with RUNDIR=/dev/shm there.
criu_rundir() {
  if [ "$(stat -f -c %T /run 2>/dev/null)" = tmpfs ]; then echo /run; else echo /dev/shm; fi
}
kdat_cache_ok() {
  local dir
  dir="$(criu_rundir)"
  # A stale temporary file (a criu killed while writing) blocks the cache.
  [ -s "$dir/criu.kdat.tmp" ] || rm -f "$dir/criu.kdat.tmp"
  criu check >/dev/null 2>&1 || true
  [ -s "$dir/criu.kdat" ]
}

# The URI of the machine's own Debian archive, read from its apt sources, so
# that no registry host is written into this repository.
debian_uri() {
  local f uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri="$(awk '/^URIs:/ {print $2}' "$f" | grep -v -- '-security' | head -n1 || true)"
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri="$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)"
  fi
  printf '%s' "$uri"
}

# Fetch Debian's orig tarball of CRIU into $1. Uses a private apt state
# directory with a single deb-src entry for sid, so the machine's own apt
# configuration is left untouched.
fetch_criu_tarball() {
  local dest="$1" uri apt_dir
  uri="$(debian_uri)"
  # NHAM_CRIU_FROM_VENDOR=1 skips the registry (air-gapped hosts, or to test
  # the fallback).
  if [ -n "$uri" ] && [ "${NHAM_CRIU_FROM_VENDOR:-0}" != 1 ]; then
    apt_dir="$(mktemp -d)"
    mkdir -p "$apt_dir/lists/partial"
    printf 'deb-src [trusted=yes] %s sid main\n' "$uri" >"$apt_dir/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
      -o "Dir::State::Lists=$apt_dir/lists" -o "APT::Sandbox::User=root")
    log "fetching criu=$CRIU_DEB_VERSION source from the Debian archive"
    if apt-get "${opts[@]}" update -qq >/dev/null 2>&1; then
      (cd "$dest" && apt-get "${opts[@]}" source --download-only -qq "criu=$CRIU_DEB_VERSION" >/dev/null 2>&1) || true
    fi
    rm -rf "$apt_dir"
  fi
  if [ ! -f "$dest/$CRIU_TARBALL" ]; then
    local vendor
    for vendor in "$repo/../shared/vendor" "$repo/shared/vendor"; do
      if [ -f "$vendor/$CRIU_TARBALL" ]; then
        log "using the vendored $CRIU_TARBALL from $vendor"
        cp "$vendor/$CRIU_TARBALL" "$dest/"
        break
      fi
    done
  fi
  [ -f "$dest/$CRIU_TARBALL" ] || die "could not obtain $CRIU_TARBALL (registry and ../shared/vendor both failed)"
  echo "$CRIU_SHA256  $dest/$CRIU_TARBALL" | sha256sum -c --quiet - || die "checksum mismatch for $CRIU_TARBALL"
}

install_criu() {
  if criu_ok; then
    log "criu $(criu --version | sed -n 's/^Version: *//p') present, criu check: Looks good"
    return 0
  fi
  log "CRIU >= $CRIU_MIN (with a kernel-probe cache on tmpfs) missing: building $CRIU_VERSION from source"
  apt_install "${CRIU_BUILD_PKGS[@]}"
  local work
  work="$(mktemp -d /tmp/nham-criu.XXXXXX)"
  fetch_criu_tarball "$work"
  tar -xJf "$work/$CRIU_TARBALL" -C "$work"
  local src
  src="$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'criu*' | head -n1)"
  [ -n "$src" ] || die "unpacked tarball has no criu directory"
  local rundir
  rundir="$(criu_rundir)"
  log "make criu RUNDIR=$rundir (about a minute)"
  make -C "$src" -j"$(nproc)" RUNDIR="$rundir" criu >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; die "CRIU build failed (log: $work/build.log)"; }
  install -m 0755 "$src/criu/criu" /usr/local/sbin/criu
  hash -r
  rm -rf "$work"
  criu_ok || { criu check >&2 || true; die "installed criu does not pass 'criu check'"; }
  log "criu $(criu --version | sed -n 's/^Version: *//p') installed: criu check says Looks good"
}

main() {
  apt_install "${PROJECT_PKGS[@]}"
  install_criu
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup) first"
  log "ready"
}

main "$@"
