#!/usr/bin/env bash
# The engine under chaos for N minutes, every process's memory watched:
# a live run on the loopback stand-in exchange (cut every 20 s), a webhook
# sink with outages, random worker SIGKILLs and SIGSTOPs, trader churn.
# Prints the report (per-process growth in MB/h after the warm-up; fds,
# threads, zombies, /dev/shm) and exits non-zero past the threshold
# (default 1 MB/h; judged only on a fit of 5 minutes or more, so a soak
# of under about 6 minutes reports figures without a verdict) or with
# anything left behind.
#   scripts/soak.sh [--minutes N] [--threshold MB_PER_H] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace
exec ./target/release/shmkline --instance "soak-$$" soak "$@"
