#!/usr/bin/env bash
# Fuzzes every external input (see engine/src/fuzz/mod.rs for the targets).
#   scripts/fuzz.sh [--minutes N] [--engine libfuzzer|volume] [TARGET...]
# libFuzzer (coverage-guided, with AddressSanitizer) through `cargo fuzz`
# needs a nightly toolchain and cargo-fuzz: the script installs both with
# rustup and cargo when they are missing (set FUZZ_NO_INSTALL=1 to refuse),
# and falls back to the volume fuzzer (stable Rust, no coverage) when they
# cannot be had. Each target runs N minutes (default 1). Prints inputs
# tried and crashes per target; a crash's input is saved under
# tests/fuzz/artifacts/<target>/ and the script exits non-zero: add the
# input to tests/fuzz/regressions/<target>/ with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=1
engine=auto
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --engine) engine="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown flag $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
case "$minutes" in ''|*[!0-9]*|0) echo "fuzz.sh: --minutes takes a whole number of minutes, at least 1, not '$minutes'" >&2; exit 2 ;; esac
case "$engine" in auto|libfuzzer|volume) ;; *) echo "fuzz.sh: --engine is libfuzzer or volume, not '$engine'" >&2; exit 2 ;; esac
asked=$engine
seconds=$((minutes * 60))

have_libfuzzer() {
  rustup run nightly rustc --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1
}
if [ "$engine" = auto ] || [ "$engine" = libfuzzer ]; then
  if ! have_libfuzzer && [ "${FUZZ_NO_INSTALL:-0}" != 1 ]; then
    echo "fuzz.sh: installing the nightly toolchain and cargo-fuzz (libFuzzer needs them)" >&2
    rustup toolchain install nightly --profile minimal >&2 || true
    cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked >&2 || true
  fi
  if have_libfuzzer; then
    engine=libfuzzer
  elif [ "$engine" = libfuzzer ]; then
    echo "fuzz.sh: cargo fuzz on nightly is not available" >&2; exit 1
  else
    echo "fuzz.sh: no nightly/cargo-fuzz: the volume fuzzer instead (no coverage guidance)" >&2
    engine=volume
  fi
fi

cargo build --release --locked -p shmkline-engine --features fuzzing --bin fuzz-volume >&2
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
volume="$target_dir/release/fuzz-volume"
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(ls tests/fuzz/fuzz_targets | sed 's/\.rs$//')

# Stale segments of a crashed segment target (it unlinks its own otherwise).
trap 'rm -f /dev/shm/shmkline-fuzzseg* /dev/shm/shmkline-fuzzseed*' EXIT

status=0
if [ "$engine" = volume ]; then
  "$volume" --seconds "$seconds" --save tests/fuzz/artifacts "${targets[@]}" || status=$?
  exit $status
fi

# Its own target directory, whatever CARGO_TARGET_DIR says: the sanitizer
# build shares nothing with the workspace's.
# libfuzzer-sys compiles libFuzzer itself: a C++ compiler is needed too.
if ! (cd tests/fuzz && env -u CARGO_TARGET_DIR cargo +nightly fuzz build -O --fuzz-dir . >&2); then
  if [ "$asked" = libfuzzer ]; then
    echo "fuzz.sh: the libFuzzer build failed (see above)" >&2; exit 1
  fi
  echo "fuzz.sh: the libFuzzer build failed (see above; libFuzzer needs a C++ compiler: apt-get install g++): the volume fuzzer instead" >&2
  "$volume" --seconds "$seconds" --save tests/fuzz/artifacts "${targets[@]}" || status=$?
  exit $status
fi
printf '%-16s %12s %8s %s\n' target inputs crashes engine
for t in "${targets[@]}"; do
  corpus=tests/fuzz/corpus/$t
  # This run's crashes only: an earlier run's are in artifacts/<t>/old/.
  mkdir -p "$corpus" "tests/fuzz/artifacts/$t/old"
  find "tests/fuzz/artifacts/$t" -maxdepth 1 -type f -exec mv -t "tests/fuzz/artifacts/$t/old" {} +
  "$volume" --write-seeds tests/fuzz/corpus "$t"
  cp -n tests/fuzz/regressions/"$t"/* "$corpus"/ 2>/dev/null || true
  log=$(mktemp)
  set +e
  (cd tests/fuzz && env -u CARGO_TARGET_DIR cargo +nightly fuzz run -O --fuzz-dir . "$t" "corpus/$t" -- \
      -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/") > "$log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(find "tests/fuzz/artifacts/$t" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l)
  set -e
  printf '%-16s %12s %8s %s\n' "$t" "${runs:-?}" "$crashes" libfuzzer
  if [ "$rc" -ne 0 ]; then
    status=1
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -5 >&2
  fi
  rm -f "$log"
done
exit $status
