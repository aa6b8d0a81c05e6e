# Shared helpers for scripts/setup.sh, scripts/ovs.sh and scripts/lock.sh (sourced, not run).
# shellcheck shell=bash

# Repository root, wherever the script is called from.
PRISM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAMP_DIR="$PRISM_ROOT/.stamps"
VENV_DIR="$PRISM_ROOT/.venv"
CONSTRAINTS="$PRISM_ROOT/constraints.txt"

# Ryu 4.34 does not build with setuptools >= 68 (it calls get_script_args).
SETUPTOOLS_SPEC='setuptools<68'
RYU_SPEC='ryu==4.34'

# ifconfig, ovsdb-server and friends live in sbin; a minimal CI PATH may lack it.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

require_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (Open vSwitch, Mininet and apt need it); try: sudo $0 $*"
}

# pick_python: print a Python 3.11 interpreter that can create venvs.
# `python3` first (pyenv 3.11.7 on our machines), then Debian's /usr/bin/python3.
pick_python() {
    local candidate
    for candidate in python3 /usr/bin/python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' \
                >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# install_python_deps VENV [PIP_ARGS...]: Ryu's build prerequisites, Ryu, then the
# project (editable, with test extras). PIP_ARGS is e.g. "-c constraints.txt".
install_python_deps() {
    local venv="$1"
    shift
    local pip=("$venv/bin/python" -m pip install --disable-pip-version-check "$@")
    # pip itself is pinned too when a constraints file is given (no-op otherwise).
    "${pip[@]}" pip "$SETUPTOOLS_SPEC" pbr wheel
    # --no-build-isolation: build Ryu with the venv's setuptools<68, not a fresh one.
    "${pip[@]}" --no-build-isolation "$RYU_SPEC"
    "${pip[@]}" --no-build-isolation --use-pep517 -e "$PRISM_ROOT[test]"
}

# patch_and_verify_ryu VENV: make ryu/app/wsgi.py start with new eventlet, then prove it.
patch_and_verify_ryu() {
    local venv="$1"
    "$venv/bin/python" "$PRISM_ROOT/scripts/patch_ryu_wsgi.py"
    "$venv/bin/python" -c 'import ryu.app.wsgi' ||
        die "ryu.app.wsgi does not import after the patch"
    "$venv/bin/ryu-manager" --version >/dev/null 2>&1 ||
        die "ryu-manager --version fails: $("$venv/bin/ryu-manager" --version 2>&1 | tail -3)"
}
