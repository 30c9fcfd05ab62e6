#!/usr/bin/env bash
# Build the Debian base image `dockyard-base:bookworm` locally: no public registry is
# reachable, so `debootstrap --variant=minbase` fills a folder from the Debian mirror
# this machine already uses and `docker import` turns it into an image. Cached: does
# nothing when the image exists (DOCKYARD_BASE_REBUILD=1 forces a rebuild).
# Uses the engine in $DOCKER_HOST. Needs root (debootstrap).
source "$(dirname "$0")/lib.sh"

IMAGE="${DOCKYARD_BASE_IMAGE:-dockyard-base:bookworm}"
SUITE=bookworm

# The mirror apt already uses here (deb822 `URIs:` or one-line `deb URL suite`),
# skipping the security archive; DEBIAN_MIRROR overrides it.
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local found
  found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
            2>/dev/null \
          | awk '/^URIs:/ {print $2} /^deb / {print ($2 ~ /^\[/ ? $3 : $2)}' \
          | grep -E '/debian/?$' | grep -v security | head -n1 || true)
  echo "${found:-http://deb.debian.org/debian}"
}

if [ "${DOCKYARD_BASE_REBUILD:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "base image $IMAGE exists; skipping debootstrap"
  exit 0
fi

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
fi

mirror=$(debian_mirror)
rootfs="$STATE_DIR/debian-base.$$"
trap 'rm -rf "$rootfs"' EXIT
log "debootstrap --variant=minbase $SUITE from $mirror (a few minutes)"
debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$LOG_DIR/debootstrap.log" 2>&1 \
  || { log "debootstrap failed; see $LOG_DIR/debootstrap.log"; exit 1; }

# Only what an image needs: no package cache, no apt lists (images run apt-get update),
# no docs or man pages; apt in derived images keeps them out too.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
       "$rootfs"/usr/share/locale/[a-z]* \
       "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
cat > "$rootfs/etc/dpkg/dpkg.cfg.d/01-dockyard-slim" <<'CFG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
CFG
cat > "$rootfs/etc/apt/apt.conf.d/01-dockyard-slim" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
CFG
printf '%s\n' "deb $mirror $SUITE main" "deb $mirror $SUITE-updates main" > "$rootfs/etc/apt/sources.list"
# Packages must not try to start their services while an image is being built.
printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"
chmod 755 "$rootfs/usr/sbin/policy-rc.d"
rm -f "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"

tar --numeric-owner -C "$rootfs" -c . \
  | docker import --change 'CMD ["/bin/bash"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' - "$IMAGE" >/dev/null
log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
