#!/usr/bin/env bash
# A one-node SLURM on this machine, from Debian's packages, for the slurm tests and for trying
# jobs/train.sbatch on a workstation (no systemd needed).
#
#   jobs/slurm-local.sh up      installs what is missing, starts munged, slurmctld and slurmd, waits until
#                               the node is idle, prints the line to source: export SLURM_CONF=...
#   jobs/slurm-local.sh down    stops exactly the daemons `up` started (by their pid files), removes the folder
#   jobs/slurm-local.sh status  sinfo and squeue of this cluster
#
# Everything lives in RT_SLURM_DIR (default /tmp/ringtrain-slurm): slurm.conf, state, spool, logs, pid
# files. Clients find the cluster through SLURM_CONF=$RT_SLURM_DIR/slurm.conf (nothing under /etc/slurm
# is changed). Needs root (slurmd runs jobs as their users; SlurmUser=root keeps this simple).
# Settings, and why:
#   ProctrackType=proctrack/linuxproc, TaskPlugin=task/none: no cgroup setup needed in a container
#   SelectType=select/cons_tres: cores are the unit, so a 2-task job and a test's own steps fit together
#   MpiDefault=pmix: Debian's Open MPI speaks PMIx only (srun --mpi=pmi2 fails to wire it up)
#   JobRequeue=1: batch jobs can be requeued (preemption, the time limit)
#   AuthInfo=cred_expire=10: a requeued job is eligible again after 10 s, not 120 s
#   SchedulerParameters=sched_interval=2,bf_interval=2: a requeued job starts seconds after it is eligible
#     (with the defaults it waited about 30 s more)
#   KillWait=30 (SLURM's default: SIGTERM, then SIGKILL 30 s later), MailProg=/bin/true
set -euo pipefail
dir=${RT_SLURM_DIR:-/tmp/ringtrain-slurm}
conf=$dir/slurm.conf

install_packages() {
  local missing=()
  for p in slurmctld slurmd slurm-client munge iproute2; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Whether any TCP socket on this host uses a port (a cluster that was just stopped may hold it a while longer).
port_busy() { ss -Htan "sport = :$1" 2>/dev/null | grep -q .; }

# slurmctld, once its port is free; started again when it exits at start-up (it exits when the port is still
# held, as right after another cluster on the same port went down).
start_slurmctld() {
  local port=$1 attempt
  for attempt in 1 2 3 4 5; do
    for _ in $(seq 450); do # up to 90 s
      port_busy "$port" || break
      sleep 0.2
    done
    /usr/sbin/slurmctld -f "$conf"
    sleep 1
    alive "$dir/slurmctld.pid" && return 0
    echo "slurm-local.sh: slurmctld exited at start (attempt $attempt); retrying" >&2
  done
  echo "slurm-local.sh: slurmctld does not stay up; its log:" >&2
  tail -n 5 "$dir/log/slurmctld.log" >&2 || true
  down
  exit 1
}

up() {
  [ "$(id -u)" -eq 0 ] || { echo "slurm-local.sh: up needs root (slurmd runs the jobs)" >&2; exit 1; }
  install_packages
  if alive "$dir/slurmctld.pid"; then
    echo "slurm-local.sh: already up in $dir (jobs/slurm-local.sh down first)" >&2
    exit 1
  fi
  mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/munge"
  chmod 755 "$dir"
  chown munge:munge "$dir/munge"
  if ! runuser -u munge -- test -x "$dir/munge"; then
    echo "slurm-local.sh: the munge user cannot reach $dir (a folder above it is closed to others)" >&2
    exit 1
  fi
  local host cpus
  host=$(hostname -s)
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) # nproc obeys OMP_NUM_THREADS
  cat >"$conf" <<CONF
ClusterName=ringtrain-local
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=${RT_SLURM_PORT:-6817}
SlurmdPort=$(( ${RT_SLURM_PORT:-6817} + 1 ))
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket.2,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
JobRequeue=1
KillWait=30
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  # munged as the munge user, its socket and pid in our folder (no /run/munge needed)
  runuser -u munge -- /usr/sbin/munged --socket="$dir/munge/munge.socket.2" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed"
  cp "$dir/munge/munged.pid" "$dir/munged.pid"
  start_slurmctld "${RT_SLURM_PORT:-6817}"
  /usr/sbin/slurmd -f "$conf"
  export SLURM_CONF=$conf
  # 60 s of wall time whatever sinfo takes (it blocks for seconds while the controller is unreachable)
  local deadline=$((SECONDS + 60))
  while [ $SECONDS -lt $deadline ]; do
    if timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -q '^idle'; then
      echo "slurm-local.sh: node $host idle ($cpus CPUs), state in $dir"
      echo "export SLURM_CONF=$conf"
      return 0
    fi
    sleep 0.2
  done
  echo "slurm-local.sh: the node did not become idle within 60 s; logs in $dir/log:" >&2
  tail -n 5 "$dir/log/"*.log >&2 || true
  down
  exit 1
}

down() {
  local pid_file
  for pid_file in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
    alive "$pid_file" || continue
    local pid
    pid=$(cat "$pid_file")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) SLURM_CONF=$conf sinfo && SLURM_CONF=$conf squeue ;;
  *) echo "usage: jobs/slurm-local.sh up|down|status" >&2; exit 2 ;;
esac
