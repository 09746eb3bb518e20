#!/bin/sh
# Install lited's units, their shared drop-in and its sysusers.d entry.
#   install.sh [ROOT]     ROOT defaults to /; tests and image builds pass a directory.
# Unit dir and sysusers dir can be moved with UNITDIR= and SYSUSERSDIR=
# (e.g. /usr/lib/systemd/system and /usr/lib/sysusers.d for a distro package).
# BOARD=jetson|rk3399|raspberrypi|x86 adds that board's profile (boards/BOARD.conf:
# its devices and memory) as the drop-in 20-board.conf of both units; BOARD=none
# (or unset) removes one installed before.
# On the live system (ROOT=/) it also creates the user and reloads systemd.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=${1:-/}
unitdir=$root/${UNITDIR:-/etc/systemd/system}
sysusersdir=$root/${SYSUSERSDIR:-/etc/sysusers.d}

board=${BOARD:-none}
if [ "$board" != none ] && [ ! -f "$here/boards/$board.conf" ]; then
    echo "install.sh: no board profile '$board' (have: $(cd "$here/boards" && ls | sed 's/\.conf$//' | tr '\n' ' '))" >&2
    exit 2
fi

install -d -m 0755 "$unitdir" "$sysusersdir"
for unit in lited.service lited@.service; do
    install -m 0644 "$here/$unit" "$unitdir/$unit"
    install -d -m 0755 "$unitdir/$unit.d"
    install -m 0644 "$here/lited-common.conf" "$unitdir/$unit.d/10-lited.conf"
    if [ "$board" = none ]; then
        rm -f "$unitdir/$unit.d/20-board.conf"
    else
        install -m 0644 "$here/boards/$board.conf" "$unitdir/$unit.d/20-board.conf"
    fi
done
install -m 0644 "$here/lited.sysusers.conf" "$sysusersdir/lited.conf"

if [ "$root" = / ] && [ -d /run/systemd/system ]; then
    systemd-sysusers lited.conf
    systemctl daemon-reload
fi
