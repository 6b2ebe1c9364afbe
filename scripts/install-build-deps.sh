#!/usr/bin/env bash
# Installs what building the gateway needs beyond the Rust toolchain on a fresh Debian
# machine, and defines `apt_install` for the scripts that source this one
# (scripts/install-test-deps.sh, scripts/run.sh). libssl-dev and pkg-config: librdkafka's TLS
# and SASL/SCRAM (rdkafka's `ssl` feature) link the system OpenSSL.
set -euo pipefail

_traceo_log() { printf '\n== %s\n' "$*"; }

_TRACEO_SUDO=""
if [ "$(id -u)" != 0 ]; then _TRACEO_SUDO="sudo"; fi

# --- system packages -------------------------------------------------------------------
# apt_install PKG...: installs the packages not yet installed; `apt-get update` runs at most
# once per run, and only when something is missing.
_TRACEO_APT_UPDATED=""
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    _traceo_log "apt-get install ${missing[*]}"
    if [ -z "$_TRACEO_APT_UPDATED" ]; then
        $_TRACEO_SUDO apt-get update -qq
        _TRACEO_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $_TRACEO_SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
apt_install libssl-dev pkg-config
