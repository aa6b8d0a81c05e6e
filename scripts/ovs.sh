#!/usr/bin/env bash
# Start, stop or check the Open vSwitch daemons, userspace datapath (no kernel module needed).
#
#   scripts/ovs.sh start   start whichever daemon is not running; record which ones WE started
#   scripts/ovs.sh stop    stop only the daemons recorded as started by us (others are left alone)
#   scripts/ovs.sh status  exit 0 when ovsdb-server and ovs-vswitchd both answer
#
# other_config:userspace-tso-enable=true is set BEFORE ovs-vswitchd starts: the daemon reads
# it once at start, and without it TCP between Mininet hosts on a netdev bridge fails (bad
# checksums with the default veth offloads).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

OVS_CTL=/usr/share/openvswitch/scripts/ovs-ctl
OVS_RUNDIR=/var/run/openvswitch
# One line per daemon this checkout started: "<daemon> <pid>".
STARTED_FILE="$STAMP_DIR/ovs-started"
OVS_LOG="$STAMP_DIR/ovs-ctl.log"

daemon_running() {  # daemon_running ovsdb-server|ovs-vswitchd
    command -v ovs-appctl >/dev/null 2>&1 &&
        ovs-appctl -t "$1" version >/dev/null 2>&1
}

daemon_pid() {
    cat "$OVS_RUNDIR/$1.pid" 2>/dev/null || true
}

tso_setting() {
    ovs-vsctl --no-wait get Open_vSwitch . other_config:userspace-tso-enable 2>/dev/null |
        tr -d '"' || true
}

record_started() {
    mkdir -p "$STAMP_DIR"
    echo "$1 $(daemon_pid "$1")" >>"$STARTED_FILE"
}

cmd_start() {
    require_root
    [ -x "$OVS_CTL" ] || die "$OVS_CTL not found: install openvswitch-switch (make setup does)"
    mkdir -p "$STAMP_DIR"
    if ! daemon_running ovsdb-server; then
        log "starting ovsdb-server"
        "$OVS_CTL" start --no-ovs-vswitchd --system-id=random >>"$OVS_LOG" 2>&1 ||
            die "ovsdb-server did not start; see $OVS_LOG"
        daemon_running ovsdb-server || die "ovsdb-server is not answering; see $OVS_LOG"
        record_started ovsdb-server
    fi
    if [ "$(tso_setting)" != "true" ]; then
        ovs-vsctl --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true
        if daemon_running ovs-vswitchd; then
            log "WARNING: ovs-vswitchd was started before userspace-tso-enable=true;" \
                "TCP between Mininet hosts may fail until it is restarted"
        fi
    fi
    if ! daemon_running ovs-vswitchd; then
        log "starting ovs-vswitchd (userspace datapath, userspace TSO on)"
        # ovs-ctl says the openvswitch kernel module is missing; the netdev datapath needs none.
        "$OVS_CTL" start --no-ovsdb-server --system-id=random >>"$OVS_LOG" 2>&1 ||
            die "ovs-vswitchd did not start; see $OVS_LOG and /var/log/openvswitch/ovs-vswitchd.log"
        daemon_running ovs-vswitchd || die "ovs-vswitchd is not answering; see $OVS_LOG"
        record_started ovs-vswitchd
    fi
    ovs-vsctl -t 10 show >/dev/null || die "ovs-vsctl cannot talk to ovsdb-server"
}

cmd_stop() {
    require_root
    if [ ! -s "$STARTED_FILE" ]; then
        log "no Open vSwitch daemon was started from this checkout; leaving them as they are"
        return 0
    fi
    local daemon recorded_pid flag
    # ovs-vswitchd first, then ovsdb-server.
    for daemon in ovs-vswitchd ovsdb-server; do
        recorded_pid="$(awk -v d="$daemon" '$1 == d {print $2}' "$STARTED_FILE" | tail -1)"
        [ -n "$recorded_pid" ] || continue
        if [ "$(daemon_pid "$daemon")" != "$recorded_pid" ] || ! daemon_running "$daemon"; then
            log "$daemon (pid $recorded_pid) is no longer the one we started; leaving it"
            continue
        fi
        case "$daemon" in
        ovs-vswitchd) flag=--no-ovsdb-server ;;
        ovsdb-server) flag=--no-ovs-vswitchd ;;
        esac
        log "stopping $daemon (pid $recorded_pid)"
        "$OVS_CTL" stop "$flag" >>"$OVS_LOG" 2>&1 || log "WARNING: ovs-ctl stop $daemon failed; see $OVS_LOG"
    done
    rm -f "$STARTED_FILE"
}

cmd_status() {
    local rc=0 daemon
    for daemon in ovsdb-server ovs-vswitchd; do
        if daemon_running "$daemon"; then
            echo "$daemon: running (pid $(daemon_pid "$daemon"))"
        else
            echo "$daemon: not running"
            rc=1
        fi
    done
    if [ "$rc" -eq 0 ]; then
        echo "userspace-tso-enable: $(tso_setting)"
        [ -s "$STARTED_FILE" ] && echo "started from this checkout: $(awk '{print $1}' "$STARTED_FILE" | xargs)"
    fi
    return "$rc"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
