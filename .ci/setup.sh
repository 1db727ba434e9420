#!/usr/bin/env bash
# Installs what kexo's demo and tests need on a fresh machine with Node and npm: the npm packages
# (Bun and Deno come from npm) and librdkafka1 for the development broker. Safe to run again.
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
