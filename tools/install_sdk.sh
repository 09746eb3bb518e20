#!/usr/bin/env bash
# Install an SDK bundle on a board, with the runtime and the service it needs;
# upgrade it; roll it back. One line per step. See docs/install.md.
#
#   sudo tools/install_sdk.sh [options] SDK.zip|BUNDLE_DIR
#   sudo tools/install_sdk.sh [options] --rollback NAME
#
#   --prefix DIR               install under DIR instead of / (tests, image staging); implies --no-systemctl
#   --no-systemctl             do not reload, enable or start the service
#   --rollback NAME            make NAME's previous version current again
#   --wheels DIR               install the runtime offline: pip --no-index --find-links DIR lited
#   --paddlelite-wheel FILE    the Paddle Lite wheel to use (needed on ARM: PyPI has none)
#   --engines LIST             also install these engines (extras): onnxruntime,openvino,paddle_inference
#   --with LIST                also install these optional parts (extras): http (the HTTP front end and
#                              /metrics), mqtt (the MQTT uplink), gst (gst:// sources through PyGObject)
#   --python FILE              the interpreter for the venv (default: CPython 3.10 as tools/bootstrap.sh finds it)
#   --instance NAME            lited@NAME.service and /etc/lited/NAME.conf instead of lited.service
#   --timeout SEC              how long to wait for the daemon to serve the new version (default 120)
#   --board NAME               the unit's board profile: jetson, rk3399, raspberrypi, x86 or none
#                              (default: this machine's, from /proc/device-tree/compatible and uname -m)
#   --no-selftest              install a bundle that has no golden image (it must still load)
#   -h, --help                 this help
#
# Layout: runtime in /opt/lited/venv (`lited` linked into /usr/local/bin), bundles in
# /var/lib/lited/bundles/<name>/<version>/ with `current` and `previous` links,
# config /etc/lited/lited.conf (YAML).
# Exit status: 0 installed (or already installed), 1 refused or failed (the
# version served before is served still), 2 bad usage.
set -euo pipefail
umask 022

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

say() { echo "install_sdk: $*"; }
die() { echo "install_sdk: error: $*" >&2; exit 1; }
help() { sed -n '2,26s/^# \{0,1\}//p' "$0"; }
usage() { help >&2; exit 2; }
bad() { echo "install_sdk: error: $*" >&2; exit 2; }   # bad usage: one line, exit 2

prefix=/ use_systemctl=1 rollback_name="" wheels="" paddle_wheel="" python="" instance="" timeout=120 src=""
board=detect selftest=1 engines="" parts=""
while [ $# -gt 0 ]; do
    case $1 in
        --prefix|--rollback|--wheels|--paddlelite-wheel|--python|--instance|--timeout|--board|--engines|--with)
            [ $# -ge 2 ] || bad "$1: needs a value"
            [ -n "$2" ] || bad "$1: empty"
            case $1 in
                --prefix) prefix=$2 ;;
                --rollback) rollback_name=$2 ;;
                --wheels) [ -d "$2" ] || bad "--wheels $2: no such directory"; wheels=$(cd "$2" && pwd) ;;
                --paddlelite-wheel) [ -f "$2" ] || bad "--paddlelite-wheel $2: no such file"
                                    paddle_wheel=$(realpath -e "$2") ;;
                --python) command -v -- "$2" >/dev/null || bad "--python $2: no such program"; python=$2 ;;
                --instance) instance=$2 ;;
                --timeout) [[ $2 =~ ^[0-9]+$ ]] && [ "$2" -gt 0 ] || bad "--timeout $2: whole seconds above 0"
                           timeout=$2 ;;
                --board) board=$2 ;;
                --engines) engines=$2 ;;
                --with) parts=$2 ;;
            esac
            shift 2 ;;
        --no-systemctl) use_systemctl=0; shift ;;
        --no-selftest) selftest=0; shift ;;
        -h|--help) help; exit 0 ;;
        -*) echo "install_sdk: unknown option $1" >&2; usage ;;
        *) [ -z "$src" ] || bad "one bundle at a time: $src and $1"; src=$1; shift ;;
    esac
done
if [ -n "$rollback_name" ]; then [ -z "$src" ] || bad "--rollback takes no bundle, got $src"
else [ -n "$src" ] || bad "no bundle given: a .zip or a directory (see --help)"; fi
lited_wheel=""
if [ -n "$wheels" ]; then
    lited_wheel=$(find "$wheels" -maxdepth 1 -name 'lited-*.whl' | sort -V | tail -n 1)
    [ -n "$lited_wheel" ] || die "--wheels $wheels: no lited-*.whl in it"
fi
case $instance in *[!A-Za-z0-9_.-]*|.*) bad "--instance $instance: letters, digits, '.', '_', '-' only, not starting with '.'" ;; esac
case $instance in state|bundles) bad "--instance $instance: taken (/var/lib/lited/$instance is lited's own)" ;; esac
# lited@lited.service would run a second daemon on lited.service's own config, its cameras and all
[ "$instance" != lited ] || bad "--instance lited: taken (/etc/lited/lited.conf is lited.service's config: install without --instance)"
case $rollback_name in *[!A-Za-z0-9_.-]*|.*) bad "--rollback $rollback_name: not a bundle name" ;; esac
extras="" engine_modules=""
modules_of() {   # the modules an extra brings: the runtime must import them once installed
    case $1 in
        paddle_inference) echo paddle.inference ;;
        http) echo tornado, prometheus_client ;;
        mqtt) echo paho.mqtt.client ;;
        gst) echo gi ;;
        *) echo "$1" ;;
    esac
}
take_extras() {  # take_extras OPTION WHAT LIST KNOWN...: each of LIST (commas) must be one of KNOWN
    local option=$1 what=$2 list=$3 item known
    shift 3
    known=$(echo "$@" | sed 's/ /, /g')
    for item in ${list//,/ }; do
        case " $* " in *" $item "*) ;; *) bad "$option: unknown $what '$item' ($known)" ;; esac
        engine_modules+=", $(modules_of "$item")"
        extras+="${extras:+,}$item"
    done
}
ENGINE_EXTRAS="onnxruntime openvino paddle_inference" PART_EXTRAS="http mqtt gst"
take_all_extras() {  # --engines and --with, as $engines and $parts say
    take_extras --engines engine "$engines" $ENGINE_EXTRAS
    take_extras --with part "$parts" $PART_EXTRAS
}
take_all_extras

# The board profile for the unit (systemd/boards/): its devices and memory.
detect_board() {
    local compatible=""
    [ -r /proc/device-tree/compatible ] && compatible=$(tr '\0' ' ' </proc/device-tree/compatible)
    case $compatible in
        *nvidia,tegra*) echo jetson ;;
        *rockchip,rk3399*) echo rk3399 ;;
        *raspberrypi*) echo raspberrypi ;;
        *) case $(uname -m) in x86_64|i?86) echo x86 ;; *) echo none ;; esac ;;
    esac
}
[ "$board" != detect ] || board=$(detect_board)
[ "$board" = none ] || [ -f "$repo/systemd/boards/$board.conf" ] \
    || bad "--board $board: no such profile (have: $(cd "$repo/systemd/boards" && ls | sed 's/\.conf$//' | tr '\n' ' ')none)"

root=$(realpath -m "$prefix"); root=${root%/}   # '' for /
why_not_systemctl="--no-systemctl"
if [ -n "$root" ] && [ "$use_systemctl" = 1 ]; then use_systemctl=0; why_not_systemctl="--prefix"; fi
if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then die "run it as root (sudo $0 ...)"; fi
if [ "$use_systemctl" = 1 ] && [ ! -d /run/systemd/system ]; then
    die "systemd is not running here: give --no-systemctl to install without starting the service"
fi

venv=$root/opt/lited/venv
# A rerun (an upgrade is `install_sdk.sh NEW.zip`) without --engines and --with keeps those the
# runtime was installed with: else it counted as another runtime, and where there is no Paddle Lite
# wheel (CPython 3.11+, ARM) it was refused.
recorded=$(sed -n 's/.*\[\(.*\)\]$/\1/p' "$venv/.lited-install" 2>/dev/null || true)
if [ -z "$engines$parts" ] && [ -n "$recorded" ]; then
    for item in ${recorded//,/ }; do
        case " $ENGINE_EXTRAS " in
            *" $item "*) engines+="${engines:+,}$item" ;;
            *) parts+="${parts:+,}$item" ;;
        esac
    done
    take_all_extras
fi
unitdir=$root/etc/systemd/system
bundles=$root/var/lib/lited/bundles
if [ -n "$instance" ]; then
    unit=lited@$instance.service conf=$root/etc/lited/$instance.conf rundir=/run/lited/$instance
else
    unit=lited.service conf=$root/etc/lited/lited.conf rundir=/run/lited
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/install_sdk.XXXXXX")
unpacking=""   # the temp dir being filled: removed on any exit (disk full, kill, error)
cleanup() {
    [ -z "$unpacking" ] || rm -rf "$unpacking"
    rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
# A SIGKILLed run cannot clean up: its scratch dir stays. Each run holds a lock
# on its own dir; the next run removes every one of ours that nobody holds (its
# installer is gone) once it is over 5 s old (a run takes its lock a moment
# after making its dir).
exec 8<"$scratch"
flock -n 8 || true
now=$(date +%s)
for old in "${TMPDIR:-/tmp}"/install_sdk.*; do
    [ "$old" != "$scratch" ] && [ -d "$old" ] && [ ! -L "$old" ] && [ -O "$old" ] || continue
    if flock -n "$old" true 2>/dev/null && [ $((now - $(stat -c %Y "$old"))) -gt 5 ]; then
        rm -rf "$old"
    fi
done

# Run a command; on failure die with its last line of output (one line, as everywhere here).
quiet() {
    local what=$1; shift
    "$@" >"$scratch/out" 2>&1 || die "$what: $(grep -v '^$' "$scratch/out" | tail -n 1)"
}
helper() { PYTHONPATH="$repo/runtime${PYTHONPATH:+:$PYTHONPATH}" "$venv/bin/python" "$here/sdk_unpack.py" "$@"; }
# sdk_unpack.py check needs only the standard library: it runs before the runtime exists.
check_helper() { PYTHONPATH="$repo/runtime${PYTHONPATH:+:$PYTHONPATH}" "$check_python" "$here/sdk_unpack.py" "$@"; }

# --- runtime -----------------------------------------------------------------

. "$here/find_python.sh"
# The venv's interpreter: --python, else a CPython 3.10 by name (Paddle Lite's last wheels); with
# --engines, where 3.10 is missing (Ubuntu 24.04, Debian 12, Raspberry Pi OS), the system's python3.
find_python() {
    local exe
    # a rerun: the interpreter the runtime was made with (a 3.10 found first made it anew on 3.10)
    if [ -z "$python" ] && exe=$("$venv/bin/python" -c 'import sys; print(sys._base_executable)' 2>/dev/null) \
            && [ -x "$exe" ]; then
        echo "$exe"
        return 0
    fi
    find_python310 "$python" && return 0
    [ -z "$python" ] || die "--python $python: cannot run it"
    if [ -n "$engines" ] && exe=$(command -v python3) \
            && "$exe" -c 'import sys, venv; sys.exit(sys.version_info[:2] < (3, 9))' 2>/dev/null; then
        "$exe" -c 'import sys; print(sys.executable)'
        return 0
    fi
    die "CPython 3.10 not found (Paddle Lite wheels exist only for CPython <= 3.10 on x86_64): install python3.10, give --python FILE, or run the bundle's ONNX with --engines openvino (or onnxruntime) on python3"
}

# Does PyPI have a Paddle Lite wheel for interpreter $1 here? x86_64 and CPython <= 3.10 only.
paddle_on_pypi() {
    [ "$(uname -m)" = x86_64 ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] > (3, 10))'
}

# Is $1 under a directory that ProtectHome=yes hides from the service?
hidden_by_protect_home() {
    local dir
    for dir in /home /root /run/user; do
        case $1/ in "$dir"/*) return 0 ;; esac
    done
    return 1
}

# What identifies the runtime to install: lited's version and a hash of its source
# (or wheel), so a second run with the same runtime skips pip altogether.
runtime_id() {
    local version id
    if [ -n "$wheels" ]; then
        version=$(basename "$lited_wheel" | cut -d- -f2)
        id=$(sha256sum "$lited_wheel" | cut -c1-16)
    else
        version=$(sed -n 's/^version *= *//p' "$repo/setup.cfg")
        id=$(cd "$repo" && find runtime setup.cfg pyproject.toml -name __pycache__ -prune -o -name '*.egg-info' -prune \
                 -o -type f -print | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
    fi
    [ -z "$paddle_wheel" ] || id="$id+$(sha256sum "$paddle_wheel" | cut -c1-16)"
    echo "lited $version $id${extras:+ [$extras]}"
}

# Before pip: the runtime about to be made ($lite and --engines) must have an engine the bundle lists
# ($listed, from its check; a rollback has none, and then Paddle Lite or --engines is enough).
refuse_a_runtime_without_the_bundles_engines() {
    local no_lite=$1 item others
    for item in ${engines//,/ } $lite; do
        case ",${listed:-$item}," in *",$item,"*) return 0 ;; esac
    done
    others=""
    for item in ${listed//,/ }; do
        [ "$item" = paddle_lite ] || others+="${others:+ or }$item"
    done
    [ -n "$listed" ] || others="openvino or onnxruntime"
    if [ -n "$lite" ]; then   # Paddle Lite is there, but the bundle has no file for it
        die "$name lists files for ${listed//,/, } only: install one of those with it (--engines $others)"
    elif [ -n "$others" ]; then
        die "$no_lite: give --paddlelite-wheel FILE (built for it: docs/install.md), or install another engine $name lists (--engines $others)"
    fi
    die "$no_lite, and $name lists Paddle Lite files only: give --paddlelite-wheel FILE (built for it: docs/install.md), or build the bundle with its ONNX too, for --engines openvino or onnxruntime (docs/build_sdk.md)"
}

install_runtime() {
    local want had_lited py
    want=$(runtime_id)
    local shown word1 word2
    read -r word1 word2 _ <<<"$want"
    shown="$word1 $word2${extras:+ [$extras]}"   # "lited 0.1.0 [openvino]": without the source's hash
    local pyver='import sys; print("%d.%d" % sys.version_info[:2])'
    if [ "$(cat "$venv/.lited-install" 2>/dev/null)" = "$want" ] && "$venv/bin/python" -c 'import lited' 2>/dev/null; then
        local unused=""   # a working runtime is not replaced for another interpreter: say so
        if [ -n "$python" ] && [ "$("$python" -c "$pyver" 2>/dev/null)" != "$("$venv/bin/python" -c "$pyver")" ]; then
            unused=" (Python $("$venv/bin/python" -c "$pyver"); --python $python not used: remove $venv to change it)"
        fi
        say "runtime: $shown already installed in $venv$unused"
        return
    fi
    py=$(find_python)
    local lite=""   # Paddle Lite in the runtime: a wheel given, PyPI's, or an earlier --paddlelite-wheel's
    if [ -n "$paddle_wheel" ] || paddle_on_pypi "$py" || "$venv/bin/python" -c 'import paddlelite' 2>/dev/null; then
        lite=paddle_lite
    fi
    refuse_a_runtime_without_the_bundles_engines "PyPI has no Paddle Lite wheel for $(uname -m), CPython $("$py" -c "$pyver")"
    say "runtime: installing $shown into $venv (pip: a minute or more)..."
    # No venv, or one of another Python (a run that failed with --python of another version left it):
    # made anew, so the next run with the right interpreter is not stuck on it.
    if ! "$venv/bin/python" -c '' 2>/dev/null || [ "$("$venv/bin/python" -c "$pyver")" != "$("$py" -c "$pyver")" ]; then
        quiet "creating $venv" "$py" -m venv --clear "$venv"
    fi
    had_lited=$("$venv/bin/python" -c 'import lited' 2>/dev/null && echo 1 || echo 0)
    local pip=("$venv/bin/python" -m pip install --disable-pip-version-check --no-warn-script-location)
    if [ -n "$wheels" ]; then
        quiet "pip install from $wheels" "${pip[@]}" --no-index --find-links "$wheels" ${paddle_wheel:+"$paddle_wheel"} \
            "lited${extras:+[$extras]}"
        # The same version from a rebuilt wheel: pip calls it satisfied, so force lited alone.
        [ "$had_lited" = 0 ] || quiet "pip install $lited_wheel" "${pip[@]}" --no-index --force-reinstall --no-deps "$lited_wheel"
    else
        # A copy: pip builds in the source tree, which may be read-only (or shared with a dev checkout).
        mkdir "$scratch/src"
        tar -C "$repo" --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml setup.cfg README.md runtime \
            | tar -C "$scratch/src" -xf -
        quiet "pip install lited from $repo" "${pip[@]}" ${paddle_wheel:+"$paddle_wheel"} "$scratch/src${extras:+[$extras]}"
    fi
    local base_engine=", paddlelite.lite"
    [ -n "$paddle_wheel" ] || paddle_on_pypi "$py" || base_engine=""
    quiet "the runtime in $venv does not import" "$venv/bin/python" -c "import lited$base_engine$engine_modules"
    echo "$want" >"$venv/.lited-install"
    runtime_changed=1   # a running daemon runs the old files: it is restarted, not reloaded
    say "runtime: $shown installed in $venv ($("$venv/bin/python" -V))"
}

# `lited` on PATH for operators (lited ctl status, lited config check); a file there not ours is
# left alone, and a read-only /usr (an image, a container) only costs the shortcut.
link_command() {
    local bin=$root/usr/local/bin
    if [ -e "$bin/lited" ] && [ "$(readlink "$bin/lited")" != /opt/lited/venv/bin/lited ]; then
        say "runtime: $bin/lited is not lited's link (left as it is): run /opt/lited/venv/bin/lited for lited"
        return 0
    fi
    { mkdir -p "$bin" && ln -sfn /opt/lited/venv/bin/lited "$bin/lited"; } 2>/dev/null \
        || say "runtime: $bin is not writable: run /opt/lited/venv/bin/lited for lited"
}

install_units() {
    local base template dropin
    BOARD=$board quiet "systemd/install.sh" "$repo/systemd/install.sh" "${root:-/}"
    # ProtectHome=yes hides /root and /home; an interpreter there (pyenv) needs to be let back in.
    base=$(realpath "$("$venv/bin/python" -c 'import sys; print(sys.base_prefix)')")
    for template in lited.service lited@.service; do
        dropin=$unitdir/$template.d/30-python.conf
        if hidden_by_protect_home "$base"; then
            printf '%s\n' "# Written by tools/install_sdk.sh: the venv's Python lives in $base," \
                "# which ProtectHome=yes would hide. An interpreter in /usr or /opt needs none of this." \
                "[Service]" "ProtectHome=tmpfs" "BindReadOnlyPaths=$base" >"$dropin"
        else
            rm -f "$dropin"
        fi
    done
    [ "$use_systemctl" = 0 ] || systemctl daemon-reload
    local extra=""
    [ "$board" = none ] || extra=", board profile $board (20-board.conf)"
    hidden_by_protect_home "$base" && extra="$extra, drop-in 30-python.conf to reach $base"
    local dir=$base   # the unit gets in as root; an app in group lited runs /usr/local/bin/lited as itself
    while [ "$dir" != / ]; do
        if [ -z "$(find "$dir" -maxdepth 0 -perm -o=x 2>/dev/null)" ]; then
            extra="$extra; only root reaches $dir, so apps in group lited cannot run lited (a Python in /usr or /opt can: --python)"
            break
        fi
        dir=$(dirname "$dir")
    done
    say "units: $unit in $unitdir$extra"
}

# --- bundle links --------------------------------------------------------------

# flip CURRENT PREVIOUS: point the links at these versions ('' removes the link).
# Each link is replaced by a rename, so a reader (or a crash) sees the old or the new one.
flip() {
    local link target
    for link in previous current; do
        if [ "$link" = previous ]; then target=$2; else target=$1; fi
        if [ -n "$target" ]; then
            ln -sfn "$target" "$bdir/.$link.new"
            mv -T "$bdir/.$link.new" "$bdir/$link"
        else
            rm -f "$bdir/$link"
        fi
    done
    sync -f "$bdir" 2>/dev/null || true   # the power may go right after
}

# Remove a version directory: renamed away first, so a half-deleted one is never seen as a version.
discard() {
    local trash
    [ -e "$1" ] || return 0
    trash=$(mktemp -u "$bdir/.trash-XXXXXX")
    mv -T "$1" "$trash"
    rm -rf "$trash"
}

# --- the service ---------------------------------------------------------------

# activate VERSION RELOAD: make the service serve VERSION of $name (reload it, or
# start it if it is not running); on failure set $failure and return 1.
activate() {
    local version=$1 reload=$2 since verb reloaded=() reload_failed="" pid_before=""
    if [ "$use_systemctl" = 0 ]; then
        say "service: not touched ($why_not_systemctl)"
        return 0
    fi
    since=$(date +%s.%N)   # only a reload failure after this is ours
    if [ "$was_active" = 1 ] && [ "$runtime_changed" = 1 ]; then
        # A reload would keep the old code running, and start engine processes on the new files
        # (which refuse to run under it: lited/engine_process.py): the daemon itself must change.
        verb="restarted (its runtime changed)"
        if ! systemctl restart "$unit" >/dev/null 2>"$scratch/err"; then
            failure="$unit did not restart: $(tail -n 1 "$scratch/err") (journalctl -u $unit)"
            return 1
        fi
    elif [ "$was_active" = 1 ]; then
        if [ "$reload" = 0 ]; then say "service: $unit active"; return 0; fi
        verb="reloaded" reloaded=(--reloaded)
        pid_before=$(systemctl show -p MainPID --value "$unit" 2>/dev/null || true)
        # ExecReload is `lited ctl reload`: systemctl waits for the reload and fails when it failed; the
        # daemon's own words for why come from the wait below (systemctl says only "control process exited")
        systemctl reload "$unit" 2>"$scratch/err" || reload_failed="systemctl reload: $(tail -n 1 "$scratch/err")"
    else
        verb="started (and enabled)"
        if ! systemctl enable --now "$unit" >/dev/null 2>"$scratch/err"; then
            failure="$unit did not start: $(tail -n 1 "$scratch/err") (journalctl -u $unit)"
            return 1
        fi
    fi
    : >"$scratch/out"
    # the config serves $name from elsewhere ("other"): nothing to wait for
    if [ "$config_state" != other ] && ! helper wait --config "$conf" --runtime-dir "$rundir" --model "$name" \
            --version "${version:--}" --since "$since" --timeout "$timeout" "${reloaded[@]}" \
            >"$scratch/out" 2>"$scratch/err"; then
        failure=$(tail -n 1 "$scratch/err")
        return 1
    fi
    if [ -n "$reload_failed" ]; then
        # The daemon died during the reload and systemd started it again: the new one read the config
        # afresh and serves $version (the wait saw it), so the install stands.
        local pid_now
        pid_now=$(systemctl show -p MainPID --value "$unit" 2>/dev/null || true)
        if [ -z "$pid_before" ] || [ "$pid_now" = "$pid_before" ] || [ "${pid_now:-0}" = 0 ]; then
            failure=$reload_failed
            return 1
        fi
        say "service: $unit died during its reload and systemd started it again (pid $pid_before, now $pid_now: journalctl -u $unit says why), $(cat "$scratch/out")"
        return 0
    fi
    say "service: $verb $unit$([ -s "$scratch/out" ] && printf ', %s' "$(cat "$scratch/out")")"
}

# After a failed activate: links back, config back, the service back on the old version; exit 1.
roll_back() {
    local failed=$1
    say "rollback: $failure"
    flip "$cur" "$prev"
    say "rollback: current -> ${cur:-none}${prev:+ (previous -> $prev)}"
    if [ "$config_changed" = 1 ]; then
        if [ -f "$scratch/conf.before" ]; then
            cp -p "$scratch/conf.before" "$conf.restore" && mv -f "$conf.restore" "$conf"   # a rename, not a rewrite
        else
            rm -f "$conf"
        fi
        say "rollback: $conf restored"
    fi
    if [ "$was_active" = 1 ]; then
        config_state=present
        local first=$failure
        activate "$cur" 1 || say "rollback: the daemon did not take it either ($failure); it keeps serving what it had"
        failure=$first
    elif [ "$use_systemctl" = 1 ]; then
        systemctl stop "$unit" 2>/dev/null || true
        say "rollback: $unit was not running before; left stopped"
    fi
    [ -z "$failed" ] || [ "$failed" = "$prev" ] || discard "$bdir/$failed"
    die "$name $version not served: $failure"
}

if [ -z "$rollback_name" ]; then
    # The bundle is checked first: an unsafe or unnamed one is refused before anything is written.
    # (Its Python is found here, not inside check_helper, whose stderr goes to a file: with no 3.10 the
    # installer ended with exit 1 and nothing said.)
    check_python=$(find_python) || exit 1   # find_python said why, on stderr
    check_helper check "$src" >"$scratch/check" 2>"$scratch/err" \
        || die "refused: $(tail -n 1 "$scratch/err")"
    read -r name version nfiles megabytes _ golden listed <"$scratch/check"   # (the manifest sha: `differs` compares every file)
    [ "$listed" != - ] || listed=""   # the engines its files name (none: the runtime's check says what is wrong)
    if [ "$golden" != golden ] && [ "$selftest" = 1 ]; then
        die "refused: $name $version has no golden image to self-test (tools/build_sdk.py --golden IMAGE adds one; --no-selftest installs it untested)"
    fi
fi

# One install or rollback at a time, from here: everything above only read.
mkdir -p "$bundles"
exec 9>"$bundles/.lock"
if ! flock -n 9; then
    say "waiting for another install_sdk.sh to finish"
    flock -w 600 9 || die "$bundles/.lock is held for over 10 minutes"
fi

was_active=0
if [ "$use_systemctl" = 1 ] && systemctl is-active --quiet "$unit"; then was_active=1; fi
config_state=present config_changed=0 failure="" runtime_changed=0

# --- --rollback NAME -----------------------------------------------------------

if [ -n "$rollback_name" ]; then
    name=$rollback_name bdir=$bundles/$rollback_name
    "$venv/bin/python" -c 'import lited' 2>/dev/null || die "no runtime in $venv: install a bundle first"
    cur=$(readlink "$bdir/current" 2>/dev/null) || die "$name is not installed ($bdir/current is missing)"
    prev=$(readlink "$bdir/previous" 2>/dev/null) || die "$name has no previous version to roll back to"
    [ -f "$bdir/$prev/manifest.json" ] || die "$name's previous version $prev is missing from $bdir"
    # The link is every unit's: a unit whose config has not the model would wait out --timeout twice,
    # the link flipped meanwhile under the unit that does serve it, not reloaded
    if [ "$use_systemctl" = 1 ] && helper config "$conf" "$name" "/var/lib/lited/bundles/$name/current" \
            --runtime-dir "$rundir" --dry-run 2>/dev/null | grep -qv '^present '; then
        die "$conf does not serve $name from $bdir/current: roll back with the --instance whose config does"
    fi
    flip "$prev" "$cur"
    say "current -> $prev (previous -> $cur)"
    if ! activate "$prev" 1; then
        flip "$cur" "$prev"
        say "rollback: current -> $cur again"
        [ "$was_active" = 0 ] || activate "$cur" 1 || true
        die "$name $prev not served: $failure"
    fi
    say "done: $name $prev"
    exit 0
fi

# --- install SRC ---------------------------------------------------------------

bdir=$bundles/$name
cur=$(readlink "$bdir/current" 2>/dev/null || true)
prev=$(readlink "$bdir/previous" 2>/dev/null || true)
# A version is its content: current or previous (a rollback's target) never changes under the same
# name, not even in a file the manifest does not seal (a README, a NOTICE).
for kept in "$cur" "$prev"; do
    [ "$kept" = "$version" ] || continue
    check_helper differs "$src" "$bdir/$version" >"$scratch/differs" 2>"$scratch/err" \
        || die "refused: $(tail -n 1 "$scratch/err")"
    if [ -s "$scratch/differs" ]; then
        case $(cat "$scratch/differs") in
            *sha256*) advice="nothing changed" ;;   # one copy is damaged: it says which, and what to do
            *) advice="give the new bundle a new version (nothing changed)" ;;
        esac
        die "$name $version is installed ($( [ "$kept" = "$cur" ] && echo current || echo previous )) with $(cat "$scratch/differs"): $advice"
    fi
done
say "bundle: $name $version checked ($nfiles files, $megabytes MB)"
if [ -n "$cur" ] && [ "$version" != "$cur" ]; then
    if [ "$version" = "$prev" ]; then
        say "bundle: $version is the previous version: it becomes current again (--rollback $name does that without unpacking)"
    elif [ "$(printf '%s\n' "$version" "$cur" | sort -V | head -n 1)" = "$version" ]; then
        say "bundle: $version is older than current $cur: a downgrade"
    fi
fi

install_runtime
# With the runtime (its engines' registry needs numpy), the bundle is unpacked in scratch and loaded
# as the daemon would: every manifest problem, the golden image, this machine's target, the model
# checksums. A bad one is refused here, before the command, the units, the config or the bundles.
helper check "$src" --unpack-to "$scratch/checked" >/dev/null 2>"$scratch/err" \
    || die "refused: $(tail -n 1 "$scratch/err")"
rm -rf "$scratch/checked"
link_command
install_units

conf_model_path=/var/lib/lited/bundles/$name/current
board_conf=${conf#"$root"}   # the config's path on the board: what a command to run there names
helper config "$conf" "$name" "$conf_model_path" --runtime-dir "$rundir" --dry-run >"$scratch/out" 2>"$scratch/err" \
    || die "$(tail -n 1 "$scratch/err")"

mkdir -p "$bdir"
# The bundles are root's: the service only reads them. A unit of an older lited had /var/lib/lited as
# its StateDirectory, which systemd chowns (contents too) to the service user at the first start: the
# daemon could then have rewritten its own models. Now its state is /var/lib/lited/state.
if [ "$(id -u)" = 0 ] && [ "$(stat -c %u "$root/var/lib/lited")" != 0 ]; then
    chown root:root "$root/var/lib/lited" && chmod 755 "$root/var/lib/lited" && chown -R root:root "$bundles"
fi
rm -rf "$bdir"/.unpack-* "$bdir"/.trash-* "$bdir"/.current.new "$bdir"/.previous.new   # left by a killed run
already=0
if [ "$cur" = "$version" ]; then
    say "bundle: $name $version already installed ($bdir/current)"
    already=1
else
    unpacking=$(mktemp -d "$bdir/.unpack-XXXXXX")
    chmod 0755 "$unpacking"   # mktemp makes it 0700; the daemon's user reads it as <version>/
    helper unpack "$src" "$unpacking" >"$scratch/out" 2>"$scratch/err" \
        || die "unpacking failed, ${cur:-nothing} stays current: $(tail -n 1 "$scratch/err")"
    say "bundle: unpacked into $unpacking"
    if [ "$golden" = golden ]; then
        say "bundle: self-testing $name $version on its golden image (the model warms up: seconds)..."
        quiet "refused: $name $version failed its self-test, ${cur:-nothing} stays current" \
            "$venv/bin/lited" selftest --bundle "$unpacking"
        say "bundle: $(tail -n 1 "$scratch/out")"
    else
        quiet "refused: $name $version does not load, ${cur:-nothing} stays current" \
            "$venv/bin/lited" inspect --bundle "$unpacking"
        say "bundle: $name $version loads (not self-tested: --no-selftest)"
    fi
    discard "$bdir/$version"   # an older copy of this version (a failed or killed run, or `previous`)
    mv -T "$unpacking" "$bdir/$version"
    unpacking=""
    say "bundle: $bdir/$version"
    flip "$version" "$cur"
    prev_new=$cur
    say "current -> $version${cur:+ (previous -> $cur)}"
fi

[ ! -f "$conf" ] || cp -p "$conf" "$scratch/conf.before"
helper config "$conf" "$name" "$conf_model_path" --runtime-dir "$rundir" --named "$board_conf" >"$scratch/out" 2>"$scratch/err" \
    || { failure=$(tail -n 1 "$scratch/err"); [ "$already" = 1 ] && die "$failure"; roll_back "$version"; }
read -r config_state streams config_message <"$scratch/out"
case $config_state in created|added) config_changed=1 ;; esac
say "config: $config_message"

reload=1
[ "$already" = 0 ] || [ "$config_changed" = 1 ] || reload=0
# Already installed, yet the daemon may serve another version: a run killed between its flip and its
# reload left `current` flipped and the daemon on the old one (a rerun said "done"; the next restart
# would have switched versions unchecked)
if [ "$reload" = 0 ] && [ "$was_active" = 1 ] && [ "$config_state" = present ] && ! helper wait --config "$conf" \
        --runtime-dir "$rundir" --model "$name" --version "$version" --since "$(date +%s.%N)" --timeout 3 \
        >/dev/null 2>&1; then
    say "service: $unit does not serve $name $version, which is current: reloading it"
    reload=1
fi
if ! activate "$version" "$reload"; then
    # Already installed: nothing was flipped, only the config may have to go back.
    if [ "$already" = 1 ]; then roll_back ""; else roll_back "$version"; fi
fi

# Already installed too: a run killed between its flip and here left an older version.
[ "$already" = 0 ] || prev_new=$prev
for dir in "$bdir"/*/; do
    dir=${dir%/}
    [ -d "$dir" ] || continue
    [ -L "$dir" ] || [ "${dir##*/}" = "$version" ] || [ "${dir##*/}" = "${prev_new:-}" ] || {
        discard "$dir"; say "pruned: $name ${dir##*/}"; }
done
say "done: $name $version"
if [ "$streams" = 0 ]; then
    status="lited ctl status"   # reads /etc/lited/lited.conf: an instance's daemon needs its own
    [ -z "$instance" ] || status="lited ctl --config /etc/lited/$instance.conf status"
    apply="\`systemctl reload $unit\`"   # it was started or reloaded above
    [ "$use_systemctl" = 1 ] || apply="\`systemctl enable $unit\` and \`systemctl reload-or-restart $unit\`"
    where=""   # under --prefix the config names the board's paths: check it there
    [ -z "$root" ] || where="on the board, "
    say "next: no stream uses $name yet: add one to $conf (docs/config.md), ${where}check it with" \
        "\`lited config check --config $board_conf\`, then $apply;" \
        "\`$status\` shows what is served"
fi
