#!/usr/bin/env bash
# Make sure the programs the tests need exist: Go (builds the real servers) and openssl
# (makes the API server's service-account keys). Installs missing Debian packages as root.
set -euo pipefail

missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v go >/dev/null 2>&1 || missing+=(golang-go)

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "[install-system-deps] missing: ${missing[*]}; install them (apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "[install-system-deps] installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
