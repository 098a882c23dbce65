//! Other programs' forward-hook rules as data, and what they do to nfvs's flows (pure: text
//! in, verdicts out; no I/O).
//!
//! A forwarded packet must pass every base chain registered at the forward hook, in every
//! table and family that applies to it, and iptables-legacy's FORWARD chain too: an `accept`
//! ends only the chain it is in, a `drop` anywhere is final (nft(8), "VERDICT STATEMENT").
//! So each chain is judged on its own, and one that drops is enough for the outage of issue 11
//! #5.
//!
//! What an nfvs flow looks like at the forward hook, as three packets ([`Packet`]):
//! - the client's SYN: `ct state new`, `ct status dnat` (nfvs created the entry with
//!   CTA_NAT_DST, which sets IPS_DST_NAT: include/uapi/linux/netfilter/nf_conntrack_common.h),
//!   original direction, in on the VIP's interface, out on the route to the real server;
//! - the client's later packets: `ct state established`, dnat, original direction;
//! - the real server's answers: `ct state established`, dnat, reply direction, the
//!   interfaces swapped.
//!
//! So `ct state established,related accept` lets everything but the first packet through,
//! and the SYN dies on the policy; `ct status dnat accept` (iptables: `-m conntrack --ctstate
//! DNAT -j ACCEPT`, a pseudo-state for that status bit: iptables-extensions(8)) lets all three
//! through. Each rule's conditions are evaluated to yes, no or maybe (an address, a port, a
//! mark: anything this module does not model is maybe); a maybe in front of a verdict
//! follows both ways, and a chain's verdict is certain only when every way agrees. Only a
//! certain drop is reported: a static reading of a complex rule set can be wrong, and the run
//! time evidence (stuck entries, `stuck.rs`) covers what it cannot tell.
//!
//! Two inputs: `nft list table FAMILY NAME` ([`parse_nft`]; native tables, and iptables-nft's
//! as far as nft can print them) and `iptables-save -t filter` ([`parse_iptables_save`]; for
//! iptables-legacy and iptables-nft, whose `-m` matches nft prints only partly).

use std::collections::HashMap;
use std::fmt;

/// A conntrack state as `ct state` and `--ctstate` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    New,
    Established,
    Related,
    Invalid,
    Untracked,
}

impl CtState {
    fn parse(s: &str) -> Option<CtState> {
        Some(match s.to_ascii_lowercase().as_str() {
            "new" => CtState::New,
            "established" => CtState::Established,
            "related" => CtState::Related,
            "invalid" => CtState::Invalid,
            "untracked" => CtState::Untracked,
            _ => return None,
        })
    }
}

/// One packet of an nfvs flow, as the forward hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub what: &'static str,
    pub state: CtState,
    pub reply: bool,
    /// The interfaces it may come in on and go out on; `None`: not known.
    pub iif: Option<Vec<String>>,
    pub oif: Option<Vec<String>>,
}

impl Packet {
    /// The three packets of a flow (see the module's doc), given the interfaces the VIPs are
    /// on and the interfaces the routes to the real servers leave by (empty: not known).
    pub fn flow(vip_ifs: &[String], rip_ifs: &[String]) -> [Packet; 3] {
        let known = |v: &[String]| (!v.is_empty()).then(|| v.to_vec());
        [
            Packet { what: "at their first packet (NEW, DNATed)", state: CtState::New, reply: false, iif: known(vip_ifs), oif: known(rip_ifs) },
            Packet { what: "at the clients' later packets", state: CtState::Established, reply: false, iif: known(vip_ifs), oif: known(rip_ifs) },
            Packet { what: "at the real servers' answers", state: CtState::Established, reply: true, iif: known(rip_ifs), oif: known(vip_ifs) },
        ]
    }
}

/// Where a table lives: it decides the form of the rule to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A native nftables table.
    Nft,
    /// iptables-nft (`iptables` on Debian 11+, RHEL 8+): nft tables, iptables' language.
    IptablesNft,
    /// iptables-legacy: the x_tables of ip_tables.ko, which nft does not see.
    IptablesLegacy,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Nft => "nft",
            Source::IptablesNft => "iptables-nft",
            Source::IptablesLegacy => "iptables-legacy",
        })
    }
}

/// A table of someone else's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub source: Source,
    /// nft's family (`ip`, `inet`, ...); `ip` for iptables.
    pub family: String,
    pub name: String,
    pub chains: Vec<Chain>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// Set for a base chain: its hook and policy.
    pub base: Option<Base>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub hook: String,
    /// `type filter`, `type nat`, ...
    pub kind: String,
    pub policy_drop: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub conds: Vec<Cond>,
    pub action: Action,
}

/// A rule's condition, as far as it matters to nfvs's flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// `ct state`, `-m conntrack --ctstate`, `-m state --state`. `dnat`: iptables' DNAT
    /// pseudo-state is in the list.
    State { states: Vec<CtState>, dnat: bool, negated: bool },
    /// `ct status dnat` (the flag is set, or with `negated` is not).
    StatusDnat { negated: bool },
    /// `ct direction`, `--ctdir`.
    Direction { reply: bool, negated: bool },
    /// `iifname`/`oifname`/`iif`/`oif`, `-i`/`-o`: any of `names` (nft `*`, iptables `+`
    /// wildcards at the end).
    Iface { out: bool, names: Vec<String>, negated: bool },
    /// `meta l4proto`, `ip protocol`, `-p`: whether TCP is among the protocols.
    Tcp { yes: bool },
    /// `meta nfproto`: whether IPv4 is among them.
    Ipv4 { yes: bool },
    /// Anything else (addresses, ports, marks, limits, sets): may or may not match.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No verdict (a counter, a log, a comment): the next rule.
    Next,
    Accept,
    /// `drop` and `reject`.
    Drop,
    Return,
    Jump(String),
    Goto(String),
    /// `ct state vmap { ... }`: the verdict of the packet's state, or the next rule.
    StateMap(Vec<(CtState, Action)>),
    /// `iifname vmap { ... }` / `oifname vmap { ... }`.
    IfaceMap { out: bool, arms: Vec<(String, Action)> },
    /// A verdict this module does not model (`queue`, a named map, an xt target).
    Other(String),
}

/// What a chain does to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accept,
    Drop,
    /// It depends on conditions this module cannot evaluate.
    Unknown,
}

/// A base chain at the forward hook that certainly drops a packet of nfvs's flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub source: Source,
    pub family: String,
    pub table: String,
    pub chain: String,
    pub policy_drop: bool,
    /// Which packet it drops ([`Packet::what`]).
    pub drops: &'static str,
    /// Chains of the table whose names say who made it (DOCKER-USER, ufw-*, FORWARD_direct).
    pub chain_names: Vec<String>,
}

/// The forward base chains of `table` (filter type, a family that carries IPv4) that
/// certainly drop one of `packets`, one [`Blocker`] per chain.
pub fn blockers(table: &Table, packets: &[Packet]) -> Vec<Blocker> {
    if !matches!(table.family.as_str(), "ip" | "inet") {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, chain) in table.chains.iter().enumerate() {
        let Some(base) = &chain.base else { continue };
        if base.hook != "forward" || base.kind != "filter" {
            continue;
        }
        if let Some(p) = packets.iter().find(|p| eval(table, i, p) == Outcome::Drop) {
            out.push(Blocker {
                source: table.source,
                family: table.family.clone(),
                table: table.name.clone(),
                chain: chain.name.clone(),
                policy_drop: base.policy_drop,
                drops: p.what,
                chain_names: table.chains.iter().map(|c| c.name.clone()).collect(),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Evaluation

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

impl Tri {
    fn of(b: bool) -> Tri {
        if b {
            Tri::Yes
        } else {
            Tri::No
        }
    }

    fn not(self, negated: bool) -> Tri {
        match (self, negated) {
            (t, false) | (t @ Tri::Maybe, true) => t,
            (Tri::Yes, true) => Tri::No,
            (Tri::No, true) => Tri::Yes,
        }
    }
}

/// nft's jump depth limit is 16 (net/netfilter/nf_tables_api.c, NFT_JUMP_STACK_SIZE); past
/// that the rule set would not load.
const MAX_DEPTH: usize = 16;
/// Evaluation steps before giving up (each maybe doubles the ways; real rule sets stay far
/// below).
const MAX_STEPS: u32 = 100_000;

/// What base chain `chain` of `table` does to `p`.
pub fn eval(table: &Table, chain: usize, p: &Packet) -> Outcome {
    let index: HashMap<&str, usize> = table.chains.iter().enumerate().map(|(i, c)| (c.name.as_str(), i)).collect();
    let policy = if table.chains[chain].base.as_ref().is_some_and(|b| b.policy_drop) { Outcome::Drop } else { Outcome::Accept };
    let mut ev = Eval { table, index, p, policy, steps: 0 };
    ev.run(chain, 0, &mut Vec::new())
}

struct Eval<'a> {
    table: &'a Table,
    index: HashMap<&'a str, usize>,
    p: &'a Packet,
    policy: Outcome,
    steps: u32,
}

impl Eval<'_> {
    /// The outcome from rule `rule` of chain `chain` on, with `stack` the places to return to.
    fn run(&mut self, mut chain: usize, mut rule: usize, stack: &mut Vec<(usize, usize)>) -> Outcome {
        loop {
            self.steps += 1;
            if self.steps > MAX_STEPS {
                return Outcome::Unknown;
            }
            let Some(r) = self.table.chains[chain].rules.get(rule) else {
                // Off the end (or `return`): back to the caller, or the base chain's policy.
                match stack.pop() {
                    Some((c, i)) => {
                        (chain, rule) = (c, i);
                        continue;
                    }
                    None => return self.policy,
                }
            };
            let matched = r.conds.iter().map(|c| self.cond(c)).fold(Tri::Yes, |acc, t| match (acc, t) {
                (Tri::No, _) | (_, Tri::No) => Tri::No,
                (Tri::Maybe, _) | (_, Tri::Maybe) => Tri::Maybe,
                _ => Tri::Yes,
            });
            match matched {
                Tri::No => rule += 1,
                Tri::Yes => return self.act(&r.action, chain, rule, stack),
                Tri::Maybe => {
                    if r.action == Action::Next {
                        rule += 1;
                        continue;
                    }
                    let taken = self.act(&r.action, chain, rule, &mut stack.clone());
                    let skipped = self.run(chain, rule + 1, &mut stack.clone());
                    return if taken == skipped { taken } else { Outcome::Unknown };
                }
            }
        }
    }

    /// The outcome of taking `action` at rule `rule` of `chain`.
    fn act(&mut self, action: &Action, chain: usize, rule: usize, stack: &mut Vec<(usize, usize)>) -> Outcome {
        match action {
            Action::Next => self.run(chain, rule + 1, stack),
            Action::Accept => Outcome::Accept,
            Action::Drop => Outcome::Drop,
            Action::Return => match stack.pop() {
                Some((c, i)) => self.run(c, i, stack),
                None => self.policy,
            },
            Action::Jump(to) | Action::Goto(to) => {
                let Some(&target) = self.index.get(to.as_str()) else { return Outcome::Unknown };
                if matches!(action, Action::Jump(_)) {
                    if stack.len() >= MAX_DEPTH {
                        return Outcome::Unknown;
                    }
                    stack.push((chain, rule + 1));
                }
                self.run(target, 0, stack)
            }
            Action::StateMap(arms) => {
                match arms.iter().find(|(s, _)| *s == self.p.state) {
                    Some((_, a)) => self.act(a, chain, rule, stack),
                    None => self.run(chain, rule + 1, stack),
                }
            }
            Action::IfaceMap { out, arms } => {
                let names = if *out { &self.p.oif } else { &self.p.iif };
                let Some(names) = names else { return Outcome::Unknown };
                // Every interface the packet may use: the arm it selects (or none).
                let mut ways = Vec::new();
                for n in names {
                    let arm = arms.iter().find(|(pat, _)| iface_matches(pat, n)).map(|(_, a)| a.clone());
                    if !ways.contains(&arm) {
                        ways.push(arm);
                    }
                }
                let mut outcome = None;
                for arm in ways {
                    let o = match arm {
                        Some(a) => self.act(&a, chain, rule, &mut stack.clone()),
                        None => self.run(chain, rule + 1, &mut stack.clone()),
                    };
                    if outcome.is_some_and(|p| p != o) {
                        return Outcome::Unknown;
                    }
                    outcome = Some(o);
                }
                outcome.unwrap_or(Outcome::Unknown)
            }
            Action::Other(_) => Outcome::Unknown,
        }
    }

    fn cond(&self, c: &Cond) -> Tri {
        let p = self.p;
        match c {
            Cond::State { states, dnat, negated } => Tri::of(*dnat || states.contains(&p.state)).not(*negated),
            Cond::StatusDnat { negated } => Tri::of(true).not(*negated),
            Cond::Direction { reply, negated } => Tri::of(*reply == p.reply).not(*negated),
            Cond::Iface { out, names, negated } => {
                let Some(have) = (if *out { &p.oif } else { &p.iif }) else { return Tri::Maybe };
                let hits = have.iter().filter(|h| names.iter().any(|n| iface_matches(n, h))).count();
                let t = if hits == have.len() {
                    Tri::Yes
                } else if hits == 0 {
                    Tri::No
                } else {
                    Tri::Maybe
                };
                t.not(*negated)
            }
            Cond::Tcp { yes } | Cond::Ipv4 { yes } => Tri::of(*yes),
            Cond::Other(_) => Tri::Maybe,
        }
    }
}

/// An interface name pattern (`eth*` in nft, `eth+` in iptables: a prefix) against a name.
fn iface_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*').or_else(|| pattern.strip_suffix('+')) {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

// ---------------------------------------------------------------------------------------
// `nft list table` text

/// Splits nft's output into tokens: words, quoted strings (without their quotes), and the
/// punctuation `{ } , : ;` as tokens of their own.
fn nft_tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let flush = |cur: &mut String, out: &mut Vec<String>| {
        if !cur.is_empty() {
            out.push(std::mem::take(cur));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                flush(&mut cur, &mut out);
                let mut s = String::new();
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    s.push(c);
                }
                out.push(s);
            }
            '{' | '}' | ',' | ';' => {
                flush(&mut cur, &mut out);
                out.push(c.to_string());
            }
            // A colon separates a map's key from its verdict (`established : accept`); inside
            // a word (an IPv6 address, `ip6:...`) it stays.
            ':' if cur.is_empty() => out.push(":".into()),
            c if c.is_whitespace() => flush(&mut cur, &mut out),
            c => cur.push(c),
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// Parses the output of `nft list table FAMILY NAME` (or of `nft list ruleset`: every table
/// in it), as native tables ([`Source::Nft`]).
pub fn parse_nft(text: &str) -> Vec<Table> {
    let mut tables = Vec::new();
    let mut table: Option<Table> = None;
    let mut chain: Option<Chain> = None;
    // Depth of a block we skip (a set, a map, a flowtable, an object) and of a rule spanning
    // lines.
    let mut skip_depth = 0i32;
    let mut pending: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let toks = nft_tokens(line);
        let depth = toks.iter().map(|t| match t.as_str() {
            "{" => 1,
            "}" => -1,
            _ => 0,
        });
        let delta: i32 = depth.sum();
        if skip_depth > 0 {
            skip_depth += delta;
            continue;
        }
        if !pending.is_empty() {
            pending.extend(toks);
            if balance(&pending) == 0 {
                if let Some(c) = chain.as_mut() {
                    c.rules.push(parse_nft_rule(&pending));
                }
                pending.clear();
            }
            continue;
        }
        let first = toks.first().map(String::as_str).unwrap_or("");
        match (first, table.is_some(), chain.as_mut()) {
            ("table", false, _) if toks.len() >= 3 => {
                table = Some(Table { source: Source::Nft, family: toks[1].clone(), name: toks[2].clone(), chains: Vec::new() });
            }
            ("chain", true, None) if toks.len() >= 2 => {
                chain = Some(Chain { name: toks[1].clone(), base: None, rules: Vec::new() });
            }
            ("}", true, Some(_)) => {
                if let (Some(t), Some(c)) = (table.as_mut(), chain.take()) {
                    t.chains.push(c);
                }
            }
            ("}", true, None) => tables.extend(table.take()),
            ("type", true, Some(c)) => c.base = Some(parse_base(&toks)),
            // `policy drop;` on a line of its own (nft -f input style).
            ("policy", true, Some(Chain { base: Some(b), .. })) => b.policy_drop = toks.get(1).is_some_and(|p| p == "drop"),
            (_, true, Some(c)) => {
                if balance(&toks) > 0 {
                    pending = toks;
                } else {
                    c.rules.push(parse_nft_rule(&toks));
                }
            }
            // A set, map, flowtable or stateful object inside the table: skipped whole.
            (_, true, None) => skip_depth = delta,
            _ => {}
        }
    }
    tables
}

fn balance(toks: &[String]) -> i32 {
    toks.iter()
        .map(|t| match t.as_str() {
            "{" => 1,
            "}" => -1,
            _ => 0,
        })
        .sum()
}

/// `type filter hook forward priority filter; policy drop;`
fn parse_base(toks: &[String]) -> Base {
    let after = |key: &str| toks.iter().position(|t| t == key).and_then(|i| toks.get(i + 1)).cloned().unwrap_or_default();
    Base { kind: after("type"), hook: after("hook"), policy_drop: after("policy") == "drop" }
}

/// Words that start a new expression or statement in nft's rule syntax, where skipping an
/// expression this module does not model stops.
const NFT_STARTS: &[&str] = &[
    "accept", "drop", "reject", "return", "jump", "goto", "continue", "queue", "counter", "log", "comment", "ct", "meta",
    "iifname", "oifname", "iif", "oif", "ip", "ip6", "tcp", "udp", "th", "icmp", "icmpv6", "limit", "quota", "mark",
    "fib", "socket", "flow", "notrack", "dnat", "snat", "masquerade", "redirect", "tproxy", "numgen", "jhash", "rt",
    "ether", "vlan", "sctp", "dccp", "udplite", "ah", "esp", "comp", "exthdr", "ipsec", "osf", "synproxy", "xt", "@nh",
    "@th", "@ll",
];

/// One rule of `nft list` output.
// Long (about 100 lines): one token loop with an arm per statement form nft prints; the arms
// share the loop's cursor and the conditions gathered so far.
fn parse_nft_rule(toks: &[String]) -> Rule {
    let mut conds = Vec::new();
    let mut action = Action::Next;
    let mut i = 0;
    let word = |i: usize| toks.get(i).map(String::as_str).unwrap_or("");
    while i < toks.len() {
        match word(i) {
            "accept" => (action, i) = (Action::Accept, i + 1),
            "drop" => (action, i) = (Action::Drop, i + 1),
            "reject" => (action, i) = (Action::Drop, toks.len()),
            "return" => (action, i) = (Action::Return, i + 1),
            "continue" => i += 1,
            "jump" => (action, i) = (Action::Jump(word(i + 1).to_owned()), i + 2),
            "goto" => (action, i) = (Action::Goto(word(i + 1).to_owned()), i + 2),
            "queue" => (action, i) = (Action::Other(toks[i..].join(" ")), toks.len()),
            "counter" => {
                i += 1;
                while matches!(word(i), "packets" | "bytes") {
                    i += 2;
                }
            }
            "comment" => i += 2,
            "log" => {
                i += 1;
                while matches!(word(i), "prefix" | "level" | "group" | "snaplen" | "queue-threshold" | "flags") {
                    i += 2;
                    // `flags tcp sequence,options`: a list after a keyword.
                    while word(i) == "," {
                        i += 2;
                    }
                }
            }
            // `ct status & dnat == dnat`, `ct status & dnat != 0` (and their negations).
            "ct" if word(i + 1) == "status" && word(i + 2) == "&" => {
                let (mask, op, value) = (word(i + 3), word(i + 4), word(i + 5));
                conds.push(match (mask, op, value) {
                    ("dnat", "==", "dnat") | ("dnat", "!=", "0") => Cond::StatusDnat { negated: false },
                    ("dnat", "==", "0") | ("dnat", "!=", "dnat") => Cond::StatusDnat { negated: true },
                    _ => Cond::Other(toks[i..(i + 6).min(toks.len())].join(" ")),
                });
                i += 6;
            }
            "ct" if matches!(word(i + 1), "state" | "status" | "direction") => {
                let key = word(i + 1).to_owned();
                let (negated, values, map, next) = nft_values(toks, i + 2);
                i = next;
                if let Some(map) = map {
                    action = match key.as_str() {
                        "state" => match map.iter().map(|(k, a)| CtState::parse(k).map(|s| (s, a.clone()))).collect() {
                            Some(arms) => Action::StateMap(arms),
                            None => Action::Other("ct state vmap".into()),
                        },
                        _ => Action::Other(format!("ct {key} vmap")),
                    };
                    continue;
                }
                conds.push(match key.as_str() {
                    "state" => match values.iter().map(|v| CtState::parse(v)).collect::<Option<Vec<_>>>() {
                        Some(states) => Cond::State { states, dnat: false, negated },
                        None => Cond::Other(format!("ct state {}", values.join(","))),
                    },
                    "status" => ct_status(&values, negated),
                    _ => match values.as_slice() {
                        [d] if d == "original" || d == "reply" => Cond::Direction { reply: d == "reply", negated },
                        _ => Cond::Other(format!("ct direction {}", values.join(","))),
                    },
                });
            }
            w @ ("iifname" | "oifname" | "iif" | "oif") => {
                let out = w.starts_with('o');
                let (negated, names, map, next) = nft_values(toks, i + 1);
                i = next;
                match map {
                    Some(arms) => action = Action::IfaceMap { out, arms },
                    None => conds.push(Cond::Iface { out, names, negated }),
                }
            }
            "meta" if matches!(word(i + 1), "iifname" | "oifname" | "iif" | "oif") => i += 1,
            w @ ("meta" | "ip") if matches!((w, word(i + 1)), ("meta", "l4proto") | ("ip", "protocol") | ("meta", "nfproto")) => {
                let ipv4 = word(i + 1) == "nfproto";
                let (negated, values, _, next) = nft_values(toks, i + 2);
                i = next;
                let has = values.iter().any(|v| if ipv4 { v == "ipv4" } else { v == "tcp" || v == "6" });
                conds.push(if ipv4 { Cond::Ipv4 { yes: has != negated } } else { Cond::Tcp { yes: has != negated } });
            }
            _ => {
                // An expression or statement this module does not model: up to the next one.
                let start = i;
                i += 1;
                while i < toks.len() && !NFT_STARTS.contains(&word(i)) {
                    i += 1;
                }
                let text = toks[start..i].join(" ");
                if toks[start..i].iter().any(|t| t == "vmap") {
                    action = Action::Other(text);
                } else if !toks[start..i].iter().any(|t| t == "set") && !matches!(toks[start].as_str(), "notrack" | "flow") {
                    // `meta mark set 1`, `ct mark set ...`, `flow add @ft`: statements, no condition.
                    conds.push(Cond::Other(text));
                }
            }
        }
    }
    Rule { conds, action }
}

/// The operand after a selector: an optional `!=`/`==`, then one value, a list `a,b`, an
/// anonymous set `{ a, b }`, or a verdict map `vmap { k : verdict, ... }`. Returns (negated,
/// values, map arms, index after it).
#[allow(clippy::type_complexity)]
fn nft_values(toks: &[String], mut i: usize) -> (bool, Vec<String>, Option<Vec<(String, Action)>>, usize) {
    let word = |i: usize| toks.get(i).map(String::as_str).unwrap_or("");
    let mut negated = false;
    match word(i) {
        "!=" | "ne" => (negated, i) = (true, i + 1),
        "==" | "eq" => i += 1,
        _ => {}
    }
    if word(i) == "vmap" {
        i += 1;
        let mut arms = Vec::new();
        if word(i) != "{" {
            // A named map (`@name`): its elements are not read here. An arm that matches every
            // interface with an unknown verdict makes the evaluation answer Unknown.
            return (negated, Vec::new(), Some(vec![("*".to_owned(), Action::Other(format!("vmap {}", word(i))))]), i + 1);
        }
        i += 1;
        while i < toks.len() && word(i) != "}" {
            let key = word(i).to_owned();
            // key : verdict [target]
            let (verdict, next) = match word(i + 2) {
                "jump" | "goto" => {
                    let t = word(i + 3).to_owned();
                    (if word(i + 2) == "jump" { Action::Jump(t) } else { Action::Goto(t) }, i + 4)
                }
                "accept" => (Action::Accept, i + 3),
                "drop" => (Action::Drop, i + 3),
                "return" => (Action::Return, i + 3),
                "continue" => (Action::Next, i + 3),
                v => (Action::Other(v.to_owned()), i + 3),
            };
            arms.push((key, verdict));
            i = next;
            if word(i) == "," {
                i += 1;
            }
        }
        return (negated, Vec::new(), Some(arms), i + 1);
    }
    let mut values = Vec::new();
    if word(i) == "{" {
        i += 1;
        while i < toks.len() && word(i) != "}" {
            if word(i) != "," {
                values.push(word(i).to_owned());
            }
            i += 1;
        }
        return (negated, values, None, i + 1);
    }
    values.push(word(i).to_owned());
    i += 1;
    while word(i) == "," {
        values.push(word(i + 1).to_owned());
        i += 2;
    }
    (negated, values, None, i)
}

/// `ct status dnat`, `ct status & dnat == dnat`, `ct status & dnat != 0`: is the dnat flag
/// required set (or, negated, clear)?
fn ct_status(values: &[String], negated: bool) -> Cond {
    let flags_only = values.iter().all(|f| f == "dnat" || f == "snat");
    if flags_only && values.iter().any(|f| f == "dnat") {
        Cond::StatusDnat { negated }
    } else {
        Cond::Other(format!("ct status {}", values.join(" ")))
    }
}

// ---------------------------------------------------------------------------------------
// `iptables-save -t filter` text

/// Targets that do not end the packet's walk through the chain (iptables-extensions(8),
/// "TARGET EXTENSIONS": they change, mark or log the packet and continue).
const NON_TERMINATING: &[&str] = &[
    "LOG", "NFLOG", "ULOG", "MARK", "CONNMARK", "TRACE", "CT", "TCPMSS", "CLASSIFY", "DSCP", "TOS", "TTL", "HL",
    "AUDIT", "SET", "CONNSECMARK", "SECMARK", "IDLETIMER", "LED", "NETMAP", "CHECKSUM", "TEE", "HMARK", "RATEEST",
];

/// Splits an iptables-save line into words, a double-quoted string being one word.
fn ipt_tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => cur.extend(chars.next()),
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Parses `iptables-save` output: every table in it (`*filter` ... `COMMIT`), as from
/// `source`.
pub fn parse_iptables_save(text: &str, source: Source) -> Vec<Table> {
    let mut tables: Vec<Table> = Vec::new();
    let mut rules: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('*') {
            tables.push(Table { source, family: "ip".into(), name: name.into(), chains: Vec::new() });
            rules.clear();
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut w = decl.split_whitespace();
            let (Some(name), Some(policy), Some(t)) = (w.next(), w.next(), tables.last_mut()) else { continue };
            let base = (policy != "-").then(|| Base {
                hook: builtin_hook(name).to_owned(),
                kind: if t.name == "nat" { "nat".into() } else { "filter".into() },
                policy_drop: policy == "DROP",
            });
            t.chains.push(Chain { name: name.into(), base, rules: Vec::new() });
        } else if line.starts_with("-A ") {
            let toks = ipt_tokens(line);
            if toks.len() >= 2 {
                rules.push((toks[1].clone(), toks[2..].to_vec()));
            }
        } else if line == "COMMIT" {
            // Rules are parsed once every chain is declared: a -j target is a chain or not.
            if let Some(t) = tables.last_mut() {
                for (chain, toks) in rules.drain(..) {
                    let rule = parse_ipt_rule(&toks, t);
                    if let Some(c) = t.chains.iter_mut().find(|c| c.name == chain) {
                        c.rules.push(rule);
                    }
                }
            }
        }
    }
    tables
}

fn builtin_hook(chain: &str) -> &str {
    match chain {
        "FORWARD" => "forward",
        "INPUT" => "input",
        "OUTPUT" => "output",
        "PREROUTING" => "prerouting",
        "POSTROUTING" => "postrouting",
        _ => "",
    }
}

/// One `-A CHAIN ...` rule, without `-A CHAIN`.
// Long (about 80 lines) for the same reason as parse_nft_rule: one arm per option.
fn parse_ipt_rule(toks: &[String], table: &Table) -> Rule {
    let mut conds = Vec::new();
    let mut action = Action::Next;
    let mut negated = false;
    let mut i = 0;
    let word = |i: usize| toks.get(i).map(String::as_str).unwrap_or("");
    let list = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
    while i < toks.len() {
        let w = word(i);
        let arg = word(i + 1);
        let mut next = i + 2;
        match w {
            "!" => {
                negated = true;
                i += 1;
                continue;
            }
            "-i" | "--in-interface" | "-o" | "--out-interface" => {
                conds.push(Cond::Iface { out: w.contains('o'), names: vec![arg.to_owned()], negated });
            }
            "-p" | "--protocol" => {
                if arg != "all" && arg != "0" {
                    conds.push(Cond::Tcp { yes: (arg == "tcp" || arg == "6") != negated });
                }
            }
            "-s" | "--source" | "-d" | "--destination" if arg == "0.0.0.0/0" => {}
            "-m" | "--match" => {}
            "--comment" => {}
            "-c" => next = i + 3,
            "--ctstate" | "--state" => {
                let mut states = Vec::new();
                let mut dnat = false;
                let mut other = false;
                for s in list(arg) {
                    match s.as_str() {
                        "DNAT" => dnat = true,
                        "SNAT" => {}
                        s => match CtState::parse(s) {
                            Some(st) => states.push(st),
                            None => other = true,
                        },
                    }
                }
                conds.push(if other { Cond::Other(format!("{w} {arg}")) } else { Cond::State { states, dnat, negated } });
            }
            "--ctdir" => conds.push(Cond::Direction { reply: arg.eq_ignore_ascii_case("reply"), negated }),
            "-j" | "--jump" | "-g" | "--goto" => {
                let goto = w == "-g" || w == "--goto";
                action = match arg {
                    "ACCEPT" => Action::Accept,
                    "DROP" | "REJECT" => Action::Drop,
                    "RETURN" => Action::Return,
                    t if table.chains.iter().any(|c| c.name == t) => {
                        if goto {
                            Action::Goto(t.to_owned())
                        } else {
                            Action::Jump(t.to_owned())
                        }
                    }
                    t if NON_TERMINATING.contains(&t) => Action::Next,
                    t => Action::Other(t.to_owned()),
                };
                // The target's own options (`--reject-with ...`, `--log-prefix ...`).
                while next < toks.len() && !matches!(word(next), "-j" | "-g") {
                    next += 1;
                }
            }
            _ => {
                // A match option this module does not model (`-s 10.0.0.0/8`, `--dport 80`,
                // `--tcp-flags SYN,RST SYN`): its values run to the next option.
                next = i + 1;
                while next < toks.len() && !word(next).starts_with('-') && word(next) != "!" {
                    next += 1;
                }
                conds.push(Cond::Other(toks[i..next].join(" ")));
            }
        }
        negated = false;
        i = next;
    }
    Rule { conds, action }
}

#[cfg(test)]
mod tests;
