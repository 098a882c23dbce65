#!/usr/bin/env python3
"""Turns scripts/bench.sh's raw measurements into its markdown report.

usage: summarise.py OUTDIR

Reads from OUTDIR:
  raw.tsv         one measurement a line: ROUND<TAB>CONTENDER<TAB>METRIC<TAB>VALUE
                  (ROUND is "-" for the one-off measurements, such as nfvs's RSS)
  meta.tsv        KEY<TAB>VALUE lines describing the machine and the settings
  failures.txt    one line per thing that could not run (may be missing or empty)
  sched_bench.txt the scheduler micro-benchmark's tables (may be missing)
  churn.tsv       nfvs's samples during the churn (may be missing)
The phase `services` records under the contender "nfvs-services" (round "-"): startup_s_N,
cps_N, busy_ms_per_1k_N, softirq_ms_per_1k_N and wrk_errors_N per count of services N, and
one value per timed `nfvs adm` call of adm_list_one_ms and edit_*_ms.
and prints the report: medians of the rounds, absolute and as ratios to the kernel-only
ceiling, then the per-round values so the spread can be judged.
"""

import statistics
import sys
from collections import defaultdict
from pathlib import Path

BASELINE = "kernel"

# Contender names as bench.sh records them -> column headings.
LABELS = {
    "kernel": "kernel-only (nft dnat)",
    "haproxy": "HAProxy (tcp)",
    "nfvs": "nfvs (RUST_LOG=warn)",
    "nfvs-base": "nfvs before the change (NFVS_BASE_BIN, warn)",
    "nfvs-pin": "nfvs --queues auto --pin-workers (warn)",
    "nfvs-info": "nfvs (RUST_LOG=info)",
    "floor-table": "floor: nfvs's table, no queue",
    "floor": "floor: NFQUEUE round trip only",
    "floor-pin": "floor, a queue per CPU, pinned",
}

# metric -> (label, kind, digits). kind: "rate" is compared as a ratio to the baseline;
# "lat" as microseconds added to the baseline; "cost" as a ratio, lower is better; "count"
# is summed over the rounds instead of taking a median (errors, drops).
METRICS = [
    ("cps_c1", "new connections/s, c=1", "rate", 0),
    ("cps_c8", "new connections/s, c=8", "rate", 0),
    ("cps_c64", "new connections/s, c=64", "rate", 0),
    ("lat_p50_us", "connect latency p50 (us)", "lat", 1),
    ("lat_p99_us", "connect latency p99 (us)", "lat", 1),
    ("req_p50_us", "whole short request p50 (us)", "lat", 1),
    ("req_p99_us", "whole short request p99 (us)", "lat", 1),
    ("ka_rps", "keep-alive requests/s", "rate", 0),
    ("iperf_gbps", "iperf3 through the VIP (Gbit/s)", "rate", 2),
    ("cpu_ms_per_1k", "balancer process CPU ms / 1,000 new conns", "cost", 1),
    ("busy_ms_per_1k", "whole machine busy CPU ms / 1,000 new conns", "cost", 1),
    ("softirq_ms_per_1k", "whole machine softirq ms / 1,000 new conns", "cost", 1),
    ("wrk_errors", "wrk socket errors + non-2xx (sum of rounds)", "count", 0),
    ("dir_rsts", "TCP RSTs sent by the director (sum of rounds)", "count", 0),
    ("rs_rsts", "TCP RSTs sent by the real servers (sum of rounds)", "count", 0),
    ("q_dropped", "NFQUEUE queue_dropped (sum of rounds)", "count", 0),
    ("q_user_dropped", "NFQUEUE user_dropped (sum of rounds)", "count", 0),
    ("log_warnings", "daemon warning lines (sum of rounds)", "count", 0),
]

# The churn's RSS is called flat when it grew by less than FLAT_MB from the first steady-state
# sample to the last and the least-squares slope over those samples is under FLAT_SLOPE MB a
# minute (a leak of FLAT_SLOPE would add FLAT_MB within 10 minutes), judged on at least
# FLAT_MIN_SAMPLES samples.
FLAT_MB = 1.0
FLAT_SLOPE = 0.1
FLAT_MIN_SAMPLES = 3


def churn_verdict(ch):
    """(flat: bool or None when it cannot be judged, one-line description)."""
    if "rss_start_mb" not in ch:
        return None, "no samples after the warm-up"
    grew = ch["rss_end_mb"] - ch["rss_start_mb"]
    slope = ch.get("rss_slope_mb_min")
    n = int(ch.get("steady_samples", 0))
    span = ch["rss_end_s"] - ch["rss_start_s"]
    text = (f"{ch['rss_start_mb']:.1f} MB at {ch['rss_start_s']:.0f} s -> {ch['rss_end_mb']:.1f} MB at "
            f"{ch['rss_end_s']:.0f} s ({grew:+.2f} MB; slope "
            + (f"{slope:+.3f} MB/min" if slope is not None else "—")
            + f" over {n} samples, {span:.0f} s; highest sample {ch.get('rss_max_mb', 0):.1f} MB; "
            f"{ch.get('conns_min', 0):,.0f} to {ch.get('conns_max', 0):,.0f} connections tracked)")
    if n < FLAT_MIN_SAMPLES or slope is None:
        return None, text + ": too few samples to judge"
    flat = grew < FLAT_MB and slope < FLAT_SLOPE
    return flat, text + (": flat" if flat else ": growing") + \
        f" (flat: < {FLAT_MB:g} MB growth and slope < {FLAT_SLOPE:g} MB/min)"


def read_tsv(path):
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(line.split("\t"))
    return rows


def fmt(v, digits):
    if v is None:
        return "—"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def measure_table(p, values, rows):
    """A two-column table of the `rows` (key, label, digits) present in `values`."""
    p("| measure | value |")
    p("|---|---:|")
    for key, label, digits in rows:
        if key in values:
            p(f"| {label} | {fmt(values[key], digits)} |")
    p()


def print_rounds(p, conts, values, agg):
    """The results table (medians, ratios) and how to read it."""
    p("## Results (medians of the rounds)")
    p()
    p("Ratios are to the kernel-only ceiling (higher is better for rates, lower for costs); "
      "latencies show the microseconds added to the kernel-only path.")
    p()
    p("| metric | " + " | ".join(LABELS.get(c, c) for c in conts) + " |")
    p("|---|" + "---:|" * len(conts))
    for metric, label, kind, digits in METRICS:
        if not any(values[c].get(metric) for c in conts):
            continue
        base = agg(BASELINE, metric, kind) if BASELINE in conts else None
        cells = []
        for c in conts:
            v = agg(c, metric, kind)
            cell = fmt(v, digits)
            if v is not None and base is not None and c != BASELINE:
                if kind in ("rate", "cost") and base > 0:
                    cell += f" ({v / base:.2f}x)"
                elif kind == "lat":
                    cell += f" ({v - base:+.1f})"
            cells.append(cell)
        p(f"| {label} | " + " | ".join(cells) + " |")
    p()

    p("How to read it:")
    p()
    p("- *new connections/s*: wrk with `Connection: close` (one request per connection; the "
      "server closes first). One client address means the director's conntrack table soon holds "
      "TIME_WAIT entries for the very tuples the client reuses: the kernel's TCP tracker replaces "
      "such an entry by itself; nfvs, which saw the old connection finish, deletes the entry "
      "before it creates its own (design.md fact 6), so this load also measures that path.")
    p("- *connect latency*: the client's connect() call, SYN to ESTABLISHED, one at a time. "
      "Behind HAProxy the handshake ends at the director (the proxy's own connection to the real "
      "server comes later), so it is shorter than the kernel path by design; *whole short "
      "request* (connect, GET, read to EOF) is the like-for-like figure.")
    p("- *balancer process CPU*: utime + stime of the daemon or HAProxy (all threads) during the "
      "highest-concurrency `Connection: close` run; kernel-only has no process (0). The "
      "director's softirq work cannot be separated from the client's and the servers' (one "
      "machine), so the *whole machine* rows count everything, including other load on it.")
    p("- *TCP RSTs*: counted in the director's and the real servers' namespaces during the HTTP "
      "load. Through DNAT there should be none (a RST means a packet met a host with no socket "
      "for it); HAProxy's director RSTs are its own aborts of connections wrk leaves open when "
      "it stops.")
    p()


def print_every_round(p, conts, values):
    """Every round's value of every metric."""
    p("## Every round")
    p()
    p("Values of rounds 1, 2, 3, ... in run order (the spread shows how noisy the machine was).")
    p()
    p("| metric | " + " | ".join(LABELS.get(c, c) for c in conts) + " |")
    p("|---|" + "---:|" * len(conts))
    for metric, label, kind, digits in METRICS:
        if not any(values[c].get(metric) for c in conts):
            continue
        cells = []
        for c in conts:
            vals = [v for r, v in sorted(values[c].get(metric, []), key=lambda rv: int(rv[0])) if r != "-"]
            cells.append(" / ".join(fmt(v, digits) for v in vals) if vals else "—")
        p(f"| {metric} | " + " | ".join(cells) + " |")
    p()


def churn_per_minute(path):
    """[(secs, VmRSS MB, connections nfvs tracks)] for the churn's samples nearest each whole
    minute (and the last one)."""
    rows = read_tsv(path)[1:] if path.exists() else []
    samples = []
    for r in rows:
        try:
            samples.append((float(r[0]), int(r[6]) / 1024, int(r[3]) + int(r[4])))
        except (ValueError, IndexError):
            continue
    picked, minute = [], 0
    for i, (t, mb, conns) in enumerate(samples):
        if t >= minute * 60 - 1 or i == len(samples) - 1:
            picked.append((t, mb, conns))
            minute = int((t + 1) // 60) + 1
    return picked


def print_services(p, sv):
    """The `services` phase: start-up, edits and per-connection cost with many services."""
    counts = sorted({int(m.rsplit("_", 1)[1]) for m in sv if m.startswith(("startup_s_", "cps_"))})
    p("## nfvs with many services (issue 11 #7)")
    p()
    p("N-1 services on addresses nobody uses, then the lab's VIP:80 last (scripts/bench.sh, "
      "`gen_services`); each a fresh daemon, RUST_LOG=info.")
    p()
    p("| services | " + " | ".join(f"{n:,}" for n in counts) + " |")
    p("|---|" + "---:|" * len(counts))
    for metric, label, digits in (
        ("startup_s", "start-up to the ready line (s)", 3),
        ("cps", "new connections/s to the lab's service", 0),
        ("busy_ms_per_1k", "whole machine busy CPU ms / 1,000 new conns", 1),
        ("softirq_ms_per_1k", "whole machine softirq ms / 1,000 new conns", 1),
        ("wrk_errors", "wrk socket errors + non-2xx", 0),
    ):
        cells = [fmt(sv[f"{metric}_{n}"][0][1], digits) if sv.get(f"{metric}_{n}") else "—" for n in counts]
        if any(c != "—" for c in cells):
            p(f"| {label} | " + " | ".join(cells) + " |")
    p()
    edits = [(m, l) for m, l in (
        ("adm_list_one_ms", "`adm -L -n -t VIP:80` (no edit: the adm process and a round trip)"),
        ("edit_add_service_ms", "`adm -A -t ADDR:80 -s rr`"),
        ("edit_add_server_ms", "`adm -a -t ADDR:80 -r RIP:80 -m -w 1`"),
        ("edit_delete_service_ms", "`adm -D -t ADDR:80`"),
    ) if sv.get(m)]
    if edits:
        n = int(sv["counts"][0][1]) if sv.get("counts") else max(counts, default=0)
        p(f"Edits with {n:,} services (wall time of the `nfvs adm` process, ms):")
        p()
        p("| command | median | min | max | calls |")
        p("|---|---:|---:|---:|---:|")
        for m, label in edits:
            vals = [v for _, v in sv[m]]
            p(f"| {label} | {statistics.median(vals):.1f} | {min(vals):.1f} | {max(vals):.1f} | {len(vals)} |")
        p()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    meta = dict((r[0], r[1] if len(r) > 1 else "") for r in read_tsv(out / "meta.tsv"))
    raw = read_tsv(out / "raw.tsv")

    # values[contender][metric] -> [(round, value)]
    values = defaultdict(lambda: defaultdict(list))
    order = []
    for row in raw:
        if len(row) != 4:
            continue
        rnd, cont, metric, val = row
        try:
            v = float(val)
        except ValueError:
            continue
        if cont not in order and rnd != "-":
            order.append(cont)
        values[cont][metric].append((rnd, v))
    wanted = meta.get("contenders", "").split()
    conts = [c for c in wanted if c in order] + [c for c in order if c not in wanted]
    if BASELINE in conts:
        conts.remove(BASELINE)
        conts.insert(0, BASELINE)

    def agg(cont, metric, kind):
        vals = [v for r, v in values[cont].get(metric, []) if r != "-"]
        if not vals:
            return None
        return sum(vals) if kind == "count" else statistics.median(vals)

    p = print
    p("# nfvs benchmark: kernel-only DNAT vs HAProxy vs nfvs")
    p()
    p(f"Run {meta.get('date', '?')}, nfvs {meta.get('commit', '?')}, by `scripts/bench.sh`.")
    p()
    p("## Machine")
    p()
    for key in ("cpu", "nproc", "kernel", "memory", "load_before", "load_after", "tools"):
        if key in meta:
            p(f"- {key.replace('_', ' ')}: {meta[key]}")
    p()
    p("## Settings")
    p()
    p(f"- {meta.get('settings', '?')}")
    p("- Lab: scripts/lab.sh (client, director, two nginx real servers in network namespaces; "
      "everything shares this machine's CPUs, so every contender's numbers include the client's "
      "and the servers' CPU use).")
    if conts:
        p("- Contenders run one at a time in the director, interleaved over the rounds (the order "
          "rotates each round); each table cell is the median of the rounds.")
    if meta.get("phases", "sched rounds rss churn").split() != "sched rounds rss churn".split():
        p(f"- Only these phases ran: {meta['phases']}.")
    p()

    failures = (out / "failures.txt").read_text().strip() if (out / "failures.txt").exists() else ""
    if failures:
        p("## Could not run")
        p()
        for line in failures.splitlines():
            p(f"- {line}")
        p()

    if conts:
        print_rounds(p, conts, values, agg)

    rss = {m: v for m, vals in values.get("nfvs-rss", {}).items() for _, v in vals[:1]}
    if rss:
        p("## nfvs memory with tracked connections")
        p()
        measure_table(p, rss, [
            ("rss_idle_mb", "VmRSS after start, no connections (MB)", 1),
            ("fill_done", "connections made by the fill (Connection: close, TIME_WAIT after)", 0),
            ("fill_rate", "fill rate (connections/s)", 0),
            ("ct_ours", "conntrack entries with nfvs's mark in the director", 0),
            ("ct_total", "conntrack entries in the director", 0),
            ("daemon_conns", "connections nfvs counts (ActiveConn + InActConn)", 0),
            ("rss_mb", "VmRSS with those connections tracked (MB)", 1),
            ("hwm_mb", "VmHWM, peak RSS (MB)", 1),
            ("bytes_per_conn", "RSS growth per tracked connection (bytes)", 0),
        ])

    ch = {m: v for m, vals in values.get("nfvs-churn", {}).items() for _, v in vals[:1]}
    flat, verdict = churn_verdict(ch) if ch else (None, "")
    if ch:
        p("## nfvs memory over a churn")
        p()
        p(f"A fresh daemon under {fmt(ch.get('churn_secs'), 0)} s of new short connections "
          f"(connprobe churn: {fmt(ch.get('churn_rate_target'), 0)}/s, at most "
          f"{fmt(ch.get('churn_conc'), 0)} in flight, new tuples; TIME_WAIT lasts 120 s, so the "
          f"population settles after the {fmt(ch.get('warmup_s'), 0)} s warm-up and keeps being "
          f"replaced); a sample every {fmt(ch.get('sample_s'), 0)} s in churn.tsv.")
        p()
        p(f"**RSS over churn**: {verdict}.")
        p()
        measure_table(p, ch, [
            ("conns_made", "connections made", 0),
            ("conn_rate", "rate (connections/s)", 0),
            ("conn_errors", "failed connections", 0),
            ("conns_mean", "connections nfvs tracks after the warm-up, mean", 0),
            ("conns_min", "... minimum", 0),
            ("conns_max", "... maximum", 0),
            ("ct_mean", "conntrack entries in the director after the warm-up, mean", 0),
            ("rss_first_mb", "VmRSS at the start of the churn (MB)", 1),
            ("rss_start_mb", "VmRSS at the first sample after the warm-up (MB)", 1),
            ("rss_end_mb", "VmRSS at the end (MB)", 1),
            ("rss_max_mb", "VmRSS, highest sample (MB)", 1),
            ("hwm_mb", "VmHWM, peak RSS, also between samples (MB)", 1),
            ("rss_slope_mb_min", "VmRSS slope after the warm-up (MB/minute, least squares)", 3),
            ("steady_samples", "samples after the warm-up", 0),
            ("dir_rsts", "TCP RSTs sent by the director", 0),
            ("rs_rsts", "TCP RSTs sent by the real servers", 0),
            ("q_dropped", "NFQUEUE queue_dropped", 0),
            ("q_user_dropped", "NFQUEUE user_dropped", 0),
            ("log_warnings", "daemon warning lines", 0),
        ])
        per_min = churn_per_minute(out / "churn.tsv")
        if per_min:
            p("VmRSS (MB) and connections tracked, once a minute: "
              + ", ".join(f"{t:.0f} s {mb:.1f} ({conns:,})" for t, mb, conns in per_min) + ".")
            p()

    sv = values.get("nfvs-services", {})
    if sv:
        print_services(p, sv)

    def speed_targets(n):
        targets = []
        if n not in conts or BASELINE not in conts:
            return targets

        def ratio(metric):
            a, b = agg(n, metric, "rate"), agg(BASELINE, metric, "rate")
            return None if a is None or not b else a / b

        def added(metric):
            a, b = agg(n, metric, "lat"), agg(BASELINE, metric, "lat")
            return None if a is None or b is None else a - b

        for metric, goal in (("cps_c8", 0.9), ("cps_c64", 0.9), ("ka_rps", 0.97), ("iperf_gbps", 0.97)):
            r = ratio(metric)
            if r is not None:
                targets.append((f"{dict((m, l) for m, l, _, _ in METRICS)[metric]} >= {goal}x kernel",
                                f"{r:.2f}x", r >= goal))
        a = added("lat_p50_us")
        if a is not None:
            targets.append(("connect latency p50 added <= 15 us", f"{a:+.1f} us", a <= 15))
        return targets

    targets = speed_targets("nfvs")
    if "rss_mb" in rss:
        targets.append((f"RSS < 50 MB with {fmt(rss.get('daemon_conns'), 0)} tracked connections",
                        f"{rss['rss_mb']:.1f} MB", rss["rss_mb"] < 50))
    if ch and flat is not None:
        secs = int(ch.get("churn_secs", 0))
        length = f"{secs // 60}-minute" if secs % 60 == 0 else f"{secs} s"
        targets.append((f"RSS flat over a {length} churn "
                        f"({fmt(ch.get('conns_mean'), 0)} tracked)",
                        f"{ch['rss_end_mb'] - ch['rss_start_mb']:+.2f} MB, "
                        f"{ch['rss_slope_mb_min']:+.3f} MB/min", flat))
    if "rss_max_mb" in ch:
        # VmHWM catches what the samples miss (a hash table's resize holds both tables a moment).
        peak = max(ch["rss_max_mb"], ch.get("hwm_mb", 0))
        targets.append(("RSS < 50 MB throughout the churn (VmHWM: the peak)", f"{peak:.1f} MB", peak < 50))
    for title, rows in (("nfvs (RUST_LOG=warn)", targets),
                        (LABELS["nfvs-pin"], speed_targets("nfvs-pin"))):
        if not rows:
            continue
        p(f"## {title} against the targets of issue 5")
        p()
        p("| target | measured | met |")
        p("|---|---:|:---:|")
        for t, m, ok in rows:
            p(f"| {t} | {m} | {'yes' if ok else 'no'} |")
        p()

    floor_pairs = [(f, n) for f, n in (("floor", "nfvs"), ("floor", "nfvs-base"), ("floor-pin", "nfvs-pin"))
                   if f in conts and n in conts]
    if (floor_pairs or "floor-table" in conts) and BASELINE in conts:
        p("## The data path's floor")
        p()
        p("The floors install nfvs's table with `--overload fallback` (tests/bench/queue_floor.rs): "
          "the kernel's fallback rules balance every connection. `floor-table` has no divert rule: "
          "what the rule set costs by itself. `floor` queues each SYN and answers it ACCEPT at once "
          "with nfvs's queue code, nothing else: what deciding in userspace costs at all, one NFQUEUE "
          "round trip per SYN, which any design that queues each SYN pays. What nfvs costs beyond "
          "it is its own work (scheduler, ctnetlink create and delete, events, state lock).")
        p()
        head = ["metric"]
        if "floor-table" in conts:
            head.append(f"{LABELS['floor-table']} / kernel")
        for f, n in floor_pairs:
            head += [f"{LABELS[f]} / kernel", f"{LABELS[n]} / floor"]
        p("| " + " | ".join(head) + " |")
        p("|---|" + "---:|" * (len(head) - 1))

        def over(a, b, metric):
            x, y = agg(a, metric, "rate"), agg(b, metric, "rate")
            return f"{x / y:.2f}x" if x and y else "—"

        for metric in ("cps_c1", "cps_c8", "cps_c64"):
            row = [dict((m, l) for m, l, _, _ in METRICS)[metric]]
            if "floor-table" in conts:
                row.append(over("floor-table", BASELINE, metric))
            for f, n in floor_pairs:
                row += [over(f, BASELINE, metric), over(n, f, metric)]
            p("| " + " | ".join(row) + " |")
        p()

    if conts:
        print_every_round(p, conts, values)

    sched = out / "sched_bench.txt"
    if sched.exists() and sched.read_text().strip():
        p("## Scheduler micro-benchmark (`cargo run --release --example sched_bench`)")
        p()
        p("```")
        p(sched.read_text().rstrip())
        p("```")
        p()

    notes = out / "notes.txt"
    if notes.exists() and notes.read_text().strip():
        p("## Notes from this run")
        p()
        for line in notes.read_text().splitlines():
            if line.strip():
                p(f"- {line}")
        p()


if __name__ == "__main__":
    main()
