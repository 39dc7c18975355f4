#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the node's decoders and its segment: the
# targets are the functions of node/src/fuzz.rs, one cargo-fuzz binary each (fuzz/).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 60 s, every target
#
# Runs on the stable toolchain without a sanitizer (Rust's own checks are what finds bugs:
# bounds, overflow checks and debug assertions are on in fuzz/Cargo.toml's profile); with
# SANITIZER=address it builds with AddressSanitizer through RUSTC_BOOTSTRAP=1. Installs
# cargo-fuzz when missing. The corpus grows in fuzz/corpus/TARGET (not committed); a crash is
# saved in fuzz/artifacts/TARGET/ and the script stops with the command that replays it. At the
# end it prints each target's executions and corpus size. The test command runs the same
# targets for a bounded number of inputs (node unit test fuzz_targets_survive_a_bounded_run).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
[ $# -gt 0 ] && shift
sanitizer=${SANITIZER:-none}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz..."
    cargo install cargo-fuzz --locked
fi
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "building the fuzz targets (sanitizer $sanitizer)..."
# Inside the workspace's target directory (its own subdirectory: another profile and target).
target_dir="$PWD/target/fuzz"
cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir"
summary=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/regressions/$target"
    log=$(mktemp)
    echo "fuzzing $target for $seconds s..."
    if ! cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$target" \
        "fuzz/corpus/$target" \
        "fuzz/regressions/$target" -- -max_total_time="$seconds" -print_final_stats=1 \
        -rss_limit_mb=4096 -max_len=12288 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz target $target failed: the input is in fuzz/artifacts/$target/;" \
            "replay it with: cargo fuzz run --sanitizer $sanitizer $target fuzz/artifacts/$target/FILE" >&2
        exit 1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    summary+=("$(printf '%-16s %12s execs %7s corpus inputs' "$target" "$execs" "$corpus")")
    rm -f "$log"
done
echo
echo "fuzzed ${#targets[@]} target(s), $seconds s each, sanitizer $sanitizer, no crash:"
printf '  %s\n' "${summary[@]}"
