#!/usr/bin/env bash
# Benchmarks with in-run baselines: builds release binaries, then runs every
# `shmkline bench`. Each report ends with its targets (value, limit, met).
# Pass --json for one JSON object per bench.
# Criterion's micro-benchmarks: cargo bench -p shmkline-protocol
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace
json=()
[ "${1:-}" = "--json" ] && json=(--json)
for bench in store wake ping spawn feed traders; do
    echo "==> shmkline bench $bench" >&2
    ./target/release/shmkline bench "$bench" "${json[@]}"
done
