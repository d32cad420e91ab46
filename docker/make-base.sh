#!/usr/bin/env bash
# Make a local Debian base image from Debian's packages, for machines with no
# container registry: debootstrap a minimal bookworm into a folder, then
# `docker import` it. Idempotent: does nothing when the image exists.
#
#   docker/make-base.sh [IMAGE]        (default: switchboard-base:bookworm)
set -euo pipefail
image=${1:-switchboard-base:bookworm}
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image exists"
  exit 0
fi
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v debootstrap >/dev/null; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq debootstrap
fi
root=$(mktemp -d)
trap 'as_root rm -rf "$root"' EXIT
as_root debootstrap --variant=minbase --include=ca-certificates,passwd bookworm "$root" \
  "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
as_root tar -C "$root" -c . | docker import - "$image"
echo "built $image"
