#!/usr/bin/env bash
# Benchmark (issue 5): nfvs against the kernel-only ceiling (nft `dnat to numgen inc mod 2`) and
# HAProxy in TCP mode, on the same namespace lab, in the same run.
#
# usage: sudo scripts/bench.sh
#
# Builds nfvs (release) and runs the scheduler micro-benchmark; builds a lab (scripts/lab.sh up
# $BENCH_PREFIX, removed on any exit) with an iperf3 server on each real server; then, ROUNDS
# times, sets up each contender in the director's namespace in turn (the order rotates each
# round), measures it from the client's namespace and tears it down:
#   - new connections/s: wrk -H 'Connection: close' at each concurrency of CONCS;
#   - connect latency p50/p99 at concurrency 1 (connect() call to return: SYN to established)
#     and the whole short request (connect to EOF), scripts/bench/connprobe.c;
#   - keep-alive requests/s (wrk, KA_CONC connections);
#   - iperf3 throughput through VIP:5201;
#   - CPU per 1,000 new connections during the highest-concurrency wrk run: the balancer's own
#     process (/proc/PID/stat; 0 for kernel-only) and the whole machine's busy and softirq time
#     (/proc/stat: a network namespace's softirq work cannot be told apart from the rest);
#   - TCP RSTs sent by the director and by the real servers during the HTTP load, and for nfvs
#     the NFQUEUE drop counters and the daemon's warnings.
# Then nfvs's RSS with FILL_CONNS connections tracked (TIME_WAIT entries, made by connprobe
# from four extra client addresses and explicit ports, so every connection is a new tuple).
# Then the churn: a fresh nfvs under CHURN_SECS of new short connections (connprobe churn, the
# fill's tuples, CHURN_RATE a second, at most CHURN_CONC in flight), so TIME_WAIT entries keep
# coming and expiring (120 s: the default 10 minutes see five generations) around a steady
# population of about CHURN_RATE * 120 (conntrack's garbage collector reaps expired entries in
# waves, so it swings up to ~25% above that, the first wave coming between 120 and 180 s); every
# CHURN_SAMPLE seconds the daemon's VmRSS, the connections made so far, the daemon's count and
# conntrack's go to target/bench/churn.tsv. Recorded: RSS at the start of the steady state (the
# first sample after CHURN_WARMUP), at the end, the maximum, VmHWM (peaks between samples), and
# the least-squares slope over the steady-state samples (MB/minute).
#
# Output: a markdown report (medians of the rounds, ratios to kernel-only, the machine) on
# stdout and in target/bench/results.md; raw values, logs and per-run outputs in target/bench/.
# Exits non-zero if a contender (or a measurement of one) could not run.
#
# Environment (defaults in brackets; the defaults take about 18 minutes on a 2-core VM, 11 of
# them the churn):
#   ROUNDS [3]  DURATION [5] seconds per wrk run  CONCS ["1 8 64"]  KA_CONC [64]
#   LAT_N [2000] connects per latency probe  IPERF_SECS [5]  FILL_CONNS [100000]  FILL_CONC [128]
#   CONTENDERS ["kernel haproxy nfvs nfvs-pin nfvs-info floor-table floor floor-pin"]
#   (nfvs-pin: --queues auto --pin-workers, a worker per CPU on that CPU; nfvs-info: the
#   default per-connection info log; the floors, tests/bench/queue_floor.rs: nfvs's table with
#   --overload fallback, whose kernel rules balance every connection: floor-table without the
#   divert rules (what the rule set costs by itself), floor with them and a program that
#   answers every queued SYN ACCEPT with nfvs's queue code (one NFQUEUE round trip per SYN and
#   nothing else: no scheduler, ctnetlink or events), floor-pin the same with a queue per CPU)
#   SCHED_MS [100] ms per sched_bench cell (0 skips it)  BENCH_PREFIX [bench] lab prefix
#   CHURN_SECS [600] (0 skips the churn)  CHURN_RATE [850] new connections/s (0: as fast as
#   CHURN_CONC allows; keep CHURN_RATE * 150 well under the director's nf_conntrack_max, and
#   CHURN_RATE under 2,150, above which tuples return within their TIME_WAIT)  CHURN_CONC [32]
#   CHURN_WARMUP [180] s before the steady state  CHURN_SAMPLE [10] s between samples
#   ONLY ["sched rounds rss churn"]: the phases to run, e.g. ONLY=churn for the churn alone
#   (the report then holds only what ran). The phase `services` (not in the default) times
#   nfvs with many services (issue 11 #7): start-up to its "ready" line with each count of
#   SVC_COUNTS ["1 1000 10000"] (N-1 services on addresses from 10.100.0.1, no traffic, then
#   the lab's 192.168.199.200:80 last); with the largest count, SVC_EDITS [20] rounds of
#   `nfvs adm -A`, `-a` and `-D` of one more service (wall time of the adm process, run
#   outside the namespace: the control socket is a path); and for the smallest and the largest
#   count, new connections/s to the lab's service (wrk Connection: close, SVC_CONC [8]
#   connections, DURATION s) with the machine's busy and softirq CPU per 1,000 connections.
#   NFVS_BIN: run this nfvs binary instead of building one.
#   NFVS_BASE_BIN: another nfvs binary (e.g. a build of the commit before a change), run with
#   nfvs's settings as the contender `nfvs-base` (add it to CONTENDERS), so a change is
#   measured against what it replaces in one run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONCS=${CONCS:-"1 8 64"}
KA_CONC=${KA_CONC:-64}
LAT_N=${LAT_N:-2000}
IPERF_SECS=${IPERF_SECS:-5}
FILL_CONNS=${FILL_CONNS:-100000}
FILL_CONC=${FILL_CONC:-128}
CONTENDERS=${CONTENDERS:-"kernel haproxy nfvs nfvs-pin nfvs-info floor-table floor floor-pin"}
SCHED_MS=${SCHED_MS:-100}
CHURN_SECS=${CHURN_SECS:-600}
CHURN_RATE=${CHURN_RATE:-850}
CHURN_CONC=${CHURN_CONC:-32}
CHURN_WARMUP=${CHURN_WARMUP:-180}
CHURN_SAMPLE=${CHURN_SAMPLE:-10}
ONLY=${ONLY:-"sched rounds rss churn"}
SVC_COUNTS=${SVC_COUNTS:-"1 1000 10000"}
SVC_EDITS=${SVC_EDITS:-20}
SVC_CONC=${SVC_CONC:-8}
PREFIX=${BENCH_PREFIX:-bench}

readonly OUT=target/bench
readonly RUN=$OUT/run
readonly LOGS=$OUT/logs
readonly CLIENT_NS=$PREFIX-client DIR_NS=$PREFIX-dir
readonly VIP=192.168.199.200
readonly RS_IPS=(192.168.226.130 192.168.226.131)
readonly RS_NS=("$PREFIX-rs1" "$PREFIX-rs2")
readonly RS_NET=192.168.226.0/24
# Extra client addresses for the RSS fill: one port range's worth of tuples each.
readonly FILL_SRCS=(192.168.199.11 192.168.199.12 192.168.199.13 192.168.199.14)
readonly CT_MARK=0x6e667673 # nfvs's default --ct-mark (src/daemon.rs DEFAULT_CT_MARK)
readonly READY_TIMEOUT=15   # seconds for a contender to answer on the VIP

die() { echo "bench.sh: $*" >&2; exit 1; }
say() { echo "bench.sh: $*" >&2; }
step() { printf '\n== %s\n' "$*" >&2; }

for v in ROUNDS DURATION KA_CONC LAT_N IPERF_SECS FILL_CONNS FILL_CONC SCHED_MS \
    CHURN_SECS CHURN_RATE CHURN_CONC CHURN_WARMUP CHURN_SAMPLE SVC_EDITS SVC_CONC; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((ROUNDS >= 1 && DURATION >= 1)) || die "ROUNDS and DURATION must be at least 1"
((CHURN_CONC >= 1 && CHURN_SAMPLE >= 1)) || die "CHURN_CONC and CHURN_SAMPLE must be at least 1"
for p in $ONLY; do
    case $p in sched | rounds | rss | churn | services) ;; *) die "ONLY: unknown phase '$p' (sched rounds rss churn services)" ;; esac
done
phase() { [[ " $ONLY " == *" $1 "* ]]; }
for c in $CONCS; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "CONCS: '$c' is not a concurrency"; done
for c in $SVC_COUNTS; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "SVC_COUNTS: '$c' is not a number of services"; done
((SVC_CONC >= 1)) || die "SVC_CONC must be at least 1"
for c in $CONTENDERS; do
    case $c in kernel | haproxy | nfvs | nfvs-pin | nfvs-info | floor-table | floor | floor-pin) ;;
        nfvs-base) [[ -x ${NFVS_BASE_BIN:-} ]] || die "contender nfvs-base needs NFVS_BASE_BIN, an nfvs binary" ;;
        *) die "unknown contender '$c' (kernel haproxy nfvs nfvs-base nfvs-pin nfvs-info floor-table floor floor-pin)" ;;
    esac
done
[[ $(id -u) == 0 ]] || die "must run as root: the lab uses network namespaces (try: sudo $0)"
if [[ -d $HOME/.cargo/bin && :$PATH: != *:$HOME/.cargo/bin:* ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
# What a fresh machine lacks (nfvs's own deps and haproxy, wrk, iperf3) comes from here.
scripts/install-deps.sh --bench >&2
for tool in wrk haproxy iperf3 gcc python3 conntrack nft; do
    command -v "$tool" >/dev/null || die "'$tool' not found after scripts/install-deps.sh --bench"
done

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
in_client() { in_ns "$CLIENT_NS" "$@"; }
in_dir() { in_ns "$DIR_NS" "$@"; }

# ---------------------------------------------------------------------------------------------
# Records

FAILED=0
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$OUT/raw.tsv"; } # round contender metric value
meta() { printf '%s\t%s\n' "$1" "$2" >>"$OUT/meta.tsv"; }
note() { echo "$*" >>"$OUT/notes.txt"; say "note: $*"; }
fail() { echo "$*" >>"$OUT/failures.txt"; say "FAILED: $*"; FAILED=1; }

CLK_TCK=$(getconf CLK_TCK)
# utime + stime of a whole process (every thread), in clock ticks (proc(5): fields 14 and 15;
# counted after the ")" that ends the command name, which may itself hold spaces).
proc_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}'; }
# Busy and softirq ticks of the whole machine (proc(5): cpu user nice system idle iowait irq
# softirq steal).
machine_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9, $8; exit}' /proc/stat; }
# TCP OutRsts of a namespace (/proc/net/snmp: a "Tcp:" line of names, then one of values).
out_rsts() {
    # shellcheck disable=SC2016 # awk's fields, not shell's
    in_ns "$1" awk '$1 == "Tcp:" { if (!n) { for (i = 2; i <= NF; i++) if ($i == "OutRsts") n = i } else { print $n; exit } }' /proc/net/snmp
}
rsts_of() { # director RSTs, real servers' RSTs
    local rs=0 ns
    for ns in "${RS_NS[@]}"; do rs=$((rs + $(out_rsts "$ns"))); done
    echo "$(out_rsts "$DIR_NS") $rs"
}
vm_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null; }
now_us() { echo "${EPOCHREALTIME/[.,]/}"; } # microseconds since the epoch

# ---------------------------------------------------------------------------------------------
# Clean-up: everything we started, then the lab.

PIDS=() # long-lived processes we started (iperf3 servers, the current contender)
CUR=    # current contender, for teardown
CUR_PID=
lab_up=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $CUR ]]; then stop_contender "$CUR" >/dev/null 2>&1 || true; fi
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if ((lab_up)); then
        echo "== removing the lab ($PREFIX)" >&2
        scripts/lab.sh down "$PREFIX" >&2 || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stops a process we started: TERM, up to 5 s, then KILL. Returns its exit status.
stop_pid() {
    local pid=$1 i status=0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "pid $pid did not stop within 5 s after SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || status=$?
    local keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
    return "$status"
}

# ---------------------------------------------------------------------------------------------
# Contenders: start_X sets CUR_PID (the process whose CPU is measured; empty for kernel-only)
# and returns non-zero if X could not be set up; stop_X undoes it.

start_kernel() {
    in_dir sysctl -qw net.ipv4.ip_forward=1 &&
        in_dir nft -f scripts/bench/kernel.nft
}
stop_kernel() {
    in_dir nft list table ip bench >"$LOGS/kernel-nft-r$ROUND.txt" 2>&1 || true
    in_dir nft delete table ip bench 2>/dev/null || true
    # Back to the lab's default: the other contenders set what they need themselves.
    in_dir sysctl -qw net.ipv4.ip_forward=0
}

start_haproxy() {
    # `ip netns exec` execs, so $! is haproxy itself (not through in_dir: a backgrounded shell
    # function is a subshell, and $! would be that); -db: foreground, no master process.
    ip netns exec "$DIR_NS" haproxy -db -f scripts/bench/haproxy.cfg >>"$LOGS/haproxy.log" 2>&1 &
    CUR_PID=$!
    PIDS+=("$CUR_PID")
}
stop_haproxy() {
    [[ -n $CUR_PID ]] || return 0
    stop_pid "$CUR_PID" || true # haproxy exits 143 on SIGTERM
}

NFVS_LOG=
start_nfvs() { # LEVEL [extra nfvs run arguments]
    local level=$1 bin=$NFVS
    shift
    [[ $CUR == nfvs-base ]] && bin=$(realpath "$NFVS_BASE_BIN")
    NFVS_LOG=$LOGS/$CUR-r$ROUND.log
    [[ $ROUND == rss || $ROUND == churn ]] && NFVS_LOG=$LOGS/nfvs-$ROUND.log
    mkdir -p "$RUN/state"
    # `ip netns exec` and `env` exec in place: $! is nfvs itself.
    ip netns exec "$DIR_NS" env RUST_LOG="$level" "$bin" run --rules scripts/bench/bench.rules --masquerade "$RS_NET" \
        --state-dir "$RUN/state" --control "$RUN/control.sock" --drain-timeout 0 "$@" >"$NFVS_LOG" 2>&1 &
    CUR_PID=$!
    PIDS+=("$CUR_PID")
    # At RUST_LOG=warn there is no "ready" line: the table appears last in start-up.
    wait_table nfvs "$NFVS_LOG"
}
# Waits until table ip nfvs exists in the director (0), or $CUR_PID (NAME, logging to LOG)
# exits or READY_TIMEOUT passes (1).
wait_table() { # NAME LOG
    local i
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        kill -0 "$CUR_PID" 2>/dev/null || { say "$1 exited during start-up: $(tail -n 3 "$2")"; return 1; }
        in_dir nft list table ip nfvs >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    say "$1 installed no table within ${READY_TIMEOUT}s"
    return 1
}
stop_nfvs() {
    [[ -n $CUR_PID ]] || return 0
    # The queue's counters and the table's, before the daemon removes them.
    {
        echo "# /proc/net/netfilter/nfnetlink_queue (queue portid total copy_mode copy_range queue_dropped user_dropped id_seq 1)"
        in_dir cat /proc/net/netfilter/nfnetlink_queue
        in_dir nft list table ip nfvs
    } >"${NFVS_LOG%.log}-kernel.txt" 2>&1 || true
    local status=0 running=0
    kill -0 "$CUR_PID" 2>/dev/null && running=1
    stop_pid "$CUR_PID" || status=$?
    # A daemon that died during start-up was reported then.
    ((running)) || return 0
    # At info the log holds a line per connection (tens of MB a run): keep its start, its
    # warnings and errors, and how long it was.
    if [[ $CUR == nfvs-info && -f $NFVS_LOG ]]; then
        {
            head -n 20 "$NFVS_LOG"
            echo "... ($(wc -l <"$NFVS_LOG") lines, $(wc -c <"$NFVS_LOG") bytes; warnings and errors follow)"
            grep -E '\b(WARN|ERROR)\b' "$NFVS_LOG" | head -n 100 || true
        } >"$NFVS_LOG.short"
        mv "$NFVS_LOG.short" "$NFVS_LOG"
    fi
    ((status == 0)) || fail "$CUR round $ROUND: nfvs exited with status $status on SIGTERM (log $NFVS_LOG)"
    table_gone nfvs
}
# A stopped NAME must have removed table ip nfvs; if not, say so and remove it.
table_gone() { # NAME
    if in_dir nft list table ip nfvs >/dev/null 2>&1; then
        fail "$CUR round $ROUND: table ip nfvs still present after $1 stopped"
        in_dir nft delete table ip nfvs 2>/dev/null || true
    fi
}

start_floor() { # [queue_floor options]
    local args=("$@" scripts/bench/bench.rules "$RS_NET")
    in_dir sysctl -qw net.ipv4.ip_forward=1 || return 1
    ip netns exec "$DIR_NS" "$FLOOR" "${args[@]}" >>"$LOGS/$CUR-r$ROUND.log" 2>&1 &
    CUR_PID=$!
    PIDS+=("$CUR_PID")
    wait_table queue_floor "$LOGS/$CUR-r$ROUND.log"
}
stop_floor() {
    local status=0
    if [[ -n $CUR_PID ]]; then stop_pid "$CUR_PID" || status=$?; fi
    table_gone queue_floor
    in_dir sysctl -qw net.ipv4.ip_forward=0
    ((status == 0)) || fail "$CUR round $ROUND: queue_floor exited with status $status on SIGTERM"
}

start_contender() {
    CUR=$1
    CUR_PID=
    case $1 in
        kernel) start_kernel ;;
        haproxy) start_haproxy ;;
        nfvs | nfvs-base) start_nfvs warn ;;
        nfvs-pin) start_nfvs warn --queues auto --pin-workers ;;
        nfvs-info) start_nfvs info ;;
        floor-table) start_floor --no-queue ;;
        floor) start_floor ;;
        floor-pin) start_floor --queues "$(getconf _NPROCESSORS_ONLN)" --pin ;;
    esac
}
stop_contender() {
    case $1 in
        kernel) stop_kernel ;;
        haproxy) stop_haproxy ;;
        nfvs | nfvs-base | nfvs-pin | nfvs-info) stop_nfvs ;;
        floor-table | floor | floor-pin) stop_floor ;;
    esac
    CUR=
    CUR_PID=
}

# Ready when requests to the VIP reach both real servers (so it balances, not just forwards).
wait_balanced() {
    local i got seen
    for ((i = 0; i < READY_TIMEOUT * 5; i++)); do
        if [[ -n $CUR_PID ]] && ! kill -0 "$CUR_PID" 2>/dev/null; then
            say "$CUR exited"
            return 1
        fi
        seen=
        for _ in 1 2 3 4; do
            got=$(in_client curl -s --max-time 1 "http://$VIP/" 2>/dev/null || true)
            [[ $got == "hello, i am from "* ]] && seen+="${got##* } "
        done
        [[ $seen == *"${RS_IPS[0]}"* && $seen == *"${RS_IPS[1]}"* ]] && return 0
        sleep 0.2
    done
    say "$CUR: requests to $VIP did not reach both real servers within ${READY_TIMEOUT}s (last: '$seen')"
    return 1
}

# ---------------------------------------------------------------------------------------------
# Measurements

# Each measurement starts from an empty conntrack table in the director, so every contender
# meets the same amount of source-port reuse (one client; see the notes in the report).
flush_ct() {
    in_dir conntrack -F >/dev/null 2>&1 || true
    sleep 0.5
}

# wrk output -> "REQS_PER_SEC REQUESTS ERRORS" (errors: socket errors + non-2xx/3xx).
parse_wrk() {
    awk '
        /^Requests\/sec:/ { rps = $2 }
        / requests in / { n = $1 }
        /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
        /Non-2xx or 3xx responses:/ { err += $5 }
        END { if (rps == "") exit 1; printf "%s %s %d\n", rps, n, err }
    ' "$1"
}

# run_wrk NAME CONC [wrk args...]: prints "RPS REQUESTS ERRORS"; the output is kept in LOGS.
run_wrk() {
    local name=$1 conc=$2; shift 2
    local threads=$((conc < 2 ? conc : 2))
    local file=$LOGS/$CUR-r$ROUND-$name.txt
    timeout $((DURATION + 20)) ip netns exec "$CLIENT_NS" \
        wrk -t"$threads" -c"$conc" -d"${DURATION}s" --timeout 5s "$@" "http://$VIP/" >"$file" 2>&1 || true
    parse_wrk "$file"
}

measure() {
    local c=$CUR r=$ROUND out rps n err t0 t1 m0 m1 sirq0 sirq1 maxc=0
    for conc in $CONCS; do ((conc > maxc)) && maxc=$conc; done
    local wrk_errors=0 dr0 rr0 dr1 rr1
    read -r dr0 rr0 < <(rsts_of)

    for conc in $CONCS; do
        flush_ct
        [[ -n $CUR_PID ]] && t0=$(proc_ticks "$CUR_PID") || t0=0
        read -r m0 sirq0 < <(machine_ticks)
        if ! out=$(run_wrk "close-c$conc" "$conc" -H 'Connection: close'); then
            fail "$c round $r: wrk Connection: close c=$conc gave no result ($LOGS/$c-r$r-close-c$conc.txt)"
            continue
        fi
        read -r m1 sirq1 < <(machine_ticks)
        [[ -n $CUR_PID ]] && t1=$(proc_ticks "$CUR_PID") || t1=0
        read -r rps n err <<<"$out"
        record "$r" "$c" "cps_c$conc" "$rps"
        wrk_errors=$((wrk_errors + err))
        say "$c round $r: Connection: close c=$conc: $rps conn/s ($n requests, $err errors)"
        if ((conc == maxc && n > 0)); then
            # ms of CPU per 1,000 connections = ticks / CLK_TCK * 1000 / (n / 1000)
            record "$r" "$c" cpu_ms_per_1k "$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN{printf "%.2f", t / hz * 1e6 / n}')"
            record "$r" "$c" busy_ms_per_1k "$(awk -v t=$((m1 - m0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN{printf "%.2f", t / hz * 1e6 / n}')"
            record "$r" "$c" softirq_ms_per_1k "$(awk -v t=$((sirq1 - sirq0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN{printf "%.2f", t / hz * 1e6 / n}')"
        fi
    done

    local mode kv
    for mode in lat req; do
        flush_ct
        # stdout: the summary line; stderr: one line per failed connection.
        kv=$(timeout 120 ip netns exec "$CLIENT_NS" "$PROBE" "$mode" "$VIP" 80 "$LAT_N" 100 2>"$LOGS/$c-r$r-$mode.err") || true
        echo "$kv" >"$LOGS/$c-r$r-$mode.txt"
        [[ -s $LOGS/$c-r$r-$mode.err ]] && note "$c round $r: connprobe $mode: $(head -n1 "$LOGS/$c-r$r-$mode.err")"
        if [[ $kv =~ p50_us=([0-9.]+).*p99_us=([0-9.]+) ]]; then
            record "$r" "$c" "${mode}_p50_us" "${BASH_REMATCH[1]}"
            record "$r" "$c" "${mode}_p99_us" "${BASH_REMATCH[2]}"
            [[ $kv =~ errors=([0-9]+) ]] && wrk_errors=$((wrk_errors + BASH_REMATCH[1]))
            say "$c round $r: $mode: $kv"
        else
            fail "$c round $r: connprobe $mode gave no result: $kv"
        fi
    done

    flush_ct
    if out=$(run_wrk "keepalive-c$KA_CONC" "$KA_CONC"); then
        read -r rps n err <<<"$out"
        record "$r" "$c" ka_rps "$rps"
        wrk_errors=$((wrk_errors + err))
        say "$c round $r: keep-alive c=$KA_CONC: $rps req/s ($err errors)"
    else
        fail "$c round $r: wrk keep-alive gave no result ($LOGS/$c-r$r-keepalive-c$KA_CONC.txt)"
    fi
    record "$r" "$c" wrk_errors "$wrk_errors"

    # RSTs sent while this contender ran its HTTP load (wrk and the probes; the probe's bare
    # connects are cut by the client, not counted here). With DNAT in front of them, the
    # director should send none and the real servers none: a RST means a packet met a host
    # that had no socket for it.
    read -r dr1 rr1 < <(rsts_of)
    record "$r" "$c" dir_rsts $((dr1 - dr0))
    record "$r" "$c" rs_rsts $((rr1 - rr0))
    ((dr1 - dr0 + rr1 - rr0 == 0)) ||
        note "$c round $r: RSTs sent during the HTTP load: director $((dr1 - dr0)), real servers $((rr1 - rr0))"

    local json=$LOGS/$c-r$r-iperf3.json gbps
    # The floor's fallback rules have no persistence, so iperf3's control and data
    # connections may reach different servers; its established flows are nfvs's anyway.
    if [[ $c == floor* ]]; then
        say "$c round $r: iperf3 not measured (no persistence in the fallback rules)"
    else
        timeout $((IPERF_SECS + 20)) ip netns exec "$CLIENT_NS" \
            iperf3 -c "$VIP" -p 5201 -t "$IPERF_SECS" -J --connect-timeout 3000 >"$json" 2>&1 || true
        if gbps=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.3f" % (d["end"]["sum_received"]["bits_per_second"] / 1e9))' "$json" 2>/dev/null); then
            record "$r" "$c" iperf_gbps "$gbps"
            say "$c round $r: iperf3: $gbps Gbit/s"
        else
            fail "$c round $r: iperf3 through $VIP:5201 failed ($json)"
        fi
    fi

    if [[ $c == nfvs* ]]; then
        # /proc/net/netfilter/nfnetlink_queue, per network namespace: field 6 queue_dropped
        # (queue full), field 7 user_dropped (netlink socket buffer full). net/netfilter/
        # nfnetlink_queue.c, seq_show.
        local qd ud
        # shellcheck disable=SC2016 # awk's fields, not shell's
        read -r qd ud < <(in_dir awk '{d += $6; u += $7} END {print d + 0, u + 0}' /proc/net/netfilter/nfnetlink_queue)
        record "$r" "$c" q_dropped "$qd"
        record "$r" "$c" q_user_dropped "$ud"
        local warns
        warns=$(grep -c -E '\b(WARN|ERROR)\b' "$NFVS_LOG" || true)
        record "$r" "$c" log_warnings "$warns"
        ((qd + ud == 0)) || note "$c round $r: NFQUEUE dropped $qd (queue full) + $ud (socket buffer) SYNs"
        ((warns == 0)) || note "$c round $r: $warns warning/error lines in $NFVS_LOG, e.g. $(grep -m1 -E '\b(WARN|ERROR)\b' "$NFVS_LOG" | cut -c1-200)"
    fi
}

# A fresh nfvs (default options) on an empty conntrack table for a memory test named $1
# (rss, churn); returns non-zero, reported, if it does not start balancing.
start_fresh_nfvs() {
    CUR=nfvs
    ROUND=$1
    flush_ct
    if ! start_contender nfvs || ! wait_balanced; then
        fail "nfvs ($1 test) could not start"
        stop_contender nfvs
        return 1
    fi
}

# nfvs's RSS with FILL_CONNS tracked connections.
measure_rss() {
    local c=nfvs-rss
    start_fresh_nfvs rss || return 0
    local pid=$CUR_PID
    sleep 1
    record - "$c" rss_idle_mb "$(awk -v k="$(vm_kb "$pid" VmRSS)" 'BEGIN{printf "%.1f", k / 1024}')"
    local src
    for src in "${FILL_SRCS[@]}"; do in_client ip addr add "$src/24" dev eth0 2>/dev/null || true; done
    local srcs
    srcs=$(IFS=,; echo "${FILL_SRCS[*]}")
    say "RSS test: $FILL_CONNS connections, $FILL_CONC at a time, from $srcs"
    local kv
    kv=$(timeout 300 ip netns exec "$CLIENT_NS" "$PROBE" fill "$VIP" 80 "$FILL_CONNS" "$FILL_CONC" "$srcs" 280 2>>"$LOGS/rss-fill.err") || true
    echo "$kv" >"$LOGS/rss-fill.txt"
    say "RSS test: fill: $kv"
    if [[ $kv =~ done=([0-9]+).*rate=([0-9]+) ]]; then
        record - "$c" fill_done "${BASH_REMATCH[1]}"
        record - "$c" fill_rate "${BASH_REMATCH[2]}"
    else
        fail "RSS test: the connection fill gave no result: $kv"
    fi
    [[ $kv =~ errors=([1-9][0-9]*) ]] && note "RSS test: ${BASH_REMATCH[1]} connections of the fill failed"
    # Let the event thread catch up with the last connections' updates.
    sleep 2
    local ours total conns rss hwm idle
    ours=$(in_dir conntrack -L -m "$CT_MARK" 2>/dev/null | wc -l)
    total=$(in_dir conntrack -C 2>/dev/null || echo 0)
    # ipvsadm -L -n rows "  -> RIP:PORT Masq W ActiveConn InActConn".
    conns=$(in_dir "$NFVS" adm --control "$RUN/control.sock" -L -n 2>/dev/null |
        awk '$1 == "->" && $5 ~ /^[0-9]+$/ {s += $5 + $6} END {print s + 0}')
    rss=$(vm_kb "$pid" VmRSS)
    hwm=$(vm_kb "$pid" VmHWM)
    idle=$(awk -F'\t' '$2 == "nfvs-rss" && $3 == "rss_idle_mb" {print $4}' "$OUT/raw.tsv")
    record - "$c" ct_ours "$ours"
    record - "$c" ct_total "$total"
    record - "$c" daemon_conns "$conns"
    record - "$c" rss_mb "$(awk -v k="$rss" 'BEGIN{printf "%.1f", k / 1024}')"
    record - "$c" hwm_mb "$(awk -v k="$hwm" 'BEGIN{printf "%.1f", k / 1024}')"
    ((conns > 0)) && record - "$c" bytes_per_conn "$(awk -v k="$rss" -v i="$idle" -v n="$conns" 'BEGIN{printf "%.0f", (k - i * 1024) * 1024 / n}')"
    say "RSS test: conntrack: $ours ours of $total; nfvs counts $conns; VmRSS $rss kB, VmHWM $hwm kB"
    ((ours >= FILL_CONNS * 9 / 10)) ||
        note "RSS test: only $ours of our entries in the director's conntrack table after a fill of $FILL_CONNS"
    ((conns >= ours * 9 / 10)) ||
        note "RSS test: nfvs counts $conns connections but conntrack holds $ours of its entries"
    local warns
    warns=$(grep -c -E '\b(WARN|ERROR)\b' "$NFVS_LOG" || true)
    ((warns == 0)) || note "RSS test: $warns warning/error lines in $NFVS_LOG, e.g. $(grep -m1 -E '\b(WARN|ERROR)\b' "$NFVS_LOG" | cut -c1-200)"
    stop_contender nfvs
    for src in "${FILL_SRCS[@]}"; do in_client ip addr del "$src/24" dev eth0 2>/dev/null || true; done
}

# nfvs's RSS over CHURN_SECS of connection churn (a fresh daemon, an empty conntrack table).
measure_churn() {
    local c=nfvs-churn
    start_fresh_nfvs churn || return 0
    local pid=$CUR_PID src srcs
    for src in "${FILL_SRCS[@]}"; do in_client ip addr add "$src/24" dev eth0 2>/dev/null || true; done
    srcs=$(IFS=,; echo "${FILL_SRCS[*]}")
    local dr0 rr0 dr1 rr1
    read -r dr0 rr0 < <(rsts_of)
    sleep 1
    local tsv=$OUT/churn.tsv out=$LOGS/churn-probe.txt
    printf 'secs\tconns_made\terrors\tactive\tinactive\tct_total\trss_kb\n' >"$tsv"
    say "churn: $CHURN_SECS s of new connections, $CHURN_RATE/s (at most $CHURN_CONC in flight) from $srcs; a sample every $CHURN_SAMPLE s into $tsv"
    # `ip netns exec` execs: $! is connprobe itself. It stops starting connections after
    # CHURN_SECS and exits within 10 s more.
    ip netns exec "$CLIENT_NS" "$PROBE" churn "$VIP" 80 "$CHURN_SECS" "$CHURN_CONC" "$srcs" "$CHURN_RATE" \
        >"$out" 2>"$LOGS/churn-probe.err" &
    local probe=$!
    PIDS+=("$probe")
    local t0 k=0 at wait_us el made errs act inact ct rss
    t0=$(now_us)
    while :; do
        at=$((k * CHURN_SAMPLE))
        ((at > CHURN_SECS)) && at=$CHURN_SECS
        wait_us=$((t0 + at * 1000000 - $(now_us)))
        ((wait_us > 0)) && sleep "$(printf '%d.%06d' $((wait_us / 1000000)) $((wait_us % 1000000)))"
        el=$(awk -v d=$(($(now_us) - t0)) 'BEGIN{printf "%.1f", d / 1e6}')
        if ! kill -0 "$pid" 2>/dev/null; then
            fail "churn: nfvs exited after $el s (log $NFVS_LOG)"
            break
        fi
        # connprobe's latest progress line: t=S done=D errors=E inflight=I
        read -r made errs < <(awk '/^t=/ {l = $0} END {split(l, f, /[ =]/); print f[4] + 0, f[6] + 0}' "$out")
        read -r act inact < <(in_dir "$NFVS" adm --control "$RUN/control.sock" -L -n 2>/dev/null |
            awk '$1 == "->" && $5 ~ /^[0-9]+$/ {a += $5; i += $6} END {print a + 0, i + 0}')
        ct=$(in_dir conntrack -C 2>/dev/null || echo 0)
        rss=$(vm_kb "$pid" VmRSS)
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$el" "$made" "$errs" "$act" "$inact" "$ct" "$rss" >>"$tsv"
        ((k % 6 == 0 || at >= CHURN_SECS)) &&
            say "churn: ${el}s: $made connections made ($errs failed), nfvs counts $act active + $inact inactive, conntrack $ct, VmRSS $rss kB"
        ((at >= CHURN_SECS)) && break
        if ! kill -0 "$probe" 2>/dev/null; then
            fail "churn: connprobe stopped after $el s: $(tail -n 1 "$LOGS/churn-probe.err" 2>/dev/null)"
            break
        fi
        k=$((k + 1))
    done
    local i
    for ((i = 0; i < 150; i++)); do kill -0 "$probe" 2>/dev/null || break; sleep 0.1; done
    stop_pid "$probe" || true # 1 when some connections failed: counted below
    local kv
    kv=$(tail -n 1 "$out")
    say "churn: connprobe: $kv"
    if [[ $kv =~ ^done=([0-9]+)\ errors=([0-9]+)\ secs=[0-9.]+\ rate=([0-9]+)\ unfinished=([0-9]+) ]]; then
        record - "$c" conns_made "${BASH_REMATCH[1]}"
        record - "$c" conn_errors "${BASH_REMATCH[2]}"
        record - "$c" conn_rate "${BASH_REMATCH[3]}"
        ((BASH_REMATCH[2] + BASH_REMATCH[4] == 0)) ||
            note "churn: ${BASH_REMATCH[2]} connections failed and ${BASH_REMATCH[4]} were unfinished, e.g. $(head -n 1 "$LOGS/churn-probe.err")"
        ((CHURN_RATE == 0 || BASH_REMATCH[3] * 100 >= CHURN_RATE * 95)) ||
            note "churn: connections came at ${BASH_REMATCH[3]}/s, short of CHURN_RATE=$CHURN_RATE"
    else
        fail "churn: connprobe gave no result: $kv"
    fi
    read -r dr1 rr1 < <(rsts_of)
    record - "$c" dir_rsts $((dr1 - dr0))
    record - "$c" rs_rsts $((rr1 - rr0))
    local qd ud warns
    # shellcheck disable=SC2016 # awk's fields, not shell's
    read -r qd ud < <(in_dir awk '{d += $6; u += $7} END {print d + 0, u + 0}' /proc/net/netfilter/nfnetlink_queue)
    record - "$c" q_dropped "$qd"
    record - "$c" q_user_dropped "$ud"
    warns=$(grep -c -E '\b(WARN|ERROR)\b' "$NFVS_LOG" || true)
    record - "$c" log_warnings "$warns"
    ((warns == 0)) || note "churn: $warns warning/error lines in $NFVS_LOG, e.g. $(grep -m1 -E '\b(WARN|ERROR)\b' "$NFVS_LOG" | cut -c1-200)"
    ((dr1 - dr0 + rr1 - rr0 + qd + ud == 0)) ||
        note "churn: director RSTs $((dr1 - dr0)), real servers' RSTs $((rr1 - rr0)), NFQUEUE drops $qd + $ud"
    record - "$c" hwm_mb "$(awk -v k="$(vm_kb "$pid" VmHWM)" 'BEGIN{printf "%.1f", k / 1024}')"
    stop_contender nfvs
    for src in "${FILL_SRCS[@]}"; do in_client ip addr del "$src/24" dev eth0 2>/dev/null || true; done

    # The samples -> "metric value" lines: RSS at the first sample, at the first sample of the
    # steady state (secs >= CHURN_WARMUP) and at the last; the maximum over all; the slope
    # (least squares, MB per minute) and the tracked-connection counts over the steady state.
    local metric value
    while read -r metric value; do
        record - "$c" "$metric" "$value"
    done < <(awk -F'\t' -v w="$CHURN_WARMUP" '
        NR == 1 { next }
        {
            t = $1; mb = $7 / 1024; n++
            if (n == 1) first = mb
            if (mb > max) max = mb
            if (t + 0 < w) next
            s++
            if (s == 1) { start = mb; start_t = t }
            end = mb; end_t = t
            sx += t; sy += mb; sxx += t * t; sxy += t * mb
            d = $4 + $5; sd += d; sct += $6
            if (s == 1 || d < dmin) dmin = d
            if (d > dmax) dmax = d
        }
        END {
            printf "samples %d\nsteady_samples %d\n", n, s
            if (n) printf "rss_first_mb %.2f\nrss_max_mb %.2f\n", first, max
            if (!s) exit
            printf "rss_start_mb %.2f\nrss_start_s %s\nrss_end_mb %.2f\nrss_end_s %s\n", start, start_t, end, end_t
            printf "conns_mean %.0f\nconns_min %d\nconns_max %d\nct_mean %.0f\n", sd / s, dmin, dmax, sct / s
            den = s * sxx - sx * sx
            if (s >= 2 && den > 0) printf "rss_slope_mb_min %.4f\n", (s * sxy - sx * sy) / den * 60
        }' "$tsv")
    record - "$c" churn_secs "$CHURN_SECS"
    record - "$c" churn_rate_target "$CHURN_RATE"
    record - "$c" churn_conc "$CHURN_CONC"
    record - "$c" warmup_s "$CHURN_WARMUP"
    record - "$c" sample_s "$CHURN_SAMPLE"
    ((CHURN_SECS > CHURN_WARMUP)) ||
        note "churn: CHURN_SECS=$CHURN_SECS is not past the CHURN_WARMUP=$CHURN_WARMUP s warm-up: no steady-state figures"
}

# ---------------------------------------------------------------------------------------------
# Many services (issue 11 #7)

# gen_services N FILE: N services in `ipvsadm -S -n` form, wrr over the two real servers: N-1 on
# addresses from 10.100.0.1 up (no traffic goes there; distinct addresses are the worst case for
# anything done per address), then the lab's VIP:80 last, so a rule list walked in order meets
# it after all the others.
gen_services() {
    awk -v n="$1" -v rs1="${RS_IPS[0]}" -v rs2="${RS_IPS[1]}" -v vip="$VIP" '
        function svc(s) { printf "-A -t %s -s wrr\n-a -t %s -r %s:80 -m -w 1\n-a -t %s -r %s:80 -m -w 1\n", s, s, rs1, s, rs2 }
        BEGIN {
            for (i = 1; i < n; i++) {
                a = 10 * 16777216 + 100 * 65536 + i
                svc(sprintf("%d.%d.%d.%d:80", int(a / 16777216), int(a / 65536) % 256, int(a / 256) % 256, a % 256))
            }
            svc(vip ":80")
        }' >"$2"
}

# start_services N: a fresh nfvs (RUST_LOG=info) with N services; records the time from its spawn
# to its "ready" line as startup_s_N. Returns non-zero, reported, if it is not ready in time.
start_services() {
    local n=$1 rules=$RUN/services-$1.rules t0 t1 i
    gen_services "$n" "$rules"
    CUR=nfvs-services
    ROUND=services-$n
    NFVS_LOG=$LOGS/nfvs-services-$n.log
    mkdir -p "$RUN/state"
    flush_ct
    t0=$(now_us)
    ip netns exec "$DIR_NS" env RUST_LOG=info "$NFVS" run --rules "$rules" --masquerade "$RS_NET" \
        --state-dir "$RUN/state" --control "$RUN/control.sock" --drain-timeout 0 >"$NFVS_LOG" 2>&1 &
    CUR_PID=$!
    PIDS+=("$CUR_PID")
    for ((i = 0; i < 30000; i++)); do # 300 s
        if grep -q -m1 'nfvs: ready' "$NFVS_LOG" 2>/dev/null; then
            t1=$(now_us)
            record - nfvs-services "startup_s_$n" "$(awk -v d=$((t1 - t0)) 'BEGIN{printf "%.3f", d / 1e6}')"
            say "services: $n service(s): ready after $(awk -v d=$((t1 - t0)) 'BEGIN{printf "%.3f", d / 1e6}') s"
            return 0
        fi
        if ! kill -0 "$CUR_PID" 2>/dev/null; then
            fail "services: nfvs with $n services exited during start-up: $(tail -n 3 "$NFVS_LOG")"
            return 1
        fi
        sleep 0.01
    done
    fail "services: nfvs with $n services was not ready within 300 s"
    return 1
}

# time_adm METRIC ARGS...: runs `nfvs adm ARGS` against the running daemon and records its wall
# time in ms as METRIC. Outside the namespace (the control socket is a path), so no
# `ip netns exec` is timed.
time_adm() {
    local metric=$1 t0 t1
    shift
    t0=$(now_us)
    if ! "$NFVS" adm --control "$RUN/control.sock" "$@" >/dev/null 2>>"$LOGS/services-adm.err"; then
        fail "services: nfvs adm $* failed: $(tail -n 1 "$LOGS/services-adm.err")"
        return 1
    fi
    t1=$(now_us)
    record - nfvs-services "$metric" "$(awk -v d=$((t1 - t0)) 'BEGIN{printf "%.2f", d / 1000}')"
}

# services_cps N: new connections/s to the lab's service with N services configured, and the
# machine's busy and softirq CPU per 1,000 of them (the kernel's per-packet rule cost shows in
# softirq).
services_cps() {
    local n=$1 out rps req err m0 m1 s0 s1
    wait_balanced || { fail "services: nfvs with $n services does not balance"; return 1; }
    flush_ct
    read -r m0 s0 < <(machine_ticks)
    if ! out=$(run_wrk "close-c$SVC_CONC" "$SVC_CONC" -H 'Connection: close'); then
        fail "services: wrk with $n services gave no result"
        return 1
    fi
    read -r m1 s1 < <(machine_ticks)
    read -r rps req err <<<"$out"
    record - nfvs-services "cps_$n" "$rps"
    record - nfvs-services "wrk_errors_$n" "$err"
    if ((req > 0)); then
        record - nfvs-services "busy_ms_per_1k_$n" "$(awk -v t=$((m1 - m0)) -v hz="$CLK_TCK" -v n="$req" 'BEGIN{printf "%.2f", t / hz * 1e6 / n}')"
        record - nfvs-services "softirq_ms_per_1k_$n" "$(awk -v t=$((s1 - s0)) -v hz="$CLK_TCK" -v n="$req" 'BEGIN{printf "%.2f", t / hz * 1e6 / n}')"
    fi
    say "services: $n service(s): $rps conn/s ($req requests, $err errors)"
}

measure_services() {
    local counts n max=0 min=0 k
    counts=$(tr ' ' '\n' <<<"$SVC_COUNTS" | grep . | sort -n | uniq | tr '\n' ' ')
    for n in $counts; do
        ((n > max)) && max=$n
        ((min == 0 || n < min)) && min=$n
    done
    record - nfvs-services counts "$max"
    meta services "counts $counts; $SVC_EDITS edits of each kind with $max services; wrk c=$SVC_CONC for ${DURATION}s"
    for n in $counts; do
        step "services: $n ($((SECONDS - START)) s so far)"
        if ! start_services "$n"; then
            stop_contender nfvs
            continue
        fi
        if ((n == max)); then
            # What an adm call costs without an edit: one service's listing.
            for ((k = 1; k <= SVC_EDITS; k++)); do time_adm adm_list_one_ms -L -n -t "$VIP:80" || break; done
            for ((k = 1; k <= SVC_EDITS; k++)); do
                time_adm edit_add_service_ms -A -t "10.200.0.$k:80" -s rr || break
                time_adm edit_add_server_ms -a -t "10.200.0.$k:80" -r "${RS_IPS[0]}:80" -m -w 1 || break
                time_adm edit_delete_service_ms -D -t "10.200.0.$k:80" || break
            done
            say "services: $SVC_EDITS edits of each kind timed"
        fi
        if ((n == max || n == min)); then services_cps "$n" || true; fi
        stop_contender nfvs
    done
}

# ---------------------------------------------------------------------------------------------
# Main

START=$SECONDS
rm -rf "$OUT"
mkdir -p "$RUN" "$LOGS"
: >"$OUT/raw.tsv"

meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (with local changes)')"
meta cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
meta nproc "$(nproc)"
meta kernel "$(uname -sr)"
meta memory "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
meta load_before "$(cut -d' ' -f1-3 /proc/loadavg) (1/5/15-min load average: other work on the machine shares its CPUs)"
meta tools "$(wrk -v 2>&1 | head -n1 | awk '{print "wrk", $2}'), $(haproxy -v | head -n1 | awk '{print "haproxy", $3}'), $(iperf3 --version | head -n1 | awk '{print "iperf3", $2}'), $(nginx -v 2>&1 | sed 's/.*version: //'), $(nft --version)"
meta contenders "$CONTENDERS"
meta phases "$ONLY"
if awk -v n="$(nproc)" '{exit !($1 > n / 2)}' /proc/loadavg; then
    note "the machine was busy when the run started (1-min load $(cut -d' ' -f1 /proc/loadavg) on $(nproc) CPUs): expect noisy numbers; compare the rounds"
fi
meta settings "ROUNDS=$ROUNDS DURATION=${DURATION}s CONCS=\"$CONCS\" KA_CONC=$KA_CONC LAT_N=$LAT_N IPERF_SECS=$IPERF_SECS FILL_CONNS=$FILL_CONNS FILL_CONC=$FILL_CONC; wrk threads = min(2, concurrency); client: net.ipv4.tcp_tw_reuse=1, ip_local_port_range 1024-65535; director: ip_local_port_range 1024-65535; conntrack flushed in the director before every measurement; churn: CHURN_SECS=$CHURN_SECS CHURN_RATE=$CHURN_RATE CHURN_CONC=$CHURN_CONC CHURN_WARMUP=${CHURN_WARMUP}s CHURN_SAMPLE=${CHURN_SAMPLE}s"

if [[ -n ${NFVS_BIN:-} ]]; then
    NFVS=$(realpath "$NFVS_BIN")
else
    step "building nfvs (cargo build --release)"
    cargo build --release >&2
    NFVS=$PWD/target/release/nfvs
fi
[[ -x $NFVS ]] || die "$NFVS was not built"
FLOOR=
if phase rounds && [[ " $CONTENDERS " == *" floor"* ]]; then
    step "building the data path's floor (cargo build --release --example queue_floor)"
    cargo build --release --example queue_floor >&2
    FLOOR=$PWD/target/release/examples/queue_floor
fi

if phase sched && ((SCHED_MS > 0)); then
    step "scheduler micro-benchmark (cargo build --release --example sched_bench; $SCHED_MS ms per cell)"
    cargo build --release --example sched_bench >&2
    target/release/examples/sched_bench "$SCHED_MS" >"$OUT/sched_bench.txt" ||
        fail "sched_bench failed"
    cat "$OUT/sched_bench.txt" >&2
fi

step "building the latency/fill probe"
PROBE=$PWD/$OUT/connprobe
gcc -O2 -Wall -Wextra -o "$PROBE" scripts/bench/connprobe.c

step "building the lab (scripts/lab.sh up $PREFIX)"
lab_up=1
scripts/lab.sh up "$PREFIX" >&2
# Client tuning: wrk closes first behind a proxy (it has the whole answer before the proxy's
# FIN arrives), so the client collects TIME_WAIT sockets, and connect()'s port search through
# them (net/ipv4/inet_hashtables.c, __inet_hash_connect) costs milliseconds and would leak
# into the next contender's latency. tw_reuse lets connect() take such ports (RFC 6191-style
# timestamp check, tcp_twsk_unique); the wide range gives wrk and HAProxy more tuples.
in_client sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65535"
in_dir sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
if phase rounds; then
    for i in "${!RS_IPS[@]}"; do
        ns=$PREFIX-rs$((i + 1))
        ip netns exec "$ns" iperf3 -s -B "${RS_IPS[i]}" -p 5201 >"$LOGS/iperf3-server-rs$((i + 1)).log" 2>&1 &
        PIDS+=("$!")
    done
fi

read -ra CONT <<<"$CONTENDERS"
ncont=${#CONT[@]}
phase rounds || ROUNDS=0
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    for ((k = 0; k < ncont; k++)); do
        c=${CONT[(k + ROUND - 1) % ncont]}
        step "round $ROUND/$ROUNDS: $c ($((SECONDS - START)) s so far)"
        flush_ct
        if ! start_contender "$c" || ! wait_balanced; then
            fail "$c round $ROUND: could not be set up (logs in $LOGS)"
            stop_contender "$c" || true
            continue
        fi
        measure
        stop_contender "$c" || fail "$c round $ROUND: teardown failed"
    done
done

if phase rss && [[ " $CONTENDERS " == *" nfvs "* ]] && ((FILL_CONNS > 0)); then
    step "nfvs RSS with $FILL_CONNS tracked connections"
    measure_rss
fi

if phase churn && [[ " $CONTENDERS " == *" nfvs "* ]] && ((CHURN_SECS > 0)); then
    step "nfvs RSS over $CHURN_SECS s of churn ($((SECONDS - START)) s so far)"
    measure_churn
fi

if phase services; then
    step "nfvs with many services ($((SECONDS - START)) s so far)"
    measure_services
fi

meta load_after "$(cut -d' ' -f1-3 /proc/loadavg)"
meta elapsed "$((SECONDS - START)) s"
note "whole run took $((SECONDS - START)) s"

step "report ($OUT/results.md)"
python3 scripts/bench/summarise.py "$OUT" >"$OUT/results.md"
cat "$OUT/results.md"

((FAILED == 0)) || die "some contenders or measurements could not run: see $OUT/failures.txt"
