#!/usr/bin/env bash
# A real single-node Slurm cluster on localhost, for the sweep tests and for trying sweeps on one
# machine (Debian/Ubuntu, root or sudo).
#
#   bash scripts/local_slurm.sh start    # install munge + slurmctld + slurmd if missing, configure, start
#   bash scripts/local_slurm.sh status   # daemons and `sinfo`
#   bash scripts/local_slurm.sh stop     # stop the daemons (the configuration stays)
#
# The cluster has one node (this machine, all its CPUs and memory as `slurmd -C` reports them) in
# one partition, `local`, the default. Processes are tracked without cgroups so that it also runs
# in containers. `start` is idempotent: on a running cluster it only refreshes the configuration.
# An /etc/slurm/slurm.conf that this script did not write is never touched: it refuses instead.
set -euo pipefail

PARTITION=local
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARKER="# Written by mtrl_famo scripts/local_slurm.sh"
STATE_DIR=/var/lib/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo -n); fi

say() { echo "local_slurm: $*" >&2; }
die() { say "$*"; exit 1; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurm is not installed and apt-get is not available; install munge, slurmctld, slurmd and slurm-client yourself."
    say "installing munge, slurmctld, slurmd, slurm-client (apt-get)"
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        munge slurmctld slurmd slurm-client >/dev/null
}

write_config() {
    if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to replace it (move it away to use the local cluster)."
    fi
    local host node_line node_name
    host=$(hostname -s)
    # `slurmd -C` prints this machine's NodeName=... CPUs=... RealMemory=... line.
    node_line=$(slurmd -C | head -n 1)
    [[ $node_line == NodeName=* ]] || die "slurmd -C did not describe this node (got: $node_line)."
    node_name=${node_line#NodeName=}
    node_name=${node_name%% *}
    "${SUDO[@]}" mkdir -p "$CONF_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$LOG_DIR" "$RUN_DIR"
    "${SUDO[@]}" chown slurm:slurm "$STATE_DIR/slurmctld" "$LOG_DIR" "$RUN_DIR"
    local temp
    temp=$(mktemp)
    cat >"$temp" <<EOF
$MARKER: a one-node cluster on localhost.
ClusterName=mtrl-famo-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups: works in containers and sandboxes.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
# One node and a few jobs: look at pending jobs every second, not every 60 s (main loop) and 30 s
# (backfill), so that a job whose start time has come (a re-queued one, below) starts at once.
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
# A re-queued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=10
KillWait=30
SlurmctldTimeout=30
SlurmdTimeout=60
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$node_name Default=YES MaxTime=INFINITE State=UP
EOF
    "${SUDO[@]}" install -m 0644 "$temp" "$CONF.tmp"
    "${SUDO[@]}" mv -f "$CONF.tmp" "$CONF"
    rm -f "$temp"
}

start_munge() {
    if pgrep -x munged >/dev/null; then return; fi
    if [ ! -s /etc/munge/munge.key ]; then
        "${SUDO[@]}" mungekey --create --keyfile /etc/munge/munge.key
        "${SUDO[@]}" chown munge:munge /etc/munge/munge.key
        "${SUDO[@]}" chmod 0400 /etc/munge/munge.key
    fi
    "${SUDO[@]}" mkdir -p /run/munge
    "${SUDO[@]}" chown munge:munge /run/munge
    "${SUDO[@]}" runuser -u munge -- /usr/sbin/munged
}

node_ready() {
    sinfo -h -p "$PARTITION" -o "%T" 2>/dev/null | grep -qE "^(idle|mixed|allocated)"
}

start() {
    install_packages
    local before=""
    [ -f "$CONF" ] && before=$(cat "$CONF")
    write_config
    start_munge
    if pgrep -x slurmctld >/dev/null && [ "$before" != "$(cat "$CONF")" ]; then
        "${SUDO[@]}" scontrol reconfigure
    fi
    pgrep -x slurmctld >/dev/null || "${SUDO[@]}" slurmctld
    pgrep -x slurmd >/dev/null || "${SUDO[@]}" slurmd
    local waited=0
    until node_ready; do
        if [ "$waited" -ge 60 ]; then
            tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
            die "the node did not become ready within 60 s (logs above)."
        fi
        # A node left DOWN by an earlier unclean stop comes back with RESUME.
        "${SUDO[@]}" scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        sleep 1
        waited=$((waited + 1))
    done
    say "running: partition '$PARTITION' on $(hostname -s)"
}

stop() {
    if pgrep -x slurmctld >/dev/null; then "${SUDO[@]}" scontrol shutdown >/dev/null 2>&1 || true; fi
    for daemon in slurmd slurmctld munged; do
        for _ in $(seq 30); do pgrep -x "$daemon" >/dev/null || break; sleep 0.5; done
        if pgrep -x "$daemon" >/dev/null; then "${SUDO[@]}" pkill -x "$daemon" || true; fi
    done
    say "stopped"
}

status() {
    local code=0
    for daemon in munged slurmctld slurmd; do
        if pgrep -x "$daemon" >/dev/null; then echo "$daemon: running"; else echo "$daemon: stopped"; code=1; fi
    done
    if [ "$code" -eq 0 ]; then sinfo; fi
    return "$code"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "unknown command '${1:-}'; use start, stop or status." ;;
esac
