#!/usr/bin/env bash
# What a hostile tester does to nfvs (issue 11), on the seed lab in network namespaces, with
# one table at the end of what held and the numbers.
#
# usage: sudo scripts/torture.sh            (about 3 minutes on a 2-core VM)
#
# Builds nfvs (release; NFVS_BIN runs another build), builds a lab (scripts/lab.sh, prefix
# "tort", removed on any exit), then, each against a fresh daemon:
#   second-daemon  a second `nfvs run` with its own queue, control socket and state directory
#                  next to a running one: refused? the first one's table, ip_forward, clients?
#   syn-flood      FLOOD_SECS of `hping3 -S --rand-source --flood` to the VIP while two
#                  rate-limited downloads run: downloads intact? log lines (all, WARN)? RSS
#                  before / peak / after? seconds from the flood's end until real connections
#                  answer within 0.5 s, and until the flood's conntrack entries are gone
#   slow-control   six idle control clients, one dribbling a byte every 2 s, then a 16 MB
#                  request: how long `nfvs adm -L -n` takes meanwhile; RSS peak and after
#   forward-drop   `iptables -P FORWARD DROP` in the director after start-up: seconds until
#                  nfvs says so, and whether the rule it names makes the VIP work again
#   services-10k   10,000 services (one real server each): seconds to ready, one `adm -A`, RSS
# Floods and loads are bounded in time and stay inside the lab's namespaces.
# TESTS="syn-flood services-10k" runs only those (default: all five).
# Output: the table on stdout (markdown), logs in target/torture/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly PREFIX=tort DIR_NS=tort-dir CLIENT_NS=tort-client
readonly VIP=192.168.199.200 RS_NET=192.168.226.0/24
readonly OUT=target/torture
FLOOD_SECS=${FLOOD_SECS:-15}

die() { echo "torture.sh: $*" >&2; exit 1; }
say() { echo "torture.sh: $*" >&2; }
[[ $(id -u) == 0 ]] || die "must run as root (network namespaces)"
if [[ -d $HOME/.cargo/bin && :$PATH: != *:$HOME/.cargo/bin:* ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

scripts/install-deps.sh --torture >&2
if [[ -n ${NFVS_BIN:-} ]]; then
    NFVS=$(realpath "$NFVS_BIN")
else
    cargo build --release >&2
    NFVS=$PWD/target/release/nfvs
fi
mkdir -p "$OUT"
RUN=/run/nfvs-lab/$PREFIX

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    scripts/lab.sh down "$PREFIX" >/dev/null 2>&1 || true
}
trap cleanup EXIT
scripts/lab.sh up "$PREFIX" >&2

in_dir() { ip netns exec "$DIR_NS" "$@"; }
in_client() { ip netns exec "$CLIENT_NS" "$@"; }
rss_kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a < b)}'; } # numeric a < b
ROWS=()
row() { ROWS+=("| $1 | $2 | $3 |"); }
want() { [[ " ${TESTS:-second-daemon syn-flood slow-control forward-drop services-10k} " == *" $1 "* ]]; }

DAEMON=
start_nfvs() { # LOG RULES [args]
    local log=$1 rules=$2
    shift 2
    ip netns exec "$DIR_NS" env RUST_LOG="${LEVEL:-info}" "$NFVS" run --rules "$rules" --masquerade "$RS_NET" \
        --state-dir "$RUN/state" --control "$RUN/control.sock" --drain-timeout 0 "$@" >"$log" 2>&1 &
    DAEMON=$!
    PIDS+=("$DAEMON")
    local i
    for ((i = 0; i < 600; i++)); do
        in_dir nft list table ip nfvs >/dev/null 2>&1 && return 0
        kill -0 "$DAEMON" 2>/dev/null || { say "nfvs exited: $(tail -3 "$log")"; return 1; }
        sleep 0.1
    done
    return 1
}
stop_nfvs() {
    kill -TERM "$DAEMON" 2>/dev/null || true
    wait "$DAEMON" 2>/dev/null || true
    DAEMON=
}
curl_vip() { in_client curl -s -m "${1:-2}" -o /dev/null -w '%{http_code}' "http://$VIP/" 2>/dev/null || true; }

# ---- second-daemon
if want second-daemon; then
say "second-daemon"
start_nfvs "$OUT/second-a.log" rules/lab.rules
second=$(ip netns exec "$DIR_NS" "$NFVS" run --rules rules/lab.rules --queue 5 --control "$RUN/c2.sock" \
    --state-dir "$RUN/state2" 2>&1 | tail -n 1 || true)
held=no
if [[ $second == *"another nfvs daemon"* ]] && in_dir nft list table ip nfvs >/dev/null 2>&1 &&
    [[ $(in_dir sysctl -n net.ipv4.ip_forward) == 1 && $(curl_vip) == 200 ]]; then
    held=yes
fi
row second-daemon "$held" "second one: \`${second//|/\\|}\`"
stop_nfvs
fi

# ---- syn-flood
if want syn-flood; then
say "syn-flood ($FLOOD_SECS s)"
LEVEL=info start_nfvs "$OUT/flood.log" rules/lab.rules
for i in 1 2; do
    in_client curl -s --limit-rate 1M -o "$OUT/dl$i.bin" "http://$VIP/big.bin" &
    PIDS+=($!)
    eval "dl$i=\$!"
done
sleep 1
rss0=$(rss_kb "$DAEMON" VmRSS)
lines0=$(wc -l <"$OUT/flood.log")
timeout "$FLOOD_SECS" ip netns exec "$CLIENT_NS" hping3 -q -S --rand-source --flood -p 80 "$VIP" >/dev/null 2>&1 || true
end=$(now)
ct_peak=$(in_dir cat /proc/sys/net/netfilter/nf_conntrack_count)
rss_peak=$(rss_kb "$DAEMON" VmHWM)
recovered=never
while lt "$(since "$end")" 60; do
    if [[ $(curl_vip 0.5) == 200 && $(curl_vip 0.5) == 200 && $(curl_vip 0.5) == 200 ]]; then
        recovered="$(since "$end") s"
        break
    fi
done
gone=never
for ((i = 0; i < 240; i++)); do
    if (($(in_dir cat /proc/sys/net/netfilter/nf_conntrack_count) < 1000)); then
        gone="$(since "$end") s"
        break
    fi
    sleep 0.25
done
sleep 3
rss1=$(rss_kb "$DAEMON" VmRSS)
dl_ok=0
for i in 1 2; do
    eval "wait \$dl$i" && cmp -s "$OUT/dl$i.bin" "$RUN/www/big.bin" && dl_ok=$((dl_ok + 1))
done
lines=$(($(wc -l <"$OUT/flood.log") - lines0))
warns=$(grep -c ' WARN ' "$OUT/flood.log" || true)
stop_nfvs
held=no
[[ $dl_ok == 2 && $recovered != never && $gone != never ]] && ((warns < 100)) && held=yes
row syn-flood "$held" "downloads intact: $dl_ok/2; conntrack $ct_peak at the flood's end; real connections fine $recovered after it, flood entries gone $gone after; log $lines lines ($warns WARN); RSS $((rss0 / 1024)) MB before, $((rss_peak / 1024)) MB peak, $((rss1 / 1024)) MB after"
fi

# ---- slow-control
if want slow-control; then
say "slow-control"
start_nfvs "$OUT/control.log" rules/lab.rules
sock=$RUN/control.sock
for i in 1 2 3 4 5 6; do
    python3 -c "import socket,time; s=socket.socket(socket.AF_UNIX); s.connect('$sock'); time.sleep(40)" &
    PIDS+=($!)
done
python3 -c "
import socket,time
s=socket.socket(socket.AF_UNIX); s.connect('$sock')
for b in b'{\"args\":[\"-L\"]':
    s.send(bytes([b])); time.sleep(2)
" >/dev/null 2>&1 &
PIDS+=($!)
sleep 1
t=$(now)
ok=$(in_dir timeout 60 "$NFVS" adm --control "$sock" -L -n >/dev/null 2>&1 && echo yes || echo no)
list_s=$(since "$t")
python3 -c "
import socket
s=socket.socket(socket.AF_UNIX); s.connect('$sock')
try:
    s.sendall(b'x' * (16 << 20)); s.shutdown(socket.SHUT_WR); s.recv(4096)
except OSError:
    pass
" >/dev/null 2>&1 || true
sleep 1
hwm=$(rss_kb "$DAEMON" VmHWM)
rss=$(rss_kb "$DAEMON" VmRSS)
held=no
[[ $ok == yes ]] && lt "$list_s" 1 && ((hwm < 100 * 1024)) && held=yes
row slow-control "$held" "\`adm -L -n\` with 6 idle clients and a dribbler: $list_s s ($ok); after a 16 MB request: RSS peak $((hwm / 1024)) MB, now $((rss / 1024)) MB"
stop_nfvs
fi

# ---- forward-drop
if want forward-drop; then
say "forward-drop"
start_nfvs "$OUT/forward.log" rules/lab.rules
in_dir iptables -P FORWARD DROP
t=$(now)
said=never
for ((i = 0; i < 80; i++)); do
    curl_vip 0.5 >/dev/null
    if grep -qi 'forward' "$OUT/forward.log" && grep -i 'forward' "$OUT/forward.log" | grep -q WARN; then
        said="$(since "$t") s"
        break
    fi
    sleep 0.25
done
in_dir iptables -I FORWARD -m conntrack --ctstate DNAT -j ACCEPT
works=$(curl_vip 2)
in_dir iptables -D FORWARD -m conntrack --ctstate DNAT -j ACCEPT
in_dir iptables -P FORWARD ACCEPT
stop_nfvs
held=no
[[ $said != never && $works == 200 ]] && held=yes
line=$(grep -i 'forward' "$OUT/forward.log" | grep WARN | head -n 1 | sed 's/^\[[^]]*\] //' | cut -c1-160)
row forward-drop "$held" "said so $said after \`iptables -P FORWARD DROP\`${line:+: \`${line//|/\\|}...\`}; with \`-m conntrack --ctstate DNAT -j ACCEPT\` the VIP answers: $works"
fi

# ---- services-10k
if want services-10k; then
say "services-10k"
rules=$OUT/10k.rules
awk 'BEGIN { for (i = 0; i < 10000; i++) {
    vip = sprintf("10.%d.%d.1", int(i / 250), i % 250)
    printf "-A -t %s:80 -s rr\n-a -t %s:80 -r 192.168.226.130:80 -m -w 1\n", vip, vip } }' >"$rules"
t=$(now)
if LEVEL=warn start_nfvs "$OUT/10k.log" "$rules"; then
    # Ready: it answers nfvs adm (start-up's last step before it serves).
    for ((i = 0; i < 1200; i++)); do
        in_dir "$NFVS" adm --control "$RUN/control.sock" -L -n >/dev/null 2>&1 && break
        sleep 0.1
    done
    ready=$(since "$t")
    t=$(now)
    in_dir "$NFVS" adm --control "$RUN/control.sock" -A -t 10.99.99.1:80 -s rr >/dev/null 2>&1 || true
    edit=$(since "$t")
    rss=$(rss_kb "$DAEMON" VmRSS)
    stop_nfvs
    held=no
    lt "$ready" 2 && lt "$edit" 0.05 && held=yes
    row services-10k "$held" "ready in $ready s; one \`adm -A\` in $edit s; RSS $((rss / 1024)) MB"
else
    row services-10k no "did not start within 60 s (log $OUT/10k.log)"
fi
fi

printf '| test | held | numbers |\n|---|:---:|---|\n'
printf '%s\n' "${ROWS[@]}"
