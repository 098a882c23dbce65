#!/usr/bin/env bash
# The README's main command: the seed's LVS-NAT lab with nfvs as the director.
#
# usage: sudo scripts/demo.sh
#
# Installs what is missing, builds nfvs (release), builds the lab in network namespaces
# (scripts/lab.sh, prefix "nfvs"), runs
#     nfvs run --rules rules/lab.rules --masquerade 192.168.226.0/24
# in the director's namespace, shows ten requests from the client to the VIP (they alternate
# between the two real servers, as the seed's wrr with equal weights does) and the daemon's
# decision lines, stops it with SIGTERM, and removes the lab; the lab is removed on any exit.
# Exits non-zero if anything on the way fails. The daemon's log is kept in target/demo-nfvs.log.
#
# Environment: NFVS_BIN (default target/release/nfvs, built here unless set) runs another build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly PREFIX=nfvs
readonly CLIENT_NS=$PREFIX-client DIR_NS=$PREFIX-dir
readonly VIP=192.168.199.200
readonly LOG=target/demo-nfvs.log
readonly READY_LINE="nfvs: ready"
readonly READY_TIMEOUT=15 # seconds

step() { printf '\n== %s\n' "$*"; }
die() { echo "demo.sh: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root: the lab uses network namespaces (try: sudo $0)"

if [[ -d $HOME/.cargo/bin && :$PATH: != *:$HOME/.cargo/bin:* ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

step "installing what is missing"
scripts/install-deps.sh

if [[ -n ${NFVS_BIN:-} ]]; then
    bin=$NFVS_BIN
else
    step "building nfvs (cargo build --release)"
    cargo build --release
    bin=target/release/nfvs
fi
[[ -x $bin ]] || die "$bin was not built: no nfvs binary to run"

daemon_pid=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        # Let it remove its table and restore sysctls; the lab goes away regardless.
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for ((i = 0; i < 30; i++)); do
            kill -0 "$daemon_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    echo
    echo "== removing the lab"
    scripts/lab.sh down "$PREFIX" || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "building the lab (scripts/lab.sh up $PREFIX)"
scripts/lab.sh up "$PREFIX"

step "starting nfvs in $DIR_NS"
mkdir -p "$(dirname "$LOG")"
cmd=("$bin" run --rules rules/lab.rules --masquerade 192.168.226.0/24)
echo "rules/lab.rules:"
sed 's/^/    /' rules/lab.rules
echo "RUST_LOG=info ip netns exec $DIR_NS ${cmd[*]}   (log: $LOG)"
# `ip netns exec` and `env` exec in place, so $! is nfvs itself.
ip netns exec "$DIR_NS" env RUST_LOG=info "${cmd[@]}" >"$LOG" 2>&1 &
daemon_pid=$!

for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    grep -qF "$READY_LINE" "$LOG" && break
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        status=0
        wait "$daemon_pid" || status=$?
        daemon_pid=
        echo "---- nfvs log:" >&2
        cat "$LOG" >&2
        die "nfvs exited (status $status) before it was ready"
    fi
    sleep 0.1
done
if ! grep -qF "$READY_LINE" "$LOG"; then
    echo "---- nfvs log:" >&2
    cat "$LOG" >&2
    die "nfvs did not log '$READY_LINE' within ${READY_TIMEOUT}s"
fi
echo "nfvs is ready (pid $daemon_pid)"

step "ten requests from the client ($CLIENT_NS) to http://$VIP/"
failed=0
answers=()
for i in $(seq 10); do
    if answer=$(ip netns exec "$CLIENT_NS" curl -sS --connect-timeout 3 --max-time 5 "http://$VIP/" 2>&1); then
        answers+=("$answer")
    else
        failed=$((failed + 1))
        answers+=("FAILED: $answer")
    fi
    printf '%2d  %s\n' "$i" "${answers[-1]}"
done

step "nfvs's decisions (from $LOG)"
# One line per new connection naming the VIP and the chosen real server.
decisions=$(grep -E "$VIP:80" "$LOG" | grep -E '192\.168\.226\.13[0-9]' || true)
if [[ -n $decisions ]]; then
    echo "$decisions"
else
    echo "(no decision lines found; the whole log:)"
    cat "$LOG"
fi

step "stopping nfvs (SIGTERM)"
kill -TERM "$daemon_pid"
status=0
wait "$daemon_pid" || status=$?
daemon_pid=
echo "nfvs exited with status $status"
if ip netns exec "$DIR_NS" nft list table ip nfvs >/dev/null 2>&1; then
    echo "table ip nfvs is still there" >&2
    status=1
else
    echo "table ip nfvs removed"
fi

# The seed's promise: with two equal weights, consecutive requests alternate.
alternating=1
for ((i = 1; i < ${#answers[@]}; i++)); do
    [[ ${answers[i]} != "${answers[i - 1]}" ]] || alternating=0
done

echo
if ((failed)); then
    die "$failed of 10 requests failed"
elif ((!alternating)); then
    die "the answers did not alternate between the two real servers"
elif ((status)); then
    die "nfvs did not stop cleanly"
fi
echo "demo: OK: 10 requests alternated between 192.168.226.130 and 192.168.226.131"
