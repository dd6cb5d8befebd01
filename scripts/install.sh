#!/usr/bin/env bash
# `make install`: the gateway for a site, without the test rig. Idempotent; an upgrade is the
# same command. It never enables or starts the service: that comes after the trust files and the
# configuration are in place and `portvakt doctor` agrees (docs/operations.md, "Install").
#
#   PREFIX  (/opt/portvakt)   the gateway's own venv: PREFIX/venv, made with /usr/bin/python3
#   BINDIR  (/usr/local/bin)  the `portvakt` launcher technicians run
#   DESTDIR (empty)           a root to install into instead of /, for tests: no Debian packages,
#                             no users made, nothing told to systemd. A venv runs only where it
#                             was made, so the venv and launcher there run in place; the unit and
#                             the configuration name the run-time paths (PREFIX, /etc/portvakt).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/venv.sh
. "$src/scripts/venv.sh"

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/portvakt}
BINDIR=${BINDIR:-/usr/local/bin}
CONFDIR=/etc/portvakt
STATEDIR=/var/lib/portvakt
UNITDIR=/etc/systemd/system
SYSUSERSDIR=/usr/lib/sysusers.d
POLKITDIR=/etc/polkit-1/rules.d
PYTHON=/usr/bin/python3  # Debian's: readable by the service user, updated by Debian

# What the gateway needs at run time: Debian's Python and venv (the venv links to it), pcscd and
# the PC/SC client library that pyscard opens at run time (dlopen libpcsclite.so.1), libusb for
# nfcpy's USB frontends. Not the rig's mosquitto, cups, mbpoll, socat, vpcd, opensc.
RUNTIME_PACKAGES=(python3 python3-venv pcscd libpcsclite1 libusb-1.0-0)
# pyscard ships no Linux wheel: pip compiles it (swig comes from PyPI) during the install only.
BUILD_PACKAGES=(gcc libpcsclite-dev python3-dev)

say() { printf 'install: %s\n' "$*" >&2; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
root() { [[ $(id -u) -eq 0 ]]; }

if [[ -z $DESTDIR ]] && ! root; then
    say "installing into / needs root: sudo make install (or DESTDIR=DIR for a test root)"
    exit 1
fi
case $PREFIX in /*) ;; *) say "PREFIX must be an absolute path, not '$PREFIX'"; exit 2 ;; esac
case $BINDIR in /*) ;; *) say "BINDIR must be an absolute path, not '$BINDIR'"; exit 2 ;; esac
if [[ -n $DESTDIR ]]; then
    mkdir -p "$DESTDIR"
    DESTDIR=$(cd "$DESTDIR" && pwd)
fi
umask 022  # a root umask of 027 would leave the venv unreadable to the service user

# 1. Debian packages (a real install only).
if [[ -z $DESTDIR ]]; then
    missing=() building=()
    for p in "${RUNTIME_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
    for p in "${BUILD_PACKAGES[@]}"; do installed "$p" || building+=("$p"); done
    if ((${#missing[@]} + ${#building[@]})); then
        say "installing Debian packages: ${missing[*]} ${building[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" "${building[@]}" >/dev/null
    fi
else
    say "DESTDIR=$DESTDIR: no Debian packages installed (a site needs ${RUNTIME_PACKAGES[*]})"
    building=()
    for p in "${BUILD_PACKAGES[@]}"; do installed "$p" || building+=("$p"); done
    if ((${#building[@]})); then
        say "if pip has to compile pyscard it needs: ${building[*]}"
    fi
    building=()
fi
if [[ ! -x $PYTHON ]]; then
    say "$PYTHON is missing: install Debian's python3 and python3-venv"
    exit 1
fi

# 2. The service's user and group, before anything is given to them.
if [[ -z $DESTDIR ]]; then
    install -D -m 0644 "$src/config/systemd/portvakt.sysusers" "$SYSUSERSDIR/portvakt.conf"
    if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers "$SYSUSERSDIR/portvakt.conf"
    else
        say "no systemd-sysusers: create the system user and group portvakt yourself"
    fi
fi

# 3. The venv: Debian's Python, the project as a wheel (not editable: the checkout can go).
venv=$DESTDIR$PREFIX/venv
if [[ -e $venv ]] && ! why=$(venv_mismatch "$venv" "$PYTHON"); then
    say "$venv cannot be used ($why): making it again"
    rm -rf "$venv"
fi
if [[ ! -x $venv/bin/python ]]; then
    say "creating $venv with $PYTHON"
    mkdir -p "$(dirname "$venv")"
    "$PYTHON" -m venv "$venv"
fi
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
say "building the Portvakt wheel"
"$venv/bin/python" -m pip wheel -q --no-deps -w "$build" "$src"
wheel=$(find "$build" -name 'portvakt-*.whl' -print -quit)
say "installing $(basename "$wheel") and its run-time dependencies into $venv"
# --upgrade eager: an upgrade takes the dependencies a fresh install would (security fixes).
"$venv/bin/python" -m pip install -q --upgrade --upgrade-strategy eager "$wheel"
# Same version number, new code (an upgrade from a newer checkout): replace the project itself.
"$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$wheel"
# It imports (-I: from the venv, not from the checkout in the current folder). pyscard only
# prints when it cannot dlopen the PC/SC library: name a missing one now, not at the first card.
"$venv/bin/python" -I -c 'import gateway.cli, smartcard.scard'
if ! PATH=$PATH:/sbin:/usr/sbin ldconfig -p | grep -q 'libpcsclite\.so\.1 '; then
    say "libpcsclite.so.1 is missing (Debian package libpcsclite1): no card reader will work"
fi
if ((${#building[@]})); then
    apt-mark auto "${building[@]}" >/dev/null
    say "${building[*]} were needed only to compile pyscard: apt-get autoremove removes them"
fi

# 4. The launcher technicians run (portvakt doctor, door, tui ...).
install -d "$DESTDIR$BINDIR"
cat > "$DESTDIR$BINDIR/portvakt.new" <<EOF
#!/bin/sh
# Portvakt, installed by make install: the command of the gateway's own venv.
exec "$venv/bin/portvakt" "\$@"
EOF
chmod 0755 "$DESTDIR$BINDIR/portvakt.new"
mv -f "$DESTDIR$BINDIR/portvakt.new" "$DESTDIR$BINDIR/portvakt"

# 5. Folders. The configuration and the trust anchors are root's, readable by the group
#    portvakt: the daemon reads them and cannot change them. The state folder is the daemon's.
group=root owner=root
if getent group portvakt >/dev/null; then group=portvakt; fi
if getent passwd portvakt >/dev/null; then owner=portvakt; fi
if ! root; then
    say "not root (DESTDIR): the files stay $(id -un)'s"
elif [[ $group == root ]]; then
    say "no group portvakt on this machine: $CONFDIR and $STATEDIR/trust stay root's (best effort)"
fi
own() {  # own USER:GROUP PATH; only root may give files away (not root: DESTDIR, best effort)
    if root; then chown "$1" "$2"; fi
}
install -d -m 0750 "$DESTDIR$CONFDIR" "$DESTDIR$STATEDIR" "$DESTDIR$STATEDIR/trust"
own "root:$group" "$DESTDIR$CONFDIR"
own "$owner:$group" "$DESTDIR$STATEDIR"
own "root:$group" "$DESTDIR$STATEDIR/trust"

# 6. The configuration, written by the installed command itself: portvakt.toml (a copy of
#    example.toml to edit) only when there is none, never over a site's; the templates
#    example.toml and demo.toml are this version's, so they document the keys it knows.
site=$DESTDIR$CONFDIR/portvakt.toml
had_site=no
[[ -e $site ]] && had_site=yes
"$venv/bin/portvakt" config init "$build/templates" >/dev/null
for f in example.toml demo.toml; do
    install -m 0640 "$build/templates/$f" "$DESTDIR$CONFDIR/$f"
    own "root:$group" "$DESTDIR$CONFDIR/$f"
done
if [[ $had_site == yes ]]; then
    say "$CONFDIR/portvakt.toml: kept (example.toml and demo.toml: this version's)"
else
    install -m 0640 "$build/templates/portvakt.toml" "$site"
    own "root:$group" "$site"
    say "$CONFDIR/portvakt.toml: written from example.toml, to edit"
fi

# 7. polkit (pcscd lets the portvakt user use readers), then the unit, naming this venv.
install -D -m 0644 "$src/config/polkit/60-portvakt-pcscd.rules" "$DESTDIR$POLKITDIR/60-portvakt-pcscd.rules"
if [[ -n $DESTDIR ]]; then
    install -D -m 0644 "$src/config/systemd/portvakt.sysusers" "$DESTDIR$SYSUSERSDIR/portvakt.conf"
fi
install -d "$DESTDIR$UNITDIR"
sed "s|/opt/portvakt/venv/|$PREFIX/venv/|g" "$src/config/systemd/portvakt.service" \
    > "$DESTDIR$UNITDIR/portvakt.service.new"
chmod 0644 "$DESTDIR$UNITDIR/portvakt.service.new"
mv -f "$DESTDIR$UNITDIR/portvakt.service.new" "$DESTDIR$UNITDIR/portvakt.service"
running=no
if [[ -z $DESTDIR && -d /run/systemd/system ]]; then
    systemctl daemon-reload
    if systemctl is-active --quiet portvakt; then running=yes; fi
fi

say "installed: $venv, $BINDIR/portvakt, $CONFDIR, $STATEDIR, $UNITDIR/portvakt.service"
if [[ $running == yes ]]; then
    say "portvakt is running the previous version: \`portvakt doctor\`, then systemctl restart portvakt"
else
    cat >&2 <<EOF
install: nothing was enabled or started. Next, in this order (docs/operations.md, "Install"):
install:   1. trust files: the CA certificates (and CRLs) into $STATEDIR/trust/
install:   2. configuration: edit $CONFDIR/portvakt.toml (example.toml documents every key)
install:   3. portvakt doctor
install:   4. systemctl enable --now portvakt
EOF
fi
