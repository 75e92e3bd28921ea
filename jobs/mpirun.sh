#!/usr/bin/env bash
# ringtrain under plain mpirun (a hostfile, no scheduler), resuming by itself and stopping cleanly.
#
#   jobs/mpirun.sh -np 8 --hostfile hosts.txt [--config my.ini] [ringtrain train options...]
#
# -np N (default 2), --hostfile FILE (optional; see Open MPI's mpirun(1)) and --config FILE (default
# jobs/configs/quickstart.ini) are read here; every other argument goes to `ringtrain train`. Extra
# mpirun options: RINGTRAIN_MPIRUN_ARGS; the binary: RINGTRAIN_BIN (default build/ringtrain).
#
# Binding: each rank gets RINGTRAIN_CORES_PER_RANK cores (--map-by slot:PE=K --bind-to core), by default this
# machine's cores over the ranks when there is no hostfile; with a hostfile and no RINGTRAIN_CORES_PER_RANK,
# or more ranks than cores, ranks are not bound and split their node (ringtrain counts the ranks per node).
# Open MPI's own default binds 1-2 ranks to one core each, which leaves a rank one thread. A --bind-to or
# --map-by in RINGTRAIN_MPIRUN_ARGS replaces all of this.
#
# Every start runs `ringtrain train --resume`: it continues from the newest complete checkpoint, or
# starts fresh and says so. Stopping: Ctrl-C, SIGTERM or SIGUSR1 to this script becomes SIGUSR1 to
# mpirun, which Open MPI 4.1 passes to the ranks at once (SIGTERM or SIGINT to mpirun itself is followed
# by SIGKILL one second later, too soon for a save): the ranks save a checkpoint at the next layer
# boundary and exit 75. A second Ctrl-C is passed on as well (the save goes on); a third ends the ranks
# at once. The exit code is the run's: 0 finished, 75 stopped with a complete checkpoint, else failed.
# A rank that dies takes the job down (mpirun ends every rank when one exits non-zero).

signals=0
forward() {
  signals=$((signals + 1))
  [ -n "${mpirun_pid:-}" ] || return 0
  if [ $signals -ge 3 ]; then
    kill -KILL "$mpirun_pid" 2>/dev/null
  else
    kill -USR1 "$mpirun_pid" 2>/dev/null
  fi
}
trap forward INT TERM USR1
set -uo pipefail

np=2 hostfile=() config=${RINGTRAIN_CONFIG:-jobs/configs/quickstart.ini} train_args=()
while [ $# -gt 0 ]; do
  case $1 in
    -np | -n) np=$2; shift 2 ;;
    --hostfile) hostfile=(--hostfile "$2"); shift 2 ;;
    --config) config=$2; shift 2 ;;
    *) train_args+=("$1"); shift ;;
  esac
done
bin=${RINGTRAIN_BIN:-build/ringtrain}
[ -x "$bin" ] || { echo "mpirun.sh: $bin is not an executable (set RINGTRAIN_BIN)" >&2; exit 1; }
[ -r "$config" ] || { echo "mpirun.sh: cannot read $config (--config)" >&2; exit 1; }
read -r -a extra <<<"${RINGTRAIN_MPIRUN_ARGS:-}"
[ "$(id -u)" -eq 0 ] && extra+=(--allow-run-as-root)
binding=()
if [[ " ${extra[*]} " != *" --bind-to "* && " ${extra[*]} " != *" --map-by "* ]]; then
  cores=$(env -u OMP_NUM_THREADS nproc)
  pe=${RINGTRAIN_CORES_PER_RANK:-}
  [ -z "$pe" ] && [ ${#hostfile[@]} -eq 0 ] && [ "$np" -le "$cores" ] && pe=$((cores / np))
  if [ -n "$pe" ]; then
    binding=(--map-by "slot:PE=$pe" --bind-to core)
  else
    binding=(--bind-to none)
  fi
fi
echo "ringtrain via mpirun start $(date -u +%FT%TZ): $np ranks${hostfile:+ from ${hostfile[1]}}, config $config," \
  "binding ${binding[*]:-(RINGTRAIN_MPIRUN_ARGS)}"
mpirun -np "$np" "${hostfile[@]}" "${binding[@]}" "${extra[@]}" "$bin" train --config "$config" --resume "${train_args[@]}" &
mpirun_pid=$!
[ $signals -gt 0 ] && kill -USR1 "$mpirun_pid" 2>/dev/null # a signal came before the launch

status=0
while :; do
  wait "$mpirun_pid"
  status=$?
  kill -0 "$mpirun_pid" 2>/dev/null || break
done
echo "ringtrain via mpirun end $(date -u +%FT%TZ): exit $status"
exit "$status"
