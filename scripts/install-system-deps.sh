#!/usr/bin/env bash
# Make sure the programs the tests need exist: Go (builds the real servers), openssl (keys
# and certificates), BIND's named (the real DNS server; tests start their own on loopback),
# iproute2's ip (test hosts in a network namespace), nftables' nft (kube-proxy programs the
# data plane with it, inside the test's node namespaces), socat (carries a node
# namespace's API connections to the test API server through a unix socket), and podman,
# runc and mmdebstrap (the image tests build a Python base from Debian packages and the
# image from the Dockerfile, and run it).
# Installs missing Debian packages as root.
set -euo pipefail

missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v go >/dev/null 2>&1 || missing+=(golang-go)
command -v named >/dev/null 2>&1 || [[ -x /usr/sbin/named ]] || missing+=(bind9)
command -v ip >/dev/null 2>&1 || [[ -x /usr/sbin/ip ]] || missing+=(iproute2)
command -v named-checkzone >/dev/null 2>&1 || [[ -x /usr/bin/named-checkzone ]] || missing+=(bind9-utils)
command -v nft >/dev/null 2>&1 || [[ -x /usr/sbin/nft ]] || missing+=(nftables)
command -v socat >/dev/null 2>&1 || missing+=(socat)
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || [[ -x /usr/sbin/runc ]] || missing+=(runc)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "[install-system-deps] missing: ${missing[*]}; install them (apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "[install-system-deps] installing ${missing[*]}" >&2
  # Keep the packages from starting system services (e.g. named on port 53): tests run
  # their own servers on loopback ports.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
  fi
  trap '[[ $created_policy == 1 ]] && rm -f "$policy"' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
