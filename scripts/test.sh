#!/usr/bin/env bash
# The README's test command (and CI's, through .ci/run): installs what is missing, builds, and
# runs every test, unit and integration, including the ones that need root and build network
# namespaces. Its output ends with cargo's own summary; it exits non-zero on any failure.
#
# usage: sudo scripts/test.sh [CARGO TEST ARGS...]   e.g. scripts/test.sh --test lab
#
# Test namespaces are named t<pid>x<n>-<role> after the test process that made them (see
# tests/common/mod.rs). Before and after the run, any such namespace (or /run/nfvs-lab/ dir)
# whose process is gone is a leftover: it is reported and removed. Before the run that is only a
# warning (an earlier run crashed); after it, a leak of this run, it fails the run. Namespaces of
# a test process that is still running (another run on the same machine) are left alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "test.sh: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root: the tests build network namespaces (try: sudo $0)"

# rustup's toolchain, if there is one and PATH lacks it (sudo, CI, a login without profile).
if [[ -d $HOME/.cargo/bin && :$PATH: != *:$HOME/.cargo/bin:* ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

scripts/install-deps.sh

# Prefixes (t<pid>x<n>) of test labs and namespaces whose test process no longer exists.
stale_prefixes() {
    {
        ip netns list 2>/dev/null | awk '{print $1}'
        ls /run/nfvs-lab 2>/dev/null || true
    } | sed -nE 's/^(t([0-9]+)x[0-9]+)(-.*)?$/\1 \2/p' | sort -u |
        while read -r prefix pid; do
            [[ -d /proc/$pid ]] || echo "$prefix"
        done
}

# Removes leftovers; returns 1 if there were any.
clean_leftovers() {
    local when=$1 prefix found=0
    for prefix in $(stale_prefixes); do
        found=1
        echo "test.sh: $when: leftover test namespaces $prefix-* (their test process is gone); removing" >&2
        scripts/lab.sh down "$prefix" || true
    done
    return $found
}

clean_leftovers "before the run" || true

cargo build --all-targets

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# cargo's output, also kept in $out for the totals below.
cargo_test() {
    cargo test --no-fail-fast "$@" 2>&1 | tee -a "$out"
    return "${PIPESTATUS[0]}"
}

rc=0
if [[ $# -gt 0 ]]; then
    cargo_test "$@" -- --test-threads=2 || rc=$?
else
    # Doc-tests first: their "0 passed" must not be the run's closing line.
    cargo_test --doc || rc=$?
    # Namespace tests each build a small lab (6 namespaces, 2 nginx): two at a time fit 2
    # cores. --no-fail-fast: every test binary runs and the summary lists every failure.
    cargo_test --lib --bins --tests --examples -- --test-threads=2 || rc=$?
fi

if ! clean_leftovers "after the run"; then
    echo "test.sh: FAILED: the tests left namespaces behind (a guard did not clean up)"
    ((rc)) || rc=1
fi

# One closing line over all test binaries, in the plain "N passed, N failed" form.
sed -nE 's/^test result: [A-Za-z]+\. ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1 \2 \3/p' "$out" |
    awk -v rc="$rc" '{ p += $1; f += $2; s += $3 }
        END {
            if (rc != 0 && f == 0)   # a build error or a leak: no count to report honestly
                printf "test.sh: the run failed (exit %d); %d tests passed\n", rc, p
            else
                printf "test.sh: %d passed, %d failed%s\n", p, f, (s ? ", " s " skipped" : "")
        }'
exit "$rc"
