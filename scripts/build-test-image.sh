#!/usr/bin/env bash
# Build syncd's container image as the image tests run it. No registry is reachable here,
# so the Python base is made from Debian packages (mmdebstrap, then `podman import`) and
# cached outside the repository, keyed by suite and packages; the image itself is built
# from the Dockerfile on that base with podman, passing this host's CA bundle as the build
# secret pip needs behind a TLS-intercepting proxy.
#
# Prints IMAGE=<name> and BASE=<name>. Needs root (podman as root, mmdebstrap).
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE="${SYNCD_BASE_SUITE:-bookworm}"
PACKAGES="python3,python3-venv,ca-certificates"
CACHE="${SYNCD_TOOLS_DIR:-$HOME/.cache/syncd/tools}/images"
KEY="$(printf '%s %s' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)"
BASE_TAR="$CACHE/debian-python-$SUITE-$KEY.tar"
BASE_IMAGE="localhost/syncd-test-base:$SUITE-$KEY"
IMAGE="localhost/syncd:test"
export CONTAINERS_CONF="$PWD/tests/image/containers.conf"

log() { printf '[build-test-image] %s\n' "$*" >&2; }

if ! podman image exists "$BASE_IMAGE"; then
  if [[ ! -s "$BASE_TAR" ]]; then
    log "making a Python base from Debian packages ($SUITE: $PACKAGES)"
    mkdir -p "$CACHE"
    # Documentation, man pages and translations are left out: they only take room.
    mmdebstrap --quiet --format=tar --variant=essential --include="$PACKAGES" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      "$SUITE" "$BASE_TAR.tmp" >&2
    mv -f "$BASE_TAR.tmp" "$BASE_TAR"
  fi
  podman import --quiet "$BASE_TAR" "$BASE_IMAGE" >/dev/null
fi

# The base by digest, as a release build should take it: the exact image, whatever the
# tag points at later.
DIGEST="$(podman image inspect --format '{{.Digest}}' "$BASE_IMAGE")"
BASE_BY_DIGEST="${BASE_IMAGE%:*}@$DIGEST"
log "building $IMAGE from Dockerfile on $BASE_BY_DIGEST ($BASE_IMAGE)"
podman build --quiet --network=host --build-arg "BASE=$BASE_BY_DIGEST" \
  --secret "id=ca,src=/etc/ssl/certs/ca-certificates.crt" -t "$IMAGE" -f Dockerfile . >&2
echo "IMAGE=$IMAGE"
echo "BASE=$BASE_IMAGE"
