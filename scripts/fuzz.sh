#!/usr/bin/env bash
# The long fuzz run (issue 11): every fuzz target that `cargo test` runs a few thousand cases
# of (tests/fuzz/, and any `::fuzz::` module of the crate's own tests for parsers private to
# it), each for SECONDS seconds (default 60), in an optimised build that keeps overflow
# checks and debug assertions: a plain release build wraps an overflow silently, and an
# overflow is one of the panics this is here to find. No root needed.
#
# usage: scripts/fuzz.sh [SECONDS]              e.g. scripts/fuzz.sh 300
#        NFVS_FUZZ_SEED=N scripts/fuzz.sh 60    replays a run (each target prints its seed)
#
# Prints one line per target (cases run, seconds, seed) and a total; exits non-zero if any
# target panicked, after printing the minimal input it found and the seed that replays it.
# The targets run two at a time (FUZZ_THREADS to change), so the run takes about
# SECONDS x targets / 2, plus the build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "fuzz.sh: $*" >&2; exit 1; }

seconds=${1:-60}
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || die "usage: $0 [SECONDS] (seconds per target, default 60)"
threads=${FUZZ_THREADS:-2}

if [[ -d $HOME/.cargo/bin && :$PATH: != *:$HOME/.cargo/bin:* ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

# A profile of its own (target/fuzz/), so the release build of the daemon is not rebuilt.
profile=(
    --config 'profile.fuzz.inherits="release"'
    --config profile.fuzz.overflow-checks=true
    --config profile.fuzz.debug-assertions=true
    --profile fuzz
)
cargo test "${profile[@]}" --no-run --lib --test fuzz

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# cargo's output, also kept in $out for the summary below.
run() {
    "$@" 2>&1 | tee -a "$out"
    return "${PIPESTATUS[0]}"
}

export NFVS_FUZZ_SECONDS=$seconds
echo "fuzz.sh: every target for ${seconds} s, ${threads} at a time"
rc=0
run cargo test "${profile[@]}" --test fuzz -- --test-threads="$threads" --nocapture || rc=$?
run cargo test "${profile[@]}" --lib -- --test-threads="$threads" --nocapture ::fuzz:: || rc=$?

echo
echo "fuzz.sh: cases run per target (${seconds} s each):"
sed -nE 's/^fuzz (.*): ([0-9]+) cases in ([0-9.]+) s, 0 panics.*/\2 \3 \1/p' "$out" |
    awk '{ n = $1; s = $2; $1 = $2 = ""; sub(/^ +/, ""); printf "  %-45s %12d cases %7.1f s\n", $0, n, s; total += n; t++ }
        END { printf "fuzz.sh: %d targets, %d cases, ", t, total }'
if ((rc)); then
    echo "FAILED (exit $rc): a target panicked (its minimal input and seed are above) or did not build"
else
    echo "0 panics"
fi
exit "$rc"
