//! Installs, checks and removes our table (`ip nfvs`) through nf_tables netlink.
//!
//! [`apply`] turns a [`Ruleset`] into one atomic nftnl batch — add table, delete table, add
//! table with its sets, chains, set elements and rules — so a table left from a crash is
//! replaced and nothing else is touched. It checks the acknowledgement of every message by
//! sequence number, then reads the table back and compares it, expression by expression and
//! element by element, with what it sent. Services are elements of a set, so the rules stay
//! the same whatever the number of services.
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
//! with what is read back), `expr` turns expressions into
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
use readback::read_table;
use set::{SetDecl, SetElems};
use spec::{compare, queue_expr, table_spec, ChainSpec, Element, Expr, TableSpec, TABLE};

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
        add_elements(&mut b, MsgType::Add, s.name, &s.elements.iter().collect::<Vec<_>>());
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

/// A chain of our table as libnftnl builds it: a base chain with its hook and policy accept,
/// or a regular chain.
fn chain<'a>(table: &'a Table, c: &ChainSpec) -> Chain<'a> {
    // Chain names are ours: fixed words, or `fallback-ADDRESS-PORT`; no NUL inside.
    let mut chain = Chain::new(&CString::new(c.name.as_str()).unwrap_or_default(), table);
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

fn add_elements(b: &mut LabelledBatch, t: MsgType, set: &str, elements: &[&Element]) {
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

