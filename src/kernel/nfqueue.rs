//! The NFQUEUE socket, through the `nfq` crate.
//!
//! Design.md fact 9: the crate loses packets that arrive while a queue is being configured, so
//! the queue is bound and configured completely here, before the divert rule exists.

use std::io;

pub use nfq::{Message, Verdict};

/// An NFQUEUE failure, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("open NFQUEUE netlink socket: {0}")]
    Open(#[source] io::Error),
    #[error("bind NFQUEUE {queue}: {source} (is another program bound to queue {queue}? choose another with --queue)")]
    Bind { queue: u16, source: io::Error },
    #[error("configure NFQUEUE {queue} ({what}): {source}")]
    Configure { queue: u16, what: &'static str, source: io::Error },
    #[error("receive from NFQUEUE: {0}")]
    Recv(#[source] io::Error),
    #[error("send verdict to NFQUEUE: {0}")]
    Verdict(#[source] io::Error),
}

/// How a queue is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    pub num: u16,
    /// Bytes of each packet copied to us: enough for the IPv4 and TCP headers with options.
    pub copy_range: u16,
    /// Packets the kernel holds for us before it drops (or, fail-open, accepts) new ones.
    pub max_len: u32,
    /// NFQA_CFG_F_FAIL_OPEN: accept (unbalanced) instead of dropping when the queue is full.
    pub fail_open: bool,
}

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        QueueConfig { num: 0, copy_range: 128, max_len: 4096, fail_open: false }
    }
}

/// A bound, configured queue.
pub struct Queue {
    q: nfq::Queue,
    num: u16,
}

impl Queue {
    pub fn open(cfg: &QueueConfig) -> Result<Queue, QueueError> {
        let mut q = nfq::Queue::open().map_err(QueueError::Open)?;
        let num = cfg.num;
        q.bind(num).map_err(|source| QueueError::Bind { queue: num, source })?;
        let conf = |what, r: io::Result<()>| r.map_err(|source| QueueError::Configure { queue: num, what, source });
        conf("copy range", q.set_copy_range(num, cfg.copy_range))?;
        conf("max length", q.set_queue_max_len(num, cfg.max_len))?;
        conf("fail-open", q.set_fail_open(num, cfg.fail_open))?;
        Ok(Queue { q, num })
    }

    pub fn num(&self) -> u16 {
        self.num
    }

    /// Blocks for the next packet.
    pub fn recv(&mut self) -> Result<Message, QueueError> {
        self.q.recv().map_err(QueueError::Recv)
    }

    pub fn verdict(&mut self, mut msg: Message, v: Verdict) -> Result<(), QueueError> {
        msg.set_verdict(v);
        self.q.verdict(msg).map_err(QueueError::Verdict)
    }
}
