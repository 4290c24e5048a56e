#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ with AFL++ (afl.rs, stable toolchain) and runs each
# for a bounded time, one after the other on one core.
#
#   scripts/fuzz.sh [--smoke | SECONDS] [TARGET...]
#
# --smoke runs each target for 20 s (what CI runs); SECONDS sets the time per target
# (default 60); TARGETs name some of: emulate translate scan multiboot elf bzimage
# policy service_node (default: all). FUZZ_RESUME=1 continues each target from the queue
# its last run left instead of starting from the seeds. Findings stay in target/afl/out/<target>/default/
# {crashes,hangs}; the script prints executions per second, coverage and findings per
# target and fails when a target found a crash or a hang (a saved hang that finishes
# within 20 s when run again is reported as slow, not counted).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
case "${1:-}" in
    --smoke) seconds=20; shift ;;
    ''|-*) ;;
    *[!0-9]*) echo "usage: $0 [--smoke | SECONDS] [TARGET...]" >&2; exit 2 ;;
    *) seconds=$1; shift ;;
esac
all=(emulate translate scan multiboot elf bzimage policy service_node)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

if ! cargo afl --version >/dev/null 2>&1; then
    cargo install --locked cargo-afl --version 0.18.2
fi
# Builds AFL++ and its runtime for this rustc once; says so (and fails) when it already
# has, which is fine.
cargo afl config --build >/dev/null 2>&1 || true

# A target directory of its own: the instrumented build must not evict the normal one.
export CARGO_TARGET_DIR=target/afl
cargo afl build --release -p fuzz --features afl --bins

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
export AFL_NO_AFFINITY=1 AFL_SKIP_CRASHES=1
failed=0
printf '%-13s %8s %10s %12s %8s %6s\n' target seconds execs/s edges crashes hangs
for t in "${targets[@]}"; do
    out=target/afl/out/$t
    seeds=fuzz/corpus/$t
    if [ "${FUZZ_RESUME:-0}" = 1 ] && [ -d "$out/default/queue" ]; then
        seeds=-
    else
        rm -rf "$out"
        mkdir -p "$(dirname "$out")"
    fi
    # -V: stop after SECONDS; -t: a case running over 2 s is a hang.
    cargo afl fuzz -V "$seconds" -t 2000 -i "$seeds" -o "$out" \
        "target/afl/release/fuzz_$t" >"target/afl/$t.log" 2>&1 || {
        echo "$t: afl-fuzz failed, see target/afl/$t.log" >&2
        failed=1
        continue
    }
    stats=$out/default/fuzzer_stats
    get() { awk -F' *: *' -v k="$1" '$1==k {print $2}' "$stats"; }
    # Crash files of this run (AFL++'s counter also counts those a resumed run moved
    # aside into crashes.<date>/).
    crashes=$(find "$out/default/crashes" -name 'id*' 2>/dev/null | wc -l)
    # AFL++ saves an input as a hang when one run took over 2 s, which a load spike on a
    # shared machine can cause: each is run again with 20 s, and only those that still do
    # not finish count.
    hangs=0
    slow=0
    for h in "$out"/default/hangs/id*; do
        [ -e "$h" ] || continue
        if timeout 20 "target/afl/release/fuzz_$t" <"$h" >/dev/null 2>&1; then
            slow=$((slow + 1))
        else
            hangs=$((hangs + 1))
        fi
    done
    printf '%-13s %8s %10s %12s %8s %6s\n' "$t" "$seconds" "$(get execs_per_sec)" \
        "$(get edges_found)/$(get total_edges)" "$crashes" "$hangs"
    if [ "$slow" != 0 ]; then
        echo "$t: $slow input(s) AFL++ saved as hangs finish when run again (slow under load, not hangs)"
    fi
    if [ "${crashes:-0}" != 0 ] || [ "${hangs:-0}" != 0 ]; then
        echo "$t: findings in $out/default/crashes and $out/default/hangs" >&2
        failed=1
    fi
done
exit $failed
