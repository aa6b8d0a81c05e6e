#!/usr/bin/env bash
# One-command, idempotent setup of a PRISM machine (Debian 12, as root); `make setup` runs it.
#
#   1. Debian packages: Open vSwitch, Mininet, ping, tcpdump, iperf3, ethtool, etcd ...
#      (`apt-get update` only when one is missing). etcd is only installed, never started
#      here: the tests, the demo and the benchmarks start their own on loopback and end it
#      by PID (mininet_topos/etcd_process.py), as no systemd runs on these machines.
#   2. Open vSwitch daemons, userspace datapath, userspace TSO on (scripts/ovs.sh start).
#   3. .venv from Python 3.11 with every version pinned by constraints.txt; Ryu 4.34 built
#      with setuptools<68 and patched to start with current eventlet (scripts/patch_ryu_wsgi.py);
#      Debian's Mininet made importable through a symlink; the project installed editable.
#
# Step 3 is skipped when .stamps/setup.sha256 matches setup.py + constraints.txt + these
# scripts and a quick check of the venv passes, so a second run takes about a second.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

APT_PACKAGES=(
    openvswitch-switch openvswitch-common mininet
    iputils-ping tcpdump iperf3 ethtool iproute2 net-tools procps nftables
    etcd-server etcd-client
    python3 python3-venv
)
MININET_SRC=/usr/lib/python3/dist-packages/mininet
SETUP_STAMP="$STAMP_DIR/setup.sha256"

install_apt_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' ||
            missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -q
    apt-get -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0 install -y -q "${missing[@]}"
}

# What the venv depends on; a change in any of these reinstalls it.
setup_hash() {
    cat "$PRISM_ROOT/setup.py" "$CONSTRAINTS" "$PRISM_ROOT/scripts/setup.sh" \
        "$PRISM_ROOT/scripts/common.sh" "$PRISM_ROOT/scripts/patch_ryu_wsgi.py" | sha256sum | cut -d' ' -f1
}

# Cheap live check that the venv still works: Python 3.11, Mininet, patched Ryu, prism.
venv_ok() {
    [ -x "$VENV_DIR/bin/python" ] && [ -x "$VENV_DIR/bin/ryu-manager" ] && [ -x "$VENV_DIR/bin/prism" ] &&
        "$VENV_DIR/bin/python" -c '
import sys
assert sys.version_info[:2] == (3, 11)
import mininet.net, ryu.app.wsgi, prism.cli' >/dev/null 2>&1
}

link_mininet() {
    local site
    site="$("$VENV_DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    [ -d "$MININET_SRC" ] || die "$MININET_SRC missing: is Debian's mininet package installed?"
    ln -sfn "$MININET_SRC" "$site/mininet"
    "$VENV_DIR/bin/python" -c 'import mininet.net' || die "mininet.net does not import in the venv"
}

# Remove what constraints.txt no longer lists, then make sure nothing is missing or unpinned.
check_pins() {
    local extra
    extra="$("$VENV_DIR/bin/python" -m pip freeze --all --exclude-editable |
        awk -F'==' 'function norm(name) { name = tolower(name); gsub(/[-_.]+/, "-", name); return name }
                    NR == FNR { if ($0 !~ /^#/ && NF) pinned[norm($1)] = 1; next }
                    !(norm($1) in pinned) { print $1 }' "$CONSTRAINTS" -)"
    if [ -n "$extra" ]; then
        log "removing packages that constraints.txt does not pin: $(echo "$extra" | xargs)"
        # shellcheck disable=SC2086
        "$VENV_DIR/bin/python" -m pip uninstall -y $extra
    fi
    "$VENV_DIR/bin/python" -m pip check ||
        die "dependencies are inconsistent: constraints.txt may be stale; run scripts/lock.sh"
}

build_venv() {
    local python
    python="$(pick_python)" || die "no Python 3.11 found (tried python3 and /usr/bin/python3)"
    if [ -x "$VENV_DIR/bin/python" ] &&
        ! "$VENV_DIR/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        log "existing .venv is not a working Python 3.11; recreating it"
        rm -rf "$VENV_DIR"
    fi
    if [ ! -x "$VENV_DIR/bin/python" ]; then
        log "creating .venv with $python ($("$python" --version 2>&1))"
        "$python" -m venv "$VENV_DIR"
    fi
    [ -f "$CONSTRAINTS" ] || die "constraints.txt missing: run scripts/lock.sh to create it"
    log "installing pinned Python dependencies (constraints.txt)"
    install_python_deps "$VENV_DIR" -c "$CONSTRAINTS"
    check_pins
    patch_and_verify_ryu "$VENV_DIR"
    link_mininet
    venv_ok || die "the venv does not pass its own check (python -c 'import mininet.net, ryu.app.wsgi, prism.cli')"
}

main() {
    require_root "$@"
    mkdir -p "$STAMP_DIR"
    install_apt_packages
    "$PRISM_ROOT/scripts/ovs.sh" start
    local want
    want="$(setup_hash)"
    if [ "$(cat "$SETUP_STAMP" 2>/dev/null || true)" = "$want" ] && venv_ok; then
        log "ready (Python environment up to date; Open vSwitch running)"
        return 0
    fi
    rm -f "$SETUP_STAMP"
    build_venv
    echo "$want" >"$SETUP_STAMP"
    log "ready: $("$VENV_DIR/bin/ryu-manager" --version 2>&1 | tail -1), $("$VENV_DIR/bin/python" --version)," \
        "Open vSwitch $(ovs-vsctl --version | head -1 | awk '{print $NF}') (userspace datapath)"
}

main "$@"
