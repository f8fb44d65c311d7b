#!/usr/bin/env bash
# Set up everything DAPX needs on a fresh Debian/Ubuntu machine; safe to run again.
# - as root: the Debian packages the lab and the tests use (zfs-fuse, btrfs-progs, sanoid, ...)
# - a virtual environment .venv with the locked Python packages (uv.lock), via uv
set -euo pipefail
cd "$(dirname "$0")/.."

# postgresql: the deploy tier and bench/fleet.py start throwaway clusters with its binaries.
DEBIAN_PACKAGES=(zfs-fuse btrfs-progs sanoid openssh-server openssh-client mbuffer pv lzop
                 iproute2 util-linux procps python3-venv ca-certificates postgresql)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # zfs-fuse's own service would start a host-wide daemon; the lab starts one per node.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now zfs-fuse >/dev/null 2>&1 || true; fi
    pkill -x zfs-fuse 2>/dev/null || true
  else
    echo "setup: not root, so not installing: ${missing[*]} (the lab needs them)" >&2
  fi
fi

# Machines behind a TLS-inspecting proxy keep its CA in the system bundle: let uv use it.
if [ -z "${SSL_CERT_FILE:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
fi

# uv, from PyPI, in a small bootstrap venv of its own (works where system pip is locked, PEP 668).
UV=$(command -v uv || true)
if [ -z "$UV" ]; then
  if [ ! -x .bootstrap/bin/uv ]; then
    python3 -m venv .bootstrap
    .bootstrap/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.9,<1"
  fi
  UV=$PWD/.bootstrap/bin/uv
fi
# Bytecode compiled once at install: every Python process (the CLIs, the worker, each flow
# run, the lab's tools) starts ~1 s faster, also where PYTHONDONTWRITEBYTECODE is set.
"$UV" sync --frozen --extra test --quiet --compile-bytecode
.venv/bin/python -m compileall -q -j 0 dapx >/dev/null
echo "setup: ready (.venv)"
