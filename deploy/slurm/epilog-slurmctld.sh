#!/bin/sh
# SLURM EpilogSlurmctld (slurm.conf: EpilogSlurmctld=/etc/slurm/carbonwatch-epilog.sh), optional: after a job
# ends, store its energy and emissions in the accounting database's AdminComment, so that
#   sacct -j 4242 -o JobID,User,Account,Elapsed,AdminComment%60
# shows them. It waits for the last scrapes and the recording rules (about a minute) in the background, so
# the controller is not held up, and never fails the job.
#   CARBONWATCH_PROMETHEUS  Prometheus with carbonwatch's rules (default http://127.0.0.1:9090)
#   CARBONWATCH_BIN             the carbonwatch command (default: carbonwatch on PATH)
job=${SLURM_JOB_ID:-}
case "$job" in ''|*[!0-9]*) exit 0 ;; esac
bin=${CARBONWATCH_BIN:-carbonwatch}
cluster=${SLURM_CLUSTER_NAME:-}
(
  sleep "${CARBONWATCH_EPILOG_DELAY:-90}"
  row=$("$bin" job "$job" ${cluster:+--cluster "$cluster"} --noheader --parsable2 \
        --format EnergyKWh,CO2eGrams,Cost 2>/dev/null | head -n 1)
  [ -n "$row" ] || exit 0
  kwh=$(echo "$row" | cut -d'|' -f1); grams=$(echo "$row" | cut -d'|' -f2); cost=$(echo "$row" | cut -d'|' -f3)
  sacctmgr -i modify job where jobid="$job" \
    set AdminComment="carbonwatch energy=${kwh}kWh co2e=${grams}g${cost:+ cost=$cost}" >/dev/null 2>&1
) </dev/null >/dev/null 2>&1 &
exit 0
