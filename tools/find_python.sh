# Sourced by tools/bootstrap.sh and tools/install_sdk.sh.
# find_python310 [FILE]: print the path of a CPython 3.10, found by name, never
# by a path of one machine: FILE if given (any version), else `python3.10` on
# PATH (apt's python3.10 on a board), else pyenv's newest 3.10 (pyenv on PATH, or
# in its default home, $PYENV_ROOT or ~/.pyenv: sudo's PATH has no pyenv). Returns 1 if none.
# (paddlelite wheels exist only for CPython <= 3.10.)
find_python310() {
    local cand exe version pyenv
    if [ -n "${1:-}" ]; then
        "$1" -c 'import sys; print(sys.executable)' 2>/dev/null || return 1
        return 0
    fi
    for cand in python3.10 python3; do
        exe=$(command -v "$cand" 2>/dev/null) || continue
        if "$exe" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
            "$exe" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    pyenv=$(command -v pyenv 2>/dev/null) || pyenv=${PYENV_ROOT:-$HOME/.pyenv}/bin/pyenv
    if [ -x "$pyenv" ]; then
        version=$("$pyenv" versions --bare 2>/dev/null | grep -E '^3\.10(\.[0-9]+)?$' | sort -V | tail -n 1)
        if [ -n "$version" ] && exe=$(PYENV_VERSION=$version "$pyenv" which python3.10 2>/dev/null); then
            echo "$exe"
            return 0
        fi
    fi
    return 1
}
