//! The part-session seam: the one upload lifecycle every multipart protocol shares, and
//! the driver that runs it.
//!
//! A protocol implements two small traits. [`PartProtocol::open`] creates a session
//! remotely (or resumes a journaled one, reporting the parts it already holds, or finds
//! the file already stored), and says how the file is cut ([`Layout`]). [`PartSession`]
//! sends one part (one attempt; the driver retries), completes, and aborts. In the spirit
//! of object_store's `MultipartUpload`, nothing else is protocol business.
//!
//! [`drive`] does the rest, the same for every protocol:
//! wait for the part's bytes ([`super::wait_ready`], a file still being written) → reserve
//! part memory ([`super::budget`]) → read it → send it with the protocol's parallelism (or
//! strictly in order, one at a time), each part retried on its own → once the writer is
//! done (the [`super::Seal`]), complete with the receipts in part order → abort the session
//! on any failure and as soon as the seal is cancelled. A session that vanished remotely
//! (`ErrorKind::NotFound`) is replaced by a fresh one up to [`PartProtocol::restarts`]
//! times; a session the server could not be reached for is left open for a later resume
//! where the protocol can resume ([`PartProtocol::resumable`]).
//!
//! The size may be unknown until the seal ([`super::Seal::open_ended`]): parts are then
//! cut by the [`PartPlan`] alone (it may grow with the part index, as S3's 10,000-part
//! limit needs) and the data ends where a read comes back short after the writer closed
//! the file; the sealed size must agree.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;

use super::budget::{self, Reservation};
use super::http::{Attempt, RetryPolicy};
use super::source::{self, LocalFailure, PartSource, Sealed};
use super::{ErrorKind, Result, TargetError, UploadRequest};

/// How a session's parts are sized: `first` bytes each, doubling after every `grow_every`
/// parts, never over `max_part`, at most `max_parts` parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    pub first: u64,
    /// Parts per size step (`u64::MAX`: the size never grows).
    pub grow_every: u64,
    pub max_part: u64,
    pub max_parts: Option<u64>,
}

impl PartPlan {
    /// Every part `size` bytes but the last (Box's server-chosen size, Cloudreve's
    /// `chunk_size`, Fluxer's and Dyson's chunks).
    pub const fn fixed(size: u64) -> Self {
        Self {
            first: size,
            grow_every: u64::MAX,
            max_part: size,
            max_parts: None,
        }
    }

    /// Parts that start at `first` bytes and double after every `grow_every` parts, up to
    /// `max_part`, at most `max_parts` of them. S3, for example: 8 MiB doubling every
    /// 1,000 parts up to 5 GiB covers 5 TiB in under 10,000 parts.
    pub const fn growing(first: u64, grow_every: u64, max_part: u64, max_parts: u64) -> Self {
        Self {
            first,
            grow_every,
            max_part,
            max_parts: Some(max_parts),
        }
    }

    /// Size of part `index` (the last part of a file may be shorter).
    pub fn part_size(&self, index: u64) -> u64 {
        let steps = (index / self.grow_every.max(1)).min(63) as u32;
        self.first
            .max(1)
            .saturating_mul(1u64 << steps)
            .min(self.max_part.max(1))
    }

    /// Where the first part of the size step holding part `index` ends, in part indexes.
    fn step_end(&self, index: u64) -> u64 {
        if self.grow_every == u64::MAX || self.part_size(index) >= self.max_part {
            u64::MAX
        } else {
            (index / self.grow_every.max(1) + 1).saturating_mul(self.grow_every.max(1))
        }
    }

    /// Byte offset of part `index`.
    pub fn offset(&self, index: u64) -> u64 {
        let (mut i, mut off) = (0u64, 0u64);
        while i < index {
            let end = self.step_end(i).min(index);
            off = off.saturating_add((end - i).saturating_mul(self.part_size(i)));
            i = end;
        }
        off
    }

    /// How many parts hold `size` bytes (0 for an empty file).
    pub fn count(&self, size: u64) -> u64 {
        let (mut i, mut off) = (0u64, 0u64);
        loop {
            if off >= size {
                return i;
            }
            let step = self.part_size(i);
            let end = self.step_end(i);
            let fits = (end - i).saturating_mul(step);
            if off.saturating_add(fits) >= size {
                return i + (size - off).div_ceil(step);
            }
            off += fits;
            i = end;
        }
    }
}

/// How parts travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Strictly in order, one at a time (Cloudreve: the server appends).
    InOrder,
    /// Up to this many at once, in any order.
    Parallel(usize),
}

/// How a session wants its parts: sizes, flow and what each part carries.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Names the protocol in messages ("box", "fluxer", ...).
    pub label: &'static str,
    pub plan: PartPlan,
    pub flow: Flow,
    /// Each part comes with the SHA-1 of its bytes (Box's `Digest` header).
    pub part_sha1: bool,
    /// Parts are streamed from the source on each attempt instead of held in memory
    /// (needs a known size; no part memory is reserved).
    pub streamed: bool,
    /// Sending the last part makes the file visible (Cloudreve): it waits for the seal.
    pub last_part_completes: bool,
}

/// One part, ready to send.
pub struct Part {
    pub index: u64,
    pub offset: u64,
    pub len: u64,
    /// The last part of the file (false while the size is unknown: the driver learns
    /// where the data ends by reading it).
    pub last: bool,
    /// Lowercase hex SHA-1 of the part, when the layout asks for it.
    pub sha1: Option<String>,
    data: Option<Bytes>,
    source: Arc<dyn PartSource>,
}

impl Part {
    /// The part's bytes as a request body (build one per attempt), and the local read
    /// failure that may cut a streamed one short.
    pub fn body(&self) -> (reqwest::Body, LocalFailure) {
        match &self.data {
            Some(b) => (reqwest::Body::from(b.clone()), LocalFailure::default()),
            None => source::source_body(self.source.clone(), self.offset, self.len),
        }
    }

    /// The part's bytes, when it is held in memory.
    pub fn bytes(&self) -> Option<&Bytes> {
        self.data.as_ref()
    }
}

/// One open remote session: the protocol's steps.
#[async_trait]
pub trait PartSession: Send + Sync {
    /// What the server gives back for a part (an ETag, Box's part record, ...).
    type Receipt: Send + Sync + 'static;
    /// What completing yields (usually the [`super::RemoteFile`]).
    type Output: Send;

    /// One attempt at sending `part` (`attempt` counts from 1); the driver retries.
    async fn put_part(&self, part: &Part, attempt: u32) -> Attempt<Self::Receipt>;

    /// Make the file visible from the receipts of every part, in part order, once the
    /// writer is done (`sealed`: whole-file digests and final size).
    async fn complete(
        &self,
        receipts: Vec<(u64, Self::Receipt)>,
        sealed: &Sealed,
    ) -> Result<Self::Output>;

    /// Give the session up remotely, best effort (protocols without abort do nothing).
    async fn abort(&self) {}
}

/// A session as [`PartProtocol::open`] found or made it.
pub struct Opened<S: PartSession> {
    pub session: S,
    /// The id to journal ([`super::UploadObserver::session_started`]).
    pub id: String,
    pub layout: Layout,
    /// Parts the server already holds (a resumed session): skipped, their receipts used.
    pub done: Vec<(u64, S::Receipt)>,
}

/// What opening gave.
pub enum Open<S: PartSession> {
    Session(Opened<S>),
    /// The file is already stored (Dyson's dedupe): nothing to send.
    Landed(S::Output),
}

/// A protocol's way into a session, for one upload.
#[async_trait]
pub trait PartProtocol: Send + Sync {
    type Session: PartSession;

    /// Create a session for `req` — or, in round 0, resume the journaled one
    /// (`req.resume_session`). Round `n > 0` follows a session that vanished.
    async fn open(&self, req: &UploadRequest, round: u32) -> Result<Open<Self::Session>>;

    /// How many times a session that vanished (`NotFound`) is replaced by a new one.
    fn restarts(&self) -> u32 {
        1
    }

    /// A session left by an unreachable server (`Unavailable`) stays open, for a later
    /// attempt to resume; otherwise every failed session is aborted.
    fn resumable(&self) -> bool {
        false
    }
}

type SessionOutput<P> = <<P as PartProtocol>::Session as PartSession>::Output;

/// Upload `req` through `proto`'s sessions: the whole part lifecycle.
pub async fn drive<P: PartProtocol>(
    policy: RetryPolicy,
    proto: &P,
    req: &UploadRequest,
) -> Result<SessionOutput<P>> {
    let seal = req.source.seal();
    let mut round = 0;
    loop {
        let opened = match proto.open(req, round).await? {
            Open::Landed(out) => return Ok(out),
            Open::Session(o) => o,
        };
        let Opened {
            session,
            id,
            layout,
            done,
        } = opened;
        req.observer.session_started(&id);
        tracing::debug!(session = %id, name = %req.name, protocol = layout.label,
            resumed = done.len(), "upload session");
        let run = run_session(&policy, req, &session, &layout, done);
        let result = match &seal {
            // A given-up file stops its parts at once, whatever they are doing.
            Some(seal) => tokio::select! {
                r = run => r,
                () = seal.cancelled() => Err(source::cancelled()),
            },
            None => run.await,
        };
        let e = match result {
            Ok(out) => return Ok(out),
            // A given-up seal is the cause of whatever failed after it (a stage read).
            Err(_) if seal.as_ref().is_some_and(|s| s.is_cancelled()) => source::cancelled(),
            Err(e) => e,
        };
        match e.kind {
            ErrorKind::NotFound if round < proto.restarts() => {
                tracing::warn!(session = %id, name = %req.name, error = %e,
                    "{}: the upload session vanished; starting again with a new one", layout.label);
                session.abort().await;
                round += 1;
            }
            ErrorKind::Unavailable if proto.resumable() => return Err(e),
            _ => {
                session.abort().await;
                return Err(e);
            }
        }
    }
}

/// Parts, then completion, of one session.
async fn run_session<S: PartSession>(
    policy: &RetryPolicy,
    req: &UploadRequest,
    session: &S,
    layout: &Layout,
    done: Vec<(u64, S::Receipt)>,
) -> Result<S::Output> {
    let skip: HashSet<u64> = done.iter().map(|(i, _)| *i).collect();
    let parallel = match layout.flow {
        Flow::InOrder => 1,
        Flow::Parallel(n) => n.max(1),
    };
    let mut receipts: Vec<(u64, S::Receipt)> = parts(req, layout, &skip)
        .map_ok(|(part, memory)| async move {
            let what = format!("{} part {} of {}", layout.label, part.index, req.name);
            let receipt = policy.run(&what, |n| session.put_part(&part, n)).await?;
            // Held until the part's request is over: bounds the buffered parts of all uploads.
            drop(memory);
            req.observer.part_done(part.index, part.len);
            Ok((part.index, receipt))
        })
        .try_buffer_unordered(parallel)
        .try_collect()
        .await?;
    receipts.extend(done);
    receipts.sort_by_key(|(i, _)| *i);
    // Completing makes the file visible: a file still being written waits for its writer.
    let sealed = req.sealed().await?;
    session.complete(receipts, &sealed).await
}

/// Where the part stream is.
struct Cursor {
    index: u64,
    offset: u64,
    ended: bool,
}

/// The parts to send, in order, each read (and its memory reserved) only when the flow
/// has room for it.
fn parts<'a>(
    req: &'a UploadRequest,
    layout: &'a Layout,
    skip: &'a HashSet<u64>,
) -> impl futures_util::Stream<Item = Result<(Part, Option<Reservation>)>> + Send + 'a {
    let start = Cursor {
        index: 0,
        offset: 0,
        ended: false,
    };
    futures_util::stream::try_unfold(start, move |mut c| async move {
        loop {
            // Known from the start, or from the seal on (an open-ended file).
            let known = req.known_size();
            if c.ended || known.is_some_and(|size| c.offset >= size) {
                return Ok(None);
            }
            let plan = layout.plan;
            if plan.max_parts.is_some_and(|max| c.index >= max) {
                return Err(TargetError::new(
                    ErrorKind::TooLarge,
                    format!(
                        "{}: {} needs more than {} parts",
                        layout.label, req.name, c.index
                    ),
                ));
            }
            let want = plan.part_size(c.index);
            let len = known.map_or(want, |size| want.min(size - c.offset));
            if skip.contains(&c.index) {
                c.index += 1;
                c.offset += len;
                continue;
            }
            let part = next_part(req, layout, &mut c, len, known).await?;
            c.index += 1;
            c.offset += len;
            return Ok(part.map(|p| (p, c)));
        }
    })
}

/// Wait for, reserve and read the part at the cursor; `None` when the data ended there.
async fn next_part(
    req: &UploadRequest,
    layout: &Layout,
    c: &mut Cursor,
    len: u64,
    known: Option<u64>,
) -> Result<Option<(Part, Option<Reservation>)>> {
    let src = &req.source;
    let last = known.is_some_and(|size| c.offset + len >= size);
    // A file still being written: its bytes first (holding no memory meanwhile).
    source::wait_ready(src, c.offset, len).await?;
    if last && layout.last_part_completes {
        // This part makes the file visible: the writer must be done.
        req.final_digests().await?;
    }
    let streamed = layout.streamed && known.is_some() && !layout.part_sha1;
    let memory = if streamed {
        None
    } else {
        Some(budget::reserve(len).await)
    };
    let (data, len, last) = if streamed {
        (None, len, last)
    } else if known.is_some() {
        let data = source::read_source(src, c.offset, len as usize).await?;
        (Some(data), len, last)
    } else {
        let data = source::read_upto(src, c.offset, len as usize).await?;
        let got = data.len() as u64;
        if got < len {
            // Short: the writer is done and the data ends here, as the seal must say.
            let size = req.sealed().await?.size.unwrap_or(0);
            if c.offset + got != size {
                return Err(TargetError::new(
                    ErrorKind::LocalIo,
                    format!(
                        "{}: the data ends at {} bytes but the writer closed it at {size}",
                        req.name,
                        c.offset + got
                    ),
                ));
            }
            c.ended = true;
            if got == 0 {
                return Ok(None);
            }
        }
        (Some(data), got, got < len)
    };
    let sha1 = match (&data, layout.part_sha1) {
        (Some(d), true) => Some(source::hash_bytes::<sha1::Sha1>(d).await?),
        _ => None,
    };
    let part = Part {
        index: c.index,
        offset: c.offset,
        len,
        last,
        sha1,
        data,
        source: src.clone(),
    };
    Ok(Some((part, memory)))
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
