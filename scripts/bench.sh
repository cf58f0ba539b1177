#!/usr/bin/env bash
# Benchmarks with in-run baselines: builds release binaries, then runs
# `shmkline bench store` and `shmkline bench wake`. Each report ends with its
# targets (value, limit, met). Pass --json for one JSON object per bench.
# Criterion's micro-benchmarks: cargo bench -p shmkline-protocol
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p shmkline-engine
json=()
[ "${1:-}" = "--json" ] && json=(--json)
echo "==> shmkline bench store" >&2
./target/release/shmkline bench store "${json[@]}"
echo "==> shmkline bench wake" >&2
./target/release/shmkline bench wake "${json[@]}"
