#!/usr/bin/env bash
# The whole test suite: unit, property, integration and cross-process tests,
# then the loom model of the seqlock. This is the README's test command and
# what .ci/run runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Objects of test instances that exist before the run (left by a run that was
# killed, which no Drop can clean) are not this run's: only new ones fail it.
shm_before=$(ls /dev/shm 2>/dev/null | grep '^shmkline-t' || true)
if [ -n "$shm_before" ]; then
    echo "warning: shared-memory objects of an earlier, interrupted test run (not checked):" >&2
    echo "$shm_before" >&2
fi

echo "==> cargo test --workspace"
cargo test --workspace --locked

# The loom model is compiled with --cfg loom (loom's atomics replace std's in
# the seqlock core) into its own target directory, so it never invalidates the
# normal build. --release: loom explores every interleaving; optimised, that
# takes seconds.
echo "==> loom model of the seqlock (RUSTFLAGS=--cfg loom)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test --locked --release -p shmkline-protocol --test loom_seqlock

leftovers=$(comm -13 <(echo "$shm_before" | sort) \
    <(ls /dev/shm 2>/dev/null | grep '^shmkline-t' | sort) | grep . || true)
if [ -n "$leftovers" ]; then
    echo "error: tests left shared-memory objects behind:" >&2
    echo "$leftovers" >&2
    exit 1
fi
