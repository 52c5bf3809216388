#!/usr/bin/env bash
# Local stand-ins for the two registry images the compose file uses (python:3.11-slim and
# postgres:16), built from Debian bookworm packages, for the compose test on machines that
# cannot reach Docker Hub. Tagged under tuner's own names, never the official ones:
#   tuner-standin/python:3.11    Debian's Python 3.11 with pip (pip may install system-wide)
#   tuner-standin/postgres:15    Debian's postgresql-15 with an entrypoint that honours
#                                POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB like the official one
#
#   bash tests/compose/standins.sh [CACHE_DIR]      (root; needs debootstrap and a Docker engine)
#
# The root filesystems are cached as tarballs in CACHE_DIR (default /var/cache/tuner-ci), keyed by
# a hash of this script and the entrypoint; an image already imported with the same key is reused.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${1:-/var/cache/tuner-ci}"
mirror="${TUNER_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
mkdir -p "$cache"
key="$(cat "$here/standins.sh" "$here/postgres-entrypoint.sh" | sha256sum | cut -c1-12)"

rootfs() {  # rootfs NAME PACKAGES... -> $cache/NAME-$key.tar
  local name="$1"; shift
  local tar="$cache/$name-$key.tar"
  if [[ ! -s "$tar" ]]; then
    local dir; dir="$(mktemp -d "$cache/$name-build.XXXXXX")"
    local pkgs; pkgs="$(IFS=,; echo "$*")"
    debootstrap --variant=minbase --include="$pkgs" bookworm "$dir" "$mirror" >"$dir.log" 2>&1 \
      || { tail -30 "$dir.log" >&2; rm -rf "$dir"; exit 1; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    customise_"$name" "$dir"
    tar -C "$dir" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$dir" "$dir.log"
  fi
  echo "$tar"
}

customise_python() {
  # like python:3.11-slim: `python` and `pip` on the PATH, pip installs into the system
  rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED
}

customise_postgres() {
  install -m 0755 "$here/postgres-entrypoint.sh" "$1/usr/local/bin/docker-entrypoint.sh"
  # no cluster of Debian's own: the entrypoint makes one in $PGDATA
  rm -rf "$1"/var/lib/postgresql/15/main "$1"/etc/postgresql/15/main
}

import() {  # import TAG TARBALL CHANGES...
  local tag="$1" tar="$2"; shift 2
  if [[ "$(docker image inspect -f '{{index .Config.Labels "tuner.standin.key"}}' "$tag" 2>/dev/null)" != "$key" ]]; then
    local changes=(--change "LABEL tuner.standin.key=$key")
    for c in "$@"; do changes+=(--change "$c"); done
    docker import "${changes[@]}" "$tar" "$tag" >/dev/null
  fi
  echo "$tag"
}

py_tar="$(rootfs python python3 python3-pip python-is-python3 ca-certificates)"
pg_tar="$(rootfs postgres postgresql-15 ca-certificates)"
import tuner-standin/python:3.11 "$py_tar" \
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  'CMD ["python3"]'
import tuner-standin/postgres:15 "$pg_tar" \
  'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PGDATA=/var/lib/postgresql/data LANG=C.UTF-8' \
  'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
  'CMD ["postgres"]' \
  'EXPOSE 5432'
