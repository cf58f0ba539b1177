#!/usr/bin/env bash
# Benchmarks with in-run baselines: builds release binaries, then runs every
# `shmkline bench`. Each report ends with its targets (value, limit, met).
# Pass --json for one JSON object per bench.
# Criterion's micro-benchmarks: cargo bench -p shmkline-protocol --bench store,
# cargo bench -p shmkline-worker --features testing --bench rules.
#
# Built with the tools' `testing` feature (the engine's with it): `bench
# store` measures how fast a reader gives up on a slot a dead writer left
# mid-write, and only the test hooks can leave one so (a plain `cargo build
# --release` has none of them). `shmkline bench` runs `shmkline-tools`,
# built next to it by the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --features shmkline-tools/testing
json=()
[ "${1:-}" = "--json" ] && json=(--json)
for bench in store wake ping spawn feed backfill traders burst sinks nats observe fanout; do
    echo "==> shmkline bench $bench" >&2
    ./target/release/shmkline bench "$bench" "${json[@]}"
done
