#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian/Ubuntu machine: the Debian packages the real-service rig
# needs (installed when root, named when not), a .venv, and the project installed into it.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(pcscd vsmartcard-vpcd libpcsclite-dev opensc pcsc-tools mosquitto mosquitto-clients
          mbpoll socat cups cups-ipp-utils cups-client cups-filters dbus tmux librsvg2-bin
          swig gcc util-linux)

say() { printf 'bootstrap: %s\n' "$*" >&2; }

OS_RELEASE=${PORTVAKT_OS_RELEASE:-/etc/os-release}  # overridable for the bootstrap's own tests
if [[ ! -r $OS_RELEASE ]]; then
    say "cannot tell the operating system ($OS_RELEASE missing); Portvakt's set-up supports Debian and Ubuntu."
    exit 1
fi
# shellcheck disable=SC1090
. "$OS_RELEASE"
case " ${ID:-} ${ID_LIKE:-} " in
    *" debian "*|*" ubuntu "*) ;;
    *) say "unsupported operating system '${PRETTY_NAME:-${ID:-unknown}}': Portvakt's set-up supports Debian and Ubuntu."
       say "on another system install the equivalents of: ${PACKAGES[*]}, then: python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'"
       exit 1 ;;
esac

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then PACKAGES+=(python3-venv python3-dev); fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        say "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        say "missing Debian packages: ${missing[*]}"
        say "install them with: sudo apt-get install ${missing[*]}   (then run make again)"
        exit 1
    fi
fi

stamp=.venv/.portvakt-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -x .venv/bin/python ]]; then
    say "creating .venv"
    python3 -m venv .venv
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    say "installing Portvakt and its development tools into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    echo "$want" > "$stamp"
fi
