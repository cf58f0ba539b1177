#!/usr/bin/env bash
# Chaos: runs `shmkline run` on a paced finite feed, SIGKILLs and SIGSTOPs
# random workers from outside at a steady rate, then compares the run's
# signals with `shmkline backtest` on the same feed and checks for leaks.
# Prints the report (faults by kind; detection and recovery p50/p99/max;
# signals expected, received, lost, duplicated, unexpected; zombies, orphans,
# /dev/shm, coordinator fds and RSS, worker RSS, before and after) and exits
# non-zero if anything was lost, duplicated, unexpected or leaked.
#
#   scripts/chaos.sh                         # 50 kills, 5 stops, 3 workers, 4 symbols x 1200 candles at 40/s
#   scripts/chaos.sh --kills 1000 --stops 20 --candles 6000 --rate 60 --json
#   scripts/chaos.sh --kills 100 --stops 10 --fault-interval 200   # one fault every 200 ms
#
# Every flag of `shmkline chaos --help` is accepted.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace >&2
exec ./target/release/shmkline chaos "$@"
