#!/usr/bin/env bash
# Bring up a single-node SLURM on this machine from Debian packages, with accounting.
#
#   sudo bash scripts/slurm_up.sh          # install (if needed), configure, start, check
#   sudo bash scripts/slurm_up.sh --down   # stop the daemons this script starts
#
# What it sets up (Debian 12: SLURM 22.05):
#   munge      authentication (the Debian package creates /etc/munge/munge.key)
#   MariaDB    database `slurm_acct_db`, user `slurm`@localhost (password: $SLURM_DB_PASS)
#   slurmdbd   accounting daemon, so `sacct` (and submitit, which reads job states through
#              sacct) knows finished, failed and cancelled jobs
#   slurmctld  controller, cluster `$SLURM_CLUSTER` (default "workbench"), one partition
#              "debug" (default) holding this node
#   slurmd     compute daemon for this node: all its CPUs, 90 % of its memory,
#              select/cons_tres with CR_CPU (jobs of 1 CPU share the node),
#              TaskPlugin $SLURM_TASK_PLUGIN (default task/none: no CPU binding, the case
#              where a job must limit its own threads to its cpus_per_task)
#
# Idempotent: packages are installed only when missing, configuration files are rewritten
# (the old ones kept as *.bak once), daemons already running are left running (their
# configuration is reloaded with `scontrol reconfigure` when slurm.conf changed), the
# database, its user and the cluster are created only when missing. Works without systemd
# (containers): the daemons are started directly. Needs root.
set -euo pipefail

CLUSTER=${SLURM_CLUSTER:-workbench}
DB_PASS=${SLURM_DB_PASS:-workbench-slurm}
TASK_PLUGIN=${SLURM_TASK_PLUGIN:-task/none}
NODE=$(hostname -s)
CONF=/etc/slurm
LOG=/var/log/slurm

log() { printf '[slurm_up] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
running() { pgrep -x "$1" >/dev/null 2>&1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

stop_all() {
  for d in slurmd slurmctld slurmdbd; do
    if running "$d"; then
      log "stopping $d"
      kill "$(pgrep -x "$d")" 2>/dev/null || true
    fi
  done
  for _ in $(seq 20); do running slurmd || running slurmctld || running slurmdbd || break; sleep 0.5; done
  if [ -x /etc/init.d/mariadb ]; then /etc/init.d/mariadb stop >/dev/null 2>&1 || true; fi
  if running munged; then kill "$(pgrep -x munged)" 2>/dev/null || true; fi
  log "stopped"
}
if [ "${1:-}" = "--down" ]; then stop_all; exit 0; fi

# ------------------------------------------------------------------ packages
need=()
for pkg in slurm-wlm slurm-client slurmdbd mariadb-server munge; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# ------------------------------------------------------------------ munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating /etc/munge/munge.key"
  /usr/sbin/mungekey --create --force
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! running munged; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 20); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
munge -n </dev/null | unmunge >/dev/null 2>&1 || die "munge does not work (see /var/log/munge/munged.log)"

# ------------------------------------------------------------------ MariaDB
if ! mysqladmin ping >/dev/null 2>&1; then
  log "starting MariaDB"
  /etc/init.d/mariadb start >/dev/null
fi
for _ in $(seq 30); do mysqladmin ping >/dev/null 2>&1 && break; sleep 1; done
mysqladmin ping >/dev/null 2>&1 || die "MariaDB does not answer (see /var/log/mysql/error.log)"
mysql -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# ------------------------------------------------------------------ configuration
install -d -o slurm -g slurm -m 0755 $LOG /var/lib/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
install -d -m 0755 $CONF

write_conf() {  # write_conf FILE MODE OWNER < content; returns 0 if the file changed
  local file=$1 mode=$2 owner=$3 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -f "$file" ] && cmp -s "$tmp" "$file"; then rm -f "$tmp"; return 1; fi
  if [ -f "$file" ] && [ ! -f "$file.bak" ]; then cp -p "$file" "$file.bak"; fi
  install -m "$mode" -o "$owner" -g "$owner" "$tmp" "$file"
  rm -f "$tmp"
  log "wrote $file"
  return 0
}

CPUS=$(nproc --all)
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)

conf_changed=0
write_conf $CONF/slurmdbd.conf 600 slurm <<EOF || true
# written by scripts/slurm_up.sh
AuthType=auth/munge
DbdHost=localhost
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=/run/slurmdbd.pid
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=${DB_PASS}
EOF

write_conf $CONF/slurm.conf 644 root <<EOF && conf_changed=1 || true
# written by scripts/slurm_up.sh: single node "$NODE", accounting through slurmdbd
ClusterName=$CLUSTER
SlurmctldHost=$NODE
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=$TASK_PLUGIN
ReturnToService=2
SlurmUser=slurm
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/lib/slurm/slurmd
StateSaveLocation=/var/lib/slurm/slurmctld
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
KillWait=10
SlurmctldDebug=info
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdDebug=info
SlurmdLogFile=$LOG/slurmd.log
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

write_conf $CONF/cgroup.conf 644 root <<EOF || true
# written by scripts/slurm_up.sh (cgroups are not used: proctrack/linuxproc)
CgroupPlugin=autodetect
IgnoreSystemd=yes
EOF

# ------------------------------------------------------------------ daemons
if ! running slurmdbd; then
  log "starting slurmdbd"
  /usr/sbin/slurmdbd
fi
for _ in $(seq 30); do sacctmgr -n -P show cluster >/dev/null 2>&1 && break; sleep 1; done
sacctmgr -n -P show cluster >/dev/null 2>&1 || die "slurmdbd does not answer (see $LOG/slurmdbd.log)"
if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
  log "registering cluster $CLUSTER in the accounting database"
  sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

if running slurmctld; then
  if [ $conf_changed = 1 ]; then log "slurm.conf changed: reconfigure"; scontrol reconfigure || true; fi
else
  log "starting slurmctld"
  /usr/sbin/slurmctld
fi
for _ in $(seq 30); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 1; done
scontrol ping 2>/dev/null | grep -q UP || die "slurmctld does not answer (see $LOG/slurmctld.log)"

if ! running slurmd; then
  log "starting slurmd"
  /usr/sbin/slurmd
fi
state=""
for _ in $(seq 30); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1)
  case "$state" in idle*|mixed*|allocated*|completing*) break ;; esac
  sleep 1
done
case "$state" in
  down*|drain*|fail*)
    log "node $NODE is $state: resuming it"
    scontrol update nodename="$NODE" state=resume || true
    sleep 2
    state=$(sinfo -h -n "$NODE" -o %T | head -1) ;;
esac
case "$state" in idle*|mixed*|allocated*|completing*) ;; *)
  die "node $NODE is '${state:-not registered}' (see $LOG/slurmd.log and $LOG/slurmctld.log)" ;;
esac

# ------------------------------------------------------------------ check
out=$(srun -N1 -n1 -c1 --time=1 hostname 2>&1) || die "srun failed: $out"
jid=$(sbatch --parsable -o /dev/null --wrap true -c1 --time=1)
for _ in $(seq 30); do
  st=$(sacct -j "$jid" -n -X -P -o State 2>/dev/null | head -1)
  [ "$st" = COMPLETED ] && break
  sleep 1
done
[ "${st:-}" = COMPLETED ] || die "sacct does not report job $jid as COMPLETED (got '${st:-nothing}'); check slurmdbd"
log "SLURM is up: cluster $CLUSTER, node $NODE ($CPUS CPUs, ${MEM_MB} MB), srun ran on $out, sacct reads job states"
sinfo
