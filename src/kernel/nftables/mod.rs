//! Installs, checks and removes our table (`ip nfvs`) through nf_tables netlink.
//!
//! [`apply`] turns a [`Ruleset`] into one atomic nftnl batch — add table, delete table, add
//! table with its sets, chains, set elements and rules — so a table left from a crash is
//! replaced and nothing else is touched. It checks the acknowledgement of every message by
//! sequence number, then reads the table back and compares it, expression by expression and
//! element by element, with what it sent. [`update`] changes an installed table into another
//! with only the difference, when they differ only in which services there are (set
//! elements, fallback chains): one atomic batch again, then a look-up of the elements and a
//! read-back of the chains it changed; the rules stay the same whatever the number of
//! services, so an edit costs about the same with ten services or ten thousand.
//! [`detect_queue_impl`] finds out whether this kernel has the native `queue` expression or
//! only the xt `NFQUEUE` target (design.md fact 3), and [`remove`] deletes the table.
//!
//! Every expression is described as plain data (`Expr`) first. The same type is built into
//! libnftnl objects for the batch and parsed back from the kernel's dump, so "what we sent"
//! and "what the kernel holds" are compared as values. The byte layouts follow what nft 1.0.6
//! itself emits for the same rules (`nft --debug=netlink`), so `nft list` prints our table in
//! its usual form (see [`Ruleset::render`]). Design.md fact 10 explains the byte orders: packet
//! fields are compared as the bytes they are on the wire, kernel values (ct state) in host
//! order.
//!
//! All functions act on the network namespace of the calling thread.
//!
//! The parts: `spec` holds the table as data (pure: expressions, chains, sets, the comparison
//! with what is read back, the difference between two tables), `expr` turns expressions into
//! libnftnl objects and back, `set` does the same for sets and their elements, `batch` sends a
//! batch and checks its acknowledgements, `readback` dumps the table.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use nftnl::{Chain, MsgType, Policy, ProtoFamily, Rule, Table};
use nftnl_sys::libc;

use crate::ruleset::{QueueSpec, Ruleset, RulesetError};
use batch::LabelledBatch;
use readback::{read_elements, read_rules_of, read_sets, read_table};
use set::{SetDecl, SetElems};
use spec::{compare, compare_rules, compare_sets, diff, queue_expr, table_spec, ChainSpec, Diff, Element, Expr, TableSpec, TABLE};

mod batch;
mod expr;
mod readback;
mod set;
mod spec;

/// How the divert rule hands packets to NFQUEUE on this kernel (design.md fact 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueImpl {
    /// The nftables `queue` expression (CONFIG_NFT_QUEUE, net/netfilter/nft_queue.c).
    Native,
    /// The xt `NFQUEUE` target, revision 3, through nft_compat — what iptables-nft emits.
    Compat,
}

impl fmt::Display for QueueImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueImpl::Native => "native nftables queue expression",
            QueueImpl::Compat => "xt NFQUEUE target (nft_compat)",
        })
    }
}

/// The operation that failed; each error names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Install,
    ReadBack,
    Probe,
    Delete,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Install => "install table ip nfvs",
            Op::ReadBack => "read back table ip nfvs",
            Op::Probe => "probe queue support",
            Op::Delete => "delete table ip nfvs",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The kernel answered EPERM and this thread lacks CAP_NET_ADMIN
    /// (net/netfilter/nfnetlink.c `nfnetlink_rcv`).
    #[error("{op}: permission denied: CAP_NET_ADMIN is missing (run nfvs as root)")]
    PermissionDenied { op: Op },
    #[error("{op}: the ruleset is invalid")]
    Invalid {
        op: Op,
        #[source]
        source: RulesetError,
    },
    #[error("{op}: netlink socket")]
    Socket {
        op: Op,
        #[source]
        source: io::Error,
    },
    /// A message of the batch failed; the kernel then rolls the whole batch back.
    #[error("{op}: the kernel refused {what} (nothing was changed)")]
    Rejected {
        op: Op,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{op}: no acknowledgement for {what}")]
    MissingAck { op: Op, what: String },
    #[error("{op}: malformed netlink reply: {detail}")]
    Protocol { op: Op, detail: String },
    /// The table read back is not what was installed.
    #[error("{op}: the table differs from what was installed: {detail}")]
    Mismatch { op: Op, detail: String },
    #[error(
        "{op}: this kernel has neither the nftables `queue` expression ({native}) nor the xt \
         NFQUEUE target through nft_compat ({compat})"
    )]
    QueueUnsupported { op: Op, native: io::Error, compat: io::Error },
}

impl NftError {
    /// The errno the kernel answered, if this error is a refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Rejected { source, .. } => source.raw_os_error(),
            NftError::PermissionDenied { .. } => Some(libc::EPERM),
            _ => None,
        }
    }
}

/// Install `rs` as table `ip nfvs`, replacing any table of that name in one atomic batch, and
/// check that the kernel holds exactly what was sent.
///
/// The queue must already be bound (design.md fact 9). If the read-back differs, the installed
/// table is left in place for inspection and an error is returned; call [`remove`] to undo.
pub fn apply(rs: &Ruleset, q: QueueImpl) -> Result<(), NftError> {
    rs.validate().map_err(|source| NftError::Invalid { op: Op::Install, source })?;
    let spec = table_spec(rs, q);
    let table = Table::new(TABLE, ProtoFamily::Ipv4);
    let mut b = LabelledBatch::new();
    // Adding an existing table without NLM_F_EXCL is a no-op, so the delete that follows
    // always finds one: together they replace a table left from a crash, and only ours
    // (net/netfilter/nf_tables_api.c `nf_tables_newtable`).
    b.add(&table, MsgType::Add, "add table ip nfvs");
    b.add(&table, MsgType::Del, "delete table ip nfvs");
    b.add(&table, MsgType::Add, "add table ip nfvs");
    for (id, s) in (1..).zip(&spec.sets) {
        b.add(&SetDecl::new(s, id), MsgType::Add, format!("add set {}", s.name));
    }
    // Chains before the elements that jump to them, rules after the sets they look up.
    let chains: Vec<(Chain, &ChainSpec)> = spec.chains.iter().map(|c| (chain(&table, c), c)).collect();
    for (chain, c) in &chains {
        b.add(chain, MsgType::Add, format!("add chain {}", c.name));
    }
    for s in &spec.sets {
        add_elements(&mut b, MsgType::Add, s.name, &s.elements);
    }
    for (chain, c) in &chains {
        add_rules(&mut b, chain, c);
    }
    b.send(Op::Install)?;
    log::debug!(
        "installed table ip nfvs ({} chains, {} set elements); reading it back",
        spec.chains.len(),
        spec.sets.iter().map(|s| s.elements.len()).sum::<usize>()
    );
    check_installed(&spec)
}

/// Change table `ip nfvs` from `installed` (what [`apply`] or `update` last installed) into
/// `want`, and check the parts that changed.
///
/// When the two differ only in their services (elements of set `services`, and with
/// `--overload fallback` elements of map `fallback` and the chains they jump to), one atomic
/// batch deletes and adds just those, then each changed element is looked up and the changed
/// chains are read back: its cost grows with the number of services changed, hardly with the
/// number there are (the two rulesets are still compared, in one pass). When
/// anything else differs (queue, masquerade, events, the fallback map appearing or going),
/// this is [`apply`]. If the kernel refuses the change or does not hold what it should
/// afterwards (the table is not what `installed` says: someone changed or deleted it), the
/// whole table is replaced with [`apply`] after all.
pub fn update(installed: &Ruleset, want: &Ruleset, q: QueueImpl) -> Result<(), NftError> {
    want.validate().map_err(|source| NftError::Invalid { op: Op::Install, source })?;
    let Some(d) = diff(installed, want, q) else { return apply(want, q) };
    if d.is_empty() {
        return Ok(());
    }
    match send_diff(&d).and_then(|()| check_diff(want, q, &d)) {
        Ok(()) => Ok(()),
        Err(e @ NftError::PermissionDenied { .. }) => Err(e),
        Err(e) => {
            log::warn!("{e}; replacing the whole table");
            apply(want, q)
        }
    }
}

/// Sends the difference in one batch: new chains and their rules, changed chains' new rules,
/// the deleted elements, the added ones, then the chains no element jumps to any more.
fn send_diff(d: &Diff) -> Result<(), NftError> {
    let table = Table::new(TABLE, ProtoFamily::Ipv4);
    let mut b = LabelledBatch::new();
    let added: Vec<(Chain, &ChainSpec)> = d.add_chains.iter().map(|c| (chain(&table, c), c)).collect();
    for (chain, c) in &added {
        b.add(chain, MsgType::Add, format!("add chain {}", c.name));
        add_rules(&mut b, chain, c);
    }
    let replaced: Vec<(Chain, &ChainSpec)> = d.replace_chains.iter().map(|c| (chain(&table, c), c)).collect();
    for (chain, c) in &replaced {
        // A rule delete without a handle deletes every rule of the chain
        // (nf_tables_delrule, `nft_delrule_by_chain`).
        b.add(&Rule::new(chain), MsgType::Del, format!("flush chain {}", c.name));
        add_rules(&mut b, chain, c);
    }
    for (name, del, _) in &d.sets {
        add_elements(&mut b, MsgType::Del, name, del);
    }
    for (name, _, add) in &d.sets {
        add_elements(&mut b, MsgType::Add, name, add);
    }
    let deleted: Vec<(Chain, &str)> = d
        .del_chains
        .iter()
        .map(|name| (Chain::new(CString::new(name.as_str()).unwrap_or_default(), &table), name.as_str()))
        .collect();
    for (chain, name) in &deleted {
        // Its rules go with it (nf_tables_delchain, without NLM_F_NONREC); the map elements
        // that jumped to it were deleted above, in this same transaction.
        b.add(chain, MsgType::Del, format!("delete chain {name}"));
    }
    b.send(Op::Install)
}

/// Set elements that [`check_diff`] looks up one by one at most; a larger change reads the
/// sets back whole (a dump of ten thousand elements costs ten milliseconds or so).
const LOOKUPS_MAX: usize = 256;

/// Reads back what [`send_diff`] changed: the elements it deleted must be gone and the ones it
/// added be there with their data (each looked up, or every set dumped when many changed),
/// and each chain it added or replaced must hold its rules.
fn check_diff(want: &Ruleset, q: QueueImpl, d: &Diff) -> Result<(), NftError> {
    let mismatch = |detail| NftError::Mismatch { op: Op::ReadBack, detail };
    if d.elements() > LOOKUPS_MAX {
        compare_sets(&table_spec(want, q).sets, &read_sets()?).map_err(mismatch)?;
    } else {
        for (name, del, add) in &d.sets {
            let looked_up: Vec<&Element> = del.iter().chain(add).collect();
            if looked_up.is_empty() {
                continue;
            }
            let found = read_elements(name, &looked_up)?;
            let want = del.iter().map(|_| None).chain(add.iter().map(Some));
            for ((e, want), got) in looked_up.iter().zip(want).zip(&found) {
                if want != got.as_ref() {
                    return Err(mismatch(format!(
                        "set {name}: element {} is {}, expected {}",
                        spec::show(e),
                        got.as_ref().map_or("absent".into(), |g| format!("there ({})", spec::show(g))),
                        if want.is_some() { "there" } else { "absent" },
                    )));
                }
            }
        }
    }
    for c in d.add_chains.iter().chain(&d.replace_chains) {
        compare_rules(c, &read_rules_of(&c.name)?).map_err(mismatch)?;
    }
    Ok(())
}

/// A chain of our table as libnftnl builds it: a base chain with its hook and policy accept,
/// or a regular chain.
fn chain<'a>(table: &'a Table, c: &ChainSpec) -> Chain<'a> {
    // Chain names are ours: fixed words, or `fallback-ADDRESS-PORT`; no NUL inside.
    let mut chain = Chain::new(CString::new(c.name.as_str()).unwrap_or_default(), table);
    if let Some(base) = c.base {
        chain.set_type(base.kind.into());
        chain.set_hook(base.hook, base.priority);
        chain.set_policy(Policy::Accept);
    }
    chain
}

fn add_rules(b: &mut LabelledBatch, chain: &Chain<'_>, c: &ChainSpec) {
    for (i, exprs) in c.rules.iter().enumerate() {
        let mut rule = Rule::new(chain);
        for e in exprs {
            rule.add_expr(e);
        }
        b.add(&rule, MsgType::Add, format!("rule {} of chain {}", i + 1, c.name));
    }
}

fn add_elements(b: &mut LabelledBatch, t: MsgType, set: &str, elements: &[Element]) {
    let what = match t {
        MsgType::Add => "add",
        MsgType::Del => "delete",
    };
    let mut from = 1;
    for msg in SetElems::messages(set, elements) {
        let to = (from + set::ELEMENTS_PER_MESSAGE - 1).min(elements.len());
        b.add(&msg, t, format!("{what} elements {from}-{to} of {} of set {set}", elements.len()));
        from = to + 1;
    }
}

/// Check that table `ip nfvs` holds exactly what [`apply`] installs for `rs` and `q`: the same
/// chains in the same order, the same rules expression by expression (counter values aside),
/// and the same sets with the same elements. `NftError::Mismatch` says where they differ.
pub fn verify(rs: &Ruleset, q: QueueImpl) -> Result<(), NftError> {
    rs.validate().map_err(|source| NftError::Invalid { op: Op::ReadBack, source })?;
    check_installed(&table_spec(rs, q))
}

fn check_installed(spec: &TableSpec) -> Result<(), NftError> {
    let seen = read_table()?;
    compare(spec, &seen).map_err(|detail| NftError::Mismatch { op: Op::ReadBack, detail })
}

/// Delete table `ip nfvs`. `Ok(false)` if there was none.
pub fn remove() -> Result<bool, NftError> {
    let table = Table::new(TABLE, ProtoFamily::Ipv4);
    let mut b = LabelledBatch::new();
    b.add(&table, MsgType::Del, "delete table ip nfvs");
    match b.send(Op::Delete) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Find out how this kernel can queue packets: try the native `queue` expression, then the
/// xt `NFQUEUE` target, each in a batch that adds a throwaway table, a regular chain and one
/// rule, then deletes the table again. A batch is atomic, so a probe leaves nothing behind
/// whether it succeeds or fails.
pub fn detect_queue_impl() -> Result<QueueImpl, NftError> {
    let q = QueueSpec::single(0);
    let native = match probe(&queue_expr(&q, QueueImpl::Native)) {
        Ok(()) => return Ok(QueueImpl::Native),
        Err(e) => missing_feature(e)?,
    };
    log::debug!("no native nftables queue expression ({native}); trying the xt NFQUEUE target");
    match probe(&queue_expr(&q, QueueImpl::Compat)) {
        Ok(()) => Ok(QueueImpl::Compat),
        Err(e) => Err(NftError::QueueUnsupported { op: Op::Probe, native, compat: missing_feature(e)? }),
    }
}

/// ENOENT (no such expression type or xt target) and EOPNOTSUPP mean "not available"; any
/// other failure is a real error.
fn missing_feature(e: NftError) -> Result<io::Error, NftError> {
    match e {
        NftError::Rejected { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOENT) | Some(libc::EOPNOTSUPP)) =>
        {
            Ok(source)
        }
        other => Err(other),
    }
}

fn probe(expr: &Expr) -> Result<(), NftError> {
    static PROBES: AtomicU32 = AtomicU32::new(0);
    let name = format!("nfvs_probe_{}_{}", std::process::id(), PROBES.fetch_add(1, Ordering::Relaxed));
    let name = CString::new(name).map_err(|e| NftError::Protocol { op: Op::Probe, detail: e.to_string() })?;
    let table = Table::new(&name, ProtoFamily::Ipv4);
    // A regular chain: expression types are looked up when the rule is added, and no hook
    // gets registered.
    let chain = Chain::new(c"probe", &table);
    let mut rule = Rule::new(&chain);
    rule.add_expr(expr);
    let mut b = LabelledBatch::new();
    b.add(&table, MsgType::Add, "add probe table");
    b.add(&chain, MsgType::Add, "add probe chain");
    b.add(&rule, MsgType::Add, format!("probe rule ({})", expr.name().to_string_lossy()));
    b.add(&table, MsgType::Del, "delete probe table");
    b.send(Op::Probe)
}

