#!/bin/sh
# Install lited's units, their shared drop-in and its sysusers.d entry.
#   install.sh [ROOT]     ROOT defaults to /; tests and image builds pass a directory.
# Unit dir and sysusers dir can be moved with UNITDIR= and SYSUSERSDIR=
# (e.g. /usr/lib/systemd/system and /usr/lib/sysusers.d for a distro package).
# On the live system (ROOT=/) it also creates the user and reloads systemd.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=${1:-/}
unitdir=$root/${UNITDIR:-/etc/systemd/system}
sysusersdir=$root/${SYSUSERSDIR:-/etc/sysusers.d}

install -d -m 0755 "$unitdir" "$sysusersdir"
for unit in lited.service lited@.service; do
    install -m 0644 "$here/$unit" "$unitdir/$unit"
    install -d -m 0755 "$unitdir/$unit.d"
    install -m 0644 "$here/lited-common.conf" "$unitdir/$unit.d/10-lited.conf"
done
install -m 0644 "$here/lited.sysusers.conf" "$sysusersdir/lited.conf"

if [ "$root" = / ] && [ -d /run/systemd/system ]; then
    systemd-sysusers lited.conf
    systemctl daemon-reload
fi
