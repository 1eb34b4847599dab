#!/usr/bin/env bash
# System packages the tests use (Debian): SLURM and munge for tests/test_cluster.py's real cluster.
# Run by `make test` as root on a fresh machine. Idempotent and quiet; it never fails the test run:
# if apt is down or slow the SLURM test reports the missing binaries itself (a failure under CI=true).
set -uo pipefail

need=(slurmctld slurmd munged sbatch srun squeue scontrol go chromium)
export PATH="$PATH:/usr/sbin:/sbin"
missing() { for b in "${need[@]}"; do command -v "$b" >/dev/null 2>&1 || return 0; done; return 1; }

if ! missing; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_system: not root or no apt-get; SLURM not installed (tests/test_cluster.py will say so)" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-qq -o Dpkg::Use-Pty=0 -o Acquire::Retries=3 -o Acquire::http::Timeout=30)

# Packages must not start their services: the test starts (and stops) its own daemons.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
fi
log=$(mktemp)
cleanup() { [ "$made_policy" = 1 ] && rm -f "$policy"; rm -f "$log"; }
trap cleanup EXIT

ok=0
for attempt in 1 2; do
    if timeout 180 apt-get "${apt_opts[@]}" update >"$log" 2>&1 &&
        timeout 480 apt-get "${apt_opts[@]}" install -y --no-install-recommends slurm-wlm munge golang-go chromium >>"$log" 2>&1; then
        ok=1
        break
    fi
    tail -n 20 "$log" >&2
    echo "setup_system: apt-get attempt $attempt failed" >&2
    # a killed install leaves dpkg half-configured; finish it before the retry
    timeout 120 dpkg --configure -a >/dev/null 2>&1
    [ "$attempt" = 1 ] && sleep 15
done
if [ "$ok" = 1 ] && ! missing; then
    echo "setup_system: installed slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null) and munge"
else
    echo "setup_system: could not install slurm-wlm/munge; the SLURM test will fail under CI=true" >&2
fi
exit 0
