#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian/Ubuntu machine: the Debian packages the real-service rig
# needs (installed when root, named when not), a .venv, and the project installed into it.
# This is the developer's and the demo's set-up; a site installs with `make install`
# (scripts/install.sh), which brings only what the gateway needs at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
. scripts/venv.sh

PACKAGES=(pcscd vsmartcard-vpcd libpcsclite-dev opensc pcsc-tools mosquitto mosquitto-clients
          mbpoll socat cups cups-ipp-utils cups-client cups-filters dbus tmux librsvg2-bin
          swig gcc util-linux python3 python3-venv python3-dev)
# Debian's own Python: one under /root (pyenv) cannot be read by a service user, and the venv
# would break when that Python moves. python3-dev: pyscard compiles against its headers.
SYSTEM_PYTHON=/usr/bin/python3

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

if [[ -x $SYSTEM_PYTHON ]]; then
    python=$SYSTEM_PYTHON
else
    python=$(command -v python3) || { say "no Python: $SYSTEM_PYTHON and python3 are both missing"; exit 1; }
    say "$SYSTEM_PYTHON is missing (Debian package python3): making .venv with $python instead;"
    say "a service user may not be able to run it (e.g. a Python under /root)"
fi

stamp=.venv/.portvakt-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [[ -e .venv ]] && ! why=$(venv_mismatch .venv "$python"); then
    # A copied .venv would run the original checkout's code (its scripts and its editable
    # install name the original's path): made elsewhere means made again.
    say ".venv was not made here with $python ($why): removing it and making it again"
    rm -rf .venv
fi
if [[ ! -x .venv/bin/python ]]; then
    say "creating .venv with $python"
    "$python" -m venv .venv
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    say "installing Portvakt and its development tools into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    echo "$want" > "$stamp"
fi
