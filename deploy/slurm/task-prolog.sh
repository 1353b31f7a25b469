#!/bin/sh
# SLURM TaskProlog (slurm.conf: TaskProlog=/etc/slurm/carbonwatch-task-prolog.sh): lines it prints as
# `export NAME=value` enter the task's environment. carbonwatch needs none of them (it finds the job by its
# cgroup and SLURM_JOB_*); they only add labels SLURM does not have. A job's own CARBONWATCH_* wins: set
# in the batch script (export CARBONWATCH_MODEL=llama-7b) they are left alone here.
#
# team: from the job's account through a site mapping file "account team" per line, if there is one.
map=${CARBONWATCH_ACCOUNT_TEAMS:-/etc/carbonwatch/account-teams}
if [ -z "${CARBONWATCH_TEAM:-}" ] && [ -n "${SLURM_JOB_ACCOUNT:-}" ] && [ -r "$map" ]; then
  team=$(awk -v a="$SLURM_JOB_ACCOUNT" '$1 == a { print $2; exit }' "$map")
  case "$team" in
    ''|*[!A-Za-z0-9_.-]*) ;;  # nothing, or not a plain name: leave it out
    *) echo "export CARBONWATCH_TEAM=$team" ;;
  esac
fi
# model: SLURM_JOB_NAME is the default; a --comment of the form model=<name> overrides it.
if [ -z "${CARBONWATCH_MODEL:-}" ]; then
  case "${SLURM_JOB_COMMENT:-}" in
    model=*)
      model=${SLURM_JOB_COMMENT#model=}
      case "$model" in
        ''|*[!A-Za-z0-9_.:-]*) ;;
        *) echo "export CARBONWATCH_MODEL=$model" ;;
      esac
      ;;
  esac
fi
exit 0
