#!/usr/bin/env bash
# Builds Concord's images from this repository alone: nothing is pulled from a registry.
#   concord:$TAG       the concord binary (release build) and the shared libraries it
#                      links, on `scratch`
#   concord-nats:$TAG  the same plus the pinned static nats-server binary (.ci/setup.sh)
# Environment: TAG (default dev); BASE (default scratch), e.g. BASE=debian:bookworm-slim
# where a registry is reachable and a shell in the image is wanted; PROFILE (default
# release): PROFILE=dev puts the debug build in the image instead, which the test suite
# does so that a CI run builds the workspace once.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${TAG:-dev}
BASE=${BASE:-scratch}
PROFILE=${PROFILE:-release}

command -v docker >/dev/null || { echo "build.sh: docker is not installed" >&2; exit 1; }
bash .ci/setup.sh >/dev/null
echo "== cargo build --profile $PROFILE -p concord"
cargo build --locked --profile "$PROFILE" -p concord
bin=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/concord

echo "== staging the build context in target/image"
ctx=target/image
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/data"
cp "$bin" "$ctx/rootfs/usr/local/bin/concord"
# Line tables are for debugging here, not in an image (symbols stay, for backtraces).
if command -v strip >/dev/null; then strip --strip-debug "$ctx/rootfs/usr/local/bin/concord"; fi
# The shared libraries the binary links, at the paths its dynamic loader looks in.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
cp .tools/venv/bin/nats-server "$ctx/nats-server"

echo "== docker build (BASE=$BASE, $PROFILE build)"
# The classic builder: it needs no builder image (BuildKit's frontend may be pulled).
export DOCKER_BUILDKIT=0
docker build --quiet --build-arg BASE="$BASE" -f compose/images/concord.Dockerfile -t "concord:$TAG" "$ctx"
docker build --quiet --build-arg CONCORD_IMAGE="concord:$TAG" -f compose/images/nats.Dockerfile \
  -t "concord-nats:$TAG" "$ctx"
# The deployment's credentials, made once (kept across builds): compose.yaml mounts them.
secrets=${CONCORD_SECRETS:-compose/secrets}
if [ ! -f "$secrets/api-token" ]; then
  echo "== making the deployment's credentials in $secrets"
  mkdir -p "$secrets" && chmod 700 "$secrets"
  for f in api-token api-read-token; do
    # Readable in the containers (their user is not this one); the directory keeps
    # other users of this machine out.
    (umask 022; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$secrets/$f"; echo >> "$secrets/$f")
  done
fi
# NATS users and passwords, the generated parts of the servers' configuration, and a CA
# and certificate for the links between regions (kept when they exist).
"$bin" cluster compose-secrets --out "$secrets" --regions us-east,eu-west,ap-south
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^concord(-nats)?:$TAG " || true
