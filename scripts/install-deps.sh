#!/usr/bin/env bash
# Installs what nfvs needs to build, run its demo and its tests on Debian 12, and only what is
# missing: on a machine that has everything it changes nothing and runs no `apt-get update`.
#
# usage: scripts/install-deps.sh [--bench] [--torture]
#   --bench   also the benchmark tools (haproxy, wrk, iperf3)
#   --torture also scripts/torture.sh's tools (hping3, python3)
#
# Rust: a toolchain in ~/.cargo/bin (rustup's) is used when present. Otherwise Debian's own is
# installed: rustup's installer downloads its toolchain from outside Debian, which may not be
# reachable. Debian 12's plain `cargo`/`rustc` (1.63) are too old for this crate's Cargo.lock
# (version 4 needs cargo >= 1.78), so `cargo-web`/`rustc-web` (kept current in bookworm for the
# browsers' builds; they provide /usr/bin/cargo and /usr/bin/rustc) are preferred when apt
# knows them. Callers must put ~/.cargo/bin on PATH themselves (a script cannot change its
# caller's PATH); scripts/test.sh and scripts/demo.sh do.
set -euo pipefail

say() { echo "install-deps: $*"; }
die() { echo "install-deps: $*" >&2; exit 1; }

bench=0 torture=0
for arg in "$@"; do
    case $arg in
        --bench) bench=1 ;;
        --torture) torture=1 ;;
        -h | --help) sed -n '5,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$arg' (expected --bench or --torture)" ;;
    esac
done

[[ $(id -u) == 0 ]] || die "must run as root (installs Debian packages with apt-get)"
command -v apt-get >/dev/null || die "apt-get not found: this script is for Debian (12)"

# No terminal in CI: never ask.
export DEBIAN_FRONTEND=noninteractive

have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]; }

# "package command": the package is wanted unless it is installed or (when a command is named)
# something else already provides that command (e.g. nginx-full instead of nginx-light).
wanted=(
    "libnftnl-dev -"
    "libmnl-dev -"
    "pkg-config pkg-config"
    "gcc cc"
    "libc6-dev -"
    "ca-certificates -"
    "nftables nft"
    "iproute2 ip"
    "conntrack conntrack"
    "nginx-light nginx"
    "curl curl"
    "iptables iptables"
)
((bench)) && wanted+=("haproxy haproxy" "wrk wrk" "iperf3 iperf3")
((torture)) && wanted+=("hping3 hping3" "python3 python3")

missing=()
for entry in "${wanted[@]}"; do
    read -r pkg cmd <<<"$entry"
    have_pkg "$pkg" && continue
    [[ $cmd != - ]] && have_cmd "$cmd" && continue
    missing+=("$pkg")
done

if ! have_cmd cargo && [[ -x $HOME/.cargo/bin/cargo ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
    say "using the Rust toolchain in ~/.cargo/bin (it is not on PATH: add it)"
fi
need_rust=0
have_cmd cargo || need_rust=1

updated=0
apt_update() {
    ((updated)) && return 0
    say "apt-get update"
    apt-get -qq update
    updated=1
}

if ((need_rust)); then
    apt_update
    # apt-cache knows a package only after the update above.
    if apt-cache show cargo-web >/dev/null 2>&1; then
        missing+=(cargo-web rustc-web)
        say "cargo not found and rustup cannot download here: installing Debian's cargo-web/rustc-web"
    else
        missing+=(cargo rustc)
        say "cargo not found and rustup cannot download here: installing Debian's cargo/rustc"
    fi
fi

if ((${#missing[@]})); then
    apt_update
    say "installing: ${missing[*]}"
    apt-get -qq -y --no-install-recommends install "${missing[@]}" >/dev/null
fi

# Cargo.lock version 4 is read only by cargo >= 1.78.
version=$(cargo --version 2>/dev/null | awk '{print $2}' || true)
[[ -n $version ]] || die "cargo still not found after installing"
IFS=. read -r major minor _ <<<"$version"
if ((major == 1 && minor < 78)); then
    die "cargo $version is too old for this crate (Cargo.lock v4 needs >= 1.78); install cargo-web/rustc-web or a rustup toolchain"
fi

if ((${#missing[@]})); then
    say "done (cargo $version)"
else
    say "nothing missing (cargo $version)"
fi
