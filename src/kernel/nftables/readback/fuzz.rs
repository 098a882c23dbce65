//! Fuzzing the read-back of our table (issue 11, "Also"): the chain and rule dump messages,
//! parsed by libnftnl ([`parse_chain`], [`parse_rule`], `read_expr`) and compared with what
//! was installed ([`compare`]). Private to this module, so fuzzed here rather than in
//! `tests/fuzz/`, with the same runner (`tests/fuzz/harness.rs`: its doc says how `cargo test`
//! and `scripts/fuzz.sh` size the run).
//!
//! The inputs are whole dumps, well framed, with arbitrary content: the tables nfvs installs
//! with chains and rules dropped, added, changed and reordered, expressions replaced by
//! others of any kind with any values, chains of other tables and families, base-chain
//! fields missing. They are not damaged byte by byte: libnftnl ends the process (`exit(1)`,
//! "nf_tables kernel ABI is broken") on an attribute whose length it does not expect, by
//! design, before nfvs sees anything (src/utils.c `__abi_breakage`). The kernel is the only
//! writer of these messages; its netlink framing is fuzzed in `tests/fuzz/`.

use std::ffi::{c_void, CString};

use nftnl::{Chain, ChainType, Hook, MsgType, NlMsg, Policy, ProtoFamily, Rule, Table};
use proptest::prelude::*;
use proptest::sample::{select, Index};

use super::super::spec::{compare, table_spec, ChainKind, ChainSpec, Expr, SeenChain, TABLE};
use super::super::{NftError, Op, QueueImpl};
use super::{parse_chain, parse_rule};
use crate::adm::rules::parse_rules;
use crate::kernel::socket::RecvBuf;
use crate::ruleset::{self, Cidr, Overload};
use crate::wire::netlink::Messages;

#[path = "../../../../tests/fuzz/harness.rs"]
mod harness;

/// Two services, one with two servers and one without (a fallback rule needs servers).
const RULES: &str = "-A -t 192.168.199.200:80 -s wrr\n\
                     -a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1\n\
                     -a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 3\n\
                     -A -t 192.168.199.201:443 -s rr\n";

/// What nfvs installs for [`RULES`]: with and without the fallback rules and a queue range,
/// with the native queue expression and with the xt target.
fn specs() -> Vec<Vec<ChainSpec>> {
    let table = parse_rules(RULES, "fuzz.rules").expect("the seed rules");
    let masquerade = [Cidr::new([192, 168, 226, 0].into(), 24).expect("a CIDR")];
    let mut specs = Vec::new();
    for (queues, overload) in [(1, Overload::Drop), (2, Overload::Fallback)] {
        let rs = ruleset::for_table(&table, &masquerade, 0, queues, overload, 0x6e66_7673);
        for q in [QueueImpl::Native, QueueImpl::Compat] {
            specs.push(table_spec(&rs, q));
        }
    }
    specs
}

// ---------------------------------------------------------------------------------------------
// A dump as data.
// ---------------------------------------------------------------------------------------------

const HOOKS: [Hook; 5] = [Hook::PreRouting, Hook::In, Hook::Forward, Hook::Out, Hook::PostRouting];
const FAMILIES: [ProtoFamily; 3] = [ProtoFamily::Ipv4, ProtoFamily::Inet, ProtoFamily::Ipv6];

/// A chain as the kernel reports one. Indexes are into [`HOOKS`] and [`FAMILIES`].
#[derive(Debug, Clone)]
struct DumpedChain {
    ours: bool,
    family: usize,
    name: CString,
    /// `Some(false)` filter, `Some(true)` nat.
    nat: Option<bool>,
    hook: Option<(usize, i32)>,
    accept: Option<bool>,
}

/// A rule of our table: the chain it names, its expressions.
#[derive(Debug, Clone)]
struct DumpedRule {
    chain: CString,
    exprs: Vec<Expr>,
}

#[derive(Debug, Clone)]
struct Dump {
    chains: Vec<DumpedChain>,
    rules: Vec<DumpedRule>,
}

/// Exactly what the kernel holds after installing `spec`.
fn dump_of(spec: &[ChainSpec]) -> Dump {
    let chains = spec
        .iter()
        .map(|c| DumpedChain {
            ours: true,
            family: 0,
            name: c.name.into(),
            nat: Some(c.kind == ChainKind::Nat),
            hook: Some((HOOKS.iter().position(|h| *h as u32 == c.hook as u32).expect("a known hook"), c.priority)),
            accept: Some(true),
        })
        .collect();
    let rules = spec
        .iter()
        .flat_map(|c| c.rules.iter().map(|r| DumpedRule { chain: c.name.into(), exprs: r.clone() }))
        .collect();
    Dump { chains, rules }
}

/// One message as nftnl writes it (the layout of the kernel's dump answers).
fn written(msg: &impl NlMsg) -> Vec<u8> {
    let mut buf = RecvBuf::new(nftnl::nft_nlmsg_maxsize() as usize);
    // SAFETY: the buffer is aligned and as large as any nftnl message.
    unsafe { msg.write(buf.as_mut_ptr().cast::<c_void>(), 1, MsgType::Add) };
    let len = u32::from_ne_bytes(buf.bytes()[..4].try_into().expect("4 bytes")) as usize;
    buf.bytes()[..len].to_vec()
}

/// The two datagrams of a read-back: the chain dump and the rule dump.
fn datagrams(d: &Dump) -> [RecvBuf; 2] {
    let ours = || Table::new(TABLE, ProtoFamily::Ipv4);
    let mut chains = Vec::new();
    for c in &d.chains {
        let table = if c.ours && c.family == 0 { ours() } else { Table::new(c"filter", FAMILIES[c.family]) };
        let mut chain = Chain::new(&c.name, &table);
        if let Some(nat) = c.nat {
            chain.set_type(if nat { ChainType::Nat } else { ChainType::Filter });
        }
        if let Some((hook, priority)) = c.hook {
            chain.set_hook(HOOKS[hook], priority);
        }
        if let Some(accept) = c.accept {
            chain.set_policy(if accept { Policy::Accept } else { Policy::Drop });
        }
        chains.extend(written(&chain));
    }
    let mut rules = Vec::new();
    let table = ours();
    for r in &d.rules {
        let chain = Chain::new(&r.chain, &table);
        let mut rule = Rule::new(&chain);
        r.exprs.iter().for_each(|e| rule.add_expr(e));
        rules.extend(written(&rule));
    }
    [received(&chains), received(&rules)]
}

/// Bytes where the socket puts them: at the start of an aligned receive buffer, larger than
/// what was received.
fn received(datagram: &[u8]) -> RecvBuf {
    let mut buf = RecvBuf::new(datagram.len() + 64);
    buf.bytes_mut()[..datagram.len()].copy_from_slice(datagram);
    buf
}

/// The chains a read-back assembles from the two dumps, as `read_table` does (a message
/// libnftnl cannot parse, such as a verdict it does not know, fails the read-back).
fn read_back(d: &Dump) -> Result<Vec<SeenChain>, NftError> {
    let op = Op::ReadBack;
    let [chain_dump, rule_dump] = datagrams(d);
    let mut chains: Vec<SeenChain> = Vec::new();
    for m in Messages::new(chain_dump.bytes()).map_while(Result::ok) {
        chains.extend(parse_chain(op, m.raw)?);
    }
    for m in Messages::new(rule_dump.bytes()).map_while(Result::ok) {
        if let Some((name, exprs)) = parse_rule(op, m.raw)? {
            if let Some(c) = chains.iter_mut().find(|c| c.name == name) {
                c.rules.push(exprs);
            }
        }
    }
    Ok(chains)
}

// ---------------------------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------------------------

/// An expression of any kind nfvs knows, with any values (byte strings up to the 16 bytes a
/// register holds; a target's name up to XT_EXTENSION_MAXNAMELEN).
fn expr() -> impl Strategy<Value = Expr> {
    let data = || proptest::collection::vec(any::<u8>(), 0..=16);
    prop_oneof![
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(base, offset, len)| Expr::Payload { base, offset, len }),
        any::<u32>().prop_map(|key| Expr::Meta { key }),
        any::<u32>().prop_map(|key| Expr::Ct { key }),
        (data(), data()).prop_map(|(mask, xor)| Expr::Bitwise { mask, xor }),
        (any::<u32>(), data()).prop_map(|(op, data)| Expr::Cmp { op, data }),
        Just(Expr::Counter),
        (any::<u16>(), any::<u16>(), any::<u16>()).prop_map(|(num, total, flags)| Expr::Queue { num, total, flags }),
        ("[A-Za-z0-9_]{0,28}", any::<u32>(), proptest::collection::vec(any::<u8>(), 0..=32))
            .prop_map(|(name, rev, info)| Expr::Target { name, rev, info }),
        Just(Expr::Masq),
        any::<u32>().prop_map(|modulus| Expr::Numgen { modulus }),
        (0u32..=4, data()).prop_map(|(dreg, data)| Expr::Immediate { dreg, data }),
        any::<u32>().prop_map(|key| Expr::CtSet { key }),
        any::<u32>().prop_map(|code| Expr::Verdict { code }),
        any::<u32>().prop_map(|flags| Expr::DnatTo { flags }),
    ]
}

/// A chain name: one of ours, or another.
fn chain_name() -> impl Strategy<Value = CString> {
    let ours: Vec<&'static str> = vec!["divert", "events", "nat_pre", "nat_post"];
    prop_oneof![3 => select(ours).prop_map(String::from), 1 => "[a-z_]{1,12}"]
        .prop_map(|n| CString::new(n).expect("no NUL"))
}

fn chain() -> impl Strategy<Value = DumpedChain> {
    (
        any::<bool>(),
        0..FAMILIES.len(),
        chain_name(),
        proptest::option::of(any::<bool>()),
        proptest::option::of((0..HOOKS.len(), prop_oneof![select(vec![-300, -150, -100, 100]), any::<i32>()])),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(ours, family, name, nat, hook, accept)| DumpedChain { ours, family, name, nat, hook, accept })
}

fn rule() -> impl Strategy<Value = DumpedRule> {
    (chain_name(), proptest::collection::vec(expr(), 0..12)).prop_map(|(chain, exprs)| DumpedRule { chain, exprs })
}

/// One change to an installed table as the kernel could report it.
#[derive(Debug, Clone)]
enum Change {
    ReplaceExpr(Index, Index, Expr),
    InsertExpr(Index, Index, Expr),
    RemoveExpr(Index, Index),
    RemoveRule(Index),
    AddRule(Index, DumpedRule),
    SwapRules(Index, Index),
    RemoveChain(Index),
    AddChain(Index, DumpedChain),
    ReplaceChain(Index, DumpedChain),
}

fn change() -> impl Strategy<Value = Change> {
    let i = any::<Index>;
    prop_oneof![
        4 => (i(), i(), expr()).prop_map(|(r, e, x)| Change::ReplaceExpr(r, e, x)),
        2 => (i(), i(), expr()).prop_map(|(r, e, x)| Change::InsertExpr(r, e, x)),
        2 => (i(), i()).prop_map(|(r, e)| Change::RemoveExpr(r, e)),
        1 => i().prop_map(Change::RemoveRule),
        1 => (i(), rule()).prop_map(|(at, r)| Change::AddRule(at, r)),
        1 => (i(), i()).prop_map(|(a, b)| Change::SwapRules(a, b)),
        1 => i().prop_map(Change::RemoveChain),
        1 => (i(), chain()).prop_map(|(at, c)| Change::AddChain(at, c)),
        1 => (i(), chain()).prop_map(|(at, c)| Change::ReplaceChain(at, c)),
    ]
}

fn changed(mut d: Dump, changes: &[Change]) -> Dump {
    for c in changes {
        let (nc, nr) = (d.chains.len(), d.rules.len());
        match c {
            Change::ReplaceExpr(r, e, x) if nr > 0 => {
                let exprs = &mut d.rules[r.index(nr)].exprs;
                if !exprs.is_empty() {
                    let at = e.index(exprs.len());
                    exprs[at] = x.clone();
                }
            }
            Change::InsertExpr(r, e, x) if nr > 0 => {
                let exprs = &mut d.rules[r.index(nr)].exprs;
                exprs.insert(e.index(exprs.len() + 1), x.clone());
            }
            Change::RemoveExpr(r, e) if nr > 0 => {
                let exprs = &mut d.rules[r.index(nr)].exprs;
                if !exprs.is_empty() {
                    exprs.remove(e.index(exprs.len()));
                }
            }
            Change::RemoveRule(r) if nr > 0 => drop(d.rules.remove(r.index(nr))),
            Change::AddRule(at, r) => d.rules.insert(at.index(nr + 1), r.clone()),
            Change::SwapRules(a, b) if nr > 0 => d.rules.swap(a.index(nr), b.index(nr)),
            Change::RemoveChain(at) if nc > 0 => drop(d.chains.remove(at.index(nc))),
            Change::AddChain(at, c) => d.chains.insert(at.index(nc + 1), c.clone()),
            Change::ReplaceChain(at, c) if nc > 0 => d.chains[at.index(nc)] = c.clone(),
            _ => {}
        }
    }
    d
}

// ---------------------------------------------------------------------------------------------
// The target.
// ---------------------------------------------------------------------------------------------

/// The table as installed reads back as installed (the comparison is reached, and passes);
/// changed, or made up, it reads back and compares without a panic, and a change of ours
/// that the comparison misses is one that leaves the table as it was.
#[test]
fn nftables_readback() {
    let specs = specs();
    for spec in &specs {
        assert_eq!(compare(spec, &read_back(&dump_of(spec)).expect("our table reads back")), Ok(()));
    }
    let from_specs = (select((0..specs.len()).collect::<Vec<_>>()), harness::few(change));
    let made_up = (proptest::collection::vec(chain(), 0..5), proptest::collection::vec(rule(), 0..8))
        .prop_map(|(chains, rules)| Dump { chains, rules });
    let specs2 = specs.clone();
    let input = prop_oneof![
        3 => from_specs.prop_map(move |(i, changes)| (Some(i), changed(dump_of(&specs2[i]), &changes))),
        1 => made_up.prop_map(|d| (None, d)),
    ];
    harness::fuzz("kernel::nftables::readback", 2_500, input, |(from, dump)| {
        let Ok(seen) = read_back(&dump) else { return };
        for (i, spec) in specs.iter().enumerate() {
            if from == Some(i) && compare(spec, &seen).is_ok() {
                let installed = read_back(&dump_of(spec)).expect("our table reads back");
                assert_eq!(installed, seen, "a change that compare missed");
            }
        }
    });
}
