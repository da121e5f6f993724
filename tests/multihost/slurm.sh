#!/usr/bin/env bash
# A SLURM cluster on this one machine for the tier-2 tests (root; Debian's SLURM 22.05):
# one slurmctld and NODES slurmd processes, each a "node" on 127.0.0.1 with its own port,
# munge for authentication.  Settings and pitfalls as measured in the project's notes.
#
#   slurm.sh install          apt-get install slurmd slurmctld slurm-client munge, and
#                             openssh-server/-client for the ssh tests (root)
#   slurm.sh up DIR [NODES]   write DIR/slurm.conf, start munged (if needed) and the daemons,
#                             wait until every node is idle; prints SLURM_CONF=DIR/slurm.conf
#   slurm.sh down DIR         stop the daemons this script started under DIR (by pid file)
set -euo pipefail

install_packages() {
    [ "$(id -u)" = 0 ] || { echo "slurm.sh install: needs root" >&2; exit 2; }
    command -v apt-get >/dev/null || { echo "slurm.sh install: no apt-get here" >&2; exit 2; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurmd slurmctld slurm-client munge \
        openssh-server openssh-client >/dev/null
}

up() {
    local dir=$1 nodes=${2:-4} host port
    [ "$(id -u)" = 0 ] || { echo "slurm.sh up: needs root" >&2; exit 2; }
    command -v slurmd >/dev/null || { echo "slurm.sh up: slurmd is not installed" >&2; exit 2; }
    host=$(hostname -s)
    # Ports from the pid: two clusters on one machine (two CI runs) do not collide.
    port=$((20000 + ($$ % 2000) * 10))
    mkdir -p "$dir"/spool/ctld "$dir"/run "$dir"/log
    {
        echo "ClusterName=lmci"
        echo "SlurmctldHost=$host(127.0.0.1)"
        echo "SlurmctldPort=$port"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "CredType=cred/munge"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "SwitchType=switch/none"
        echo "MpiDefault=none"
        echo "ReturnToService=2"
        echo "SlurmdParameters=config_overrides"
        echo "SchedulerType=sched/builtin"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_CPU"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "AccountingStorageType=accounting_storage/none"
        echo "JobCompType=jobcomp/none"
        echo "KillWait=3"
        echo "MessageTimeout=5"
        echo "SlurmdTimeout=30"
        echo "StateSaveLocation=$dir/spool/ctld"
        echo "SlurmdSpoolDir=$dir/spool/%n"
        echo "SlurmctldPidFile=$dir/run/slurmctld.pid"
        echo "SlurmdPidFile=$dir/run/slurmd-%n.pid"
        echo "SlurmctldLogFile=$dir/log/slurmctld.log"
        echo "SlurmdLogFile=$dir/log/slurmd-%n.log"
        for i in $(seq 1 "$nodes"); do
            echo "NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + i)) CPUs=2 RealMemory=1000"
        done
        echo "PartitionName=ci Nodes=n[1-$nodes] Default=YES MaxTime=INFINITE State=UP"
    } > "$dir/slurm.conf"
    export SLURM_CONF=$dir/slurm.conf
    if ! pgrep -x munged >/dev/null; then
        command install -d -o munge -g munge -m 0755 /run/munge
        runuser -u munge -- /usr/sbin/munged
        touch "$dir/run/started-munged"
    fi
    slurmctld -f "$SLURM_CONF" -i
    for i in $(seq 1 "$nodes"); do
        slurmd -f "$SLURM_CONF" -N "n$i"
    done
    for _ in $(seq 1 100); do
        if [ "$(sinfo -h -o '%T' -t idle -N 2>/dev/null | wc -l)" -ge "$nodes" ]; then
            echo "SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.2
    done
    echo "slurm.sh up: the nodes did not become idle in 20 s; see $dir/log" >&2
    down "$dir"
    exit 1
}

down() {
    local dir=$1 pidfile pid
    for pidfile in "$dir"/run/slurmd-*.pid "$dir"/run/slurmctld.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
    done
    for _ in $(seq 1 50); do
        local left=0
        for pidfile in "$dir"/run/slurmd-*.pid "$dir"/run/slurmctld.pid; do
            [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && left=1
        done
        [ $left = 0 ] && break
        sleep 0.1
    done
    for pidfile in "$dir"/run/slurmd-*.pid "$dir"/run/slurmctld.pid; do
        [ -f "$pidfile" ] && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    done
    if [ -f "$dir/run/started-munged" ]; then
        # The munged this script started, by its pid file (never by name: another may run).
        [ -f /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
        rm -f "$dir/run/started-munged"
    fi
}

case "${1:-}" in
    install) install_packages ;;
    up) up "$2" "${3:-4}" ;;
    down) down "$2" ;;
    *) echo "usage: slurm.sh install | up DIR [NODES] | down DIR" >&2; exit 2 ;;
esac
