//! Cloudreve's chunked upload as protocol steps of the part-session seam
//! ([`crate::remote::session`]): open a session, send chunks strictly in order with the
//! exact `Content-Length` (streamed from the source, never buffered), the last one
//! completing the upload; cancel a session given up on.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};

use super::{code, code_error, prefix, CloudreveTarget, Outcome};
use crate::remote::http::{excerpt, Attempt};
use crate::remote::session::{
    Flow, Layout, Open, Opened, Part, PartPlan, PartProtocol, PartSession,
};
use crate::remote::{ErrorKind, RemoteFile, Result, Sealed, TargetError, UploadRequest};

/// The chunked upload of one file.
pub(super) struct Chunks<'a> {
    pub(super) t: &'a CloudreveTarget,
    pub(super) uri: &'a str,
}

/// An open upload session.
pub(super) struct ChunkSession<'a> {
    t: &'a CloudreveTarget,
    uri: &'a str,
    id: String,
    name: String,
    size: u64,
    mtime_ms: i64,
    chunks: u64,
    /// An attempt of the part in flight may have reached the server unseen.
    ambiguous: AtomicBool,
}

#[async_trait]
impl<'a> PartProtocol for Chunks<'a> {
    type Session = ChunkSession<'a>;

    async fn open(&self, req: &UploadRequest, _round: u32) -> Result<Open<ChunkSession<'a>>> {
        let s = self.t.create_session(self.uri, req).await?;
        // A zero chunk size means one chunk holds everything.
        let chunk_size = if s.chunk_size == 0 {
            req.size.max(1)
        } else {
            s.chunk_size
        };
        Ok(Open::Session(Opened {
            id: s.session_id.clone(),
            layout: Layout {
                label: "cloudreve",
                plan: PartPlan::fixed(chunk_size),
                flow: Flow::InOrder,
                part_sha1: false,
                streamed: true,
                last_part_completes: true,
            },
            session: ChunkSession {
                t: self.t,
                uri: self.uri,
                id: s.session_id,
                name: req.name.clone(),
                size: req.size,
                mtime_ms: req.mtime_ms,
                chunks: req.size.div_ceil(chunk_size),
                ambiguous: AtomicBool::new(false),
            },
            done: Vec::new(),
        }))
    }
}

#[async_trait]
impl PartSession for ChunkSession<'_> {
    type Receipt = ();
    type Output = RemoteFile;

    /// One chunk, with the exact `Content-Length`; the last one completes the upload.
    async fn put_part(&self, part: &Part, attempt: u32) -> Attempt<()> {
        if attempt == 1 {
            self.ambiguous.store(false, Ordering::Relaxed);
        }
        let what = format!(
            "upload of {}: chunk {} of {}",
            self.name, part.index, self.chunks
        );
        let url = self
            .t
            .endpoint(&format!("/file/upload/{}/{}", self.id, part.index));
        let (body, failure) = part.body();
        let rb = self
            .t
            .http
            .auth(self.t.http.post(&url))
            .header(CONTENT_LENGTH, part.len)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let outcome = self.t.attempt(rb).await;
        if let Some(e) = failure.take(&what) {
            return Attempt::Fail(e);
        }
        match outcome {
            Outcome::Data(_) => Attempt::Done(()),
            Outcome::Transient(after, reason) => {
                self.ambiguous.store(true, Ordering::Relaxed);
                Attempt::Retry { after, reason }
            }
            // The server could not take the whole body (cut short): send again.
            Outcome::Code(c, m) if (50000..60000).contains(&c) => {
                Attempt::again(format!("Cloudreve error {c}: {m}"))
            }
            // The last chunk landed on an earlier attempt and completed the upload, so
            // the session is gone: check the file is there.
            Outcome::Code(code::SESSION_EXPIRED, _)
                if part.last && self.ambiguous.load(Ordering::Relaxed) =>
            {
                match self.t.info(self.uri, &what).await {
                    Ok(f) if f.size == self.size && !f.is_dir => Attempt::Done(()),
                    _ => Attempt::Fail(TargetError::protocol(format!(
                        "{what}: the upload session vanished before the file was complete"
                    ))),
                }
            }
            // The session vanished mid-upload (expired, or the server lost it).
            Outcome::Code(code::SESSION_EXPIRED, m) => Attempt::Fail(TargetError::new(
                ErrorKind::NotFound,
                format!(
                    "{what}: the upload session is gone (Cloudreve error 40011: {})",
                    excerpt(&m)
                ),
            )),
            Outcome::Code(c, m) => Attempt::Fail(code_error(&what, c, &m)),
            Outcome::Fatal(e) => Attempt::Fail(prefix(&what, e)),
        }
    }

    /// The last chunk completed the upload: look the file up.
    async fn complete(&self, _receipts: Vec<(u64, ())>, _sealed: &Sealed) -> Result<RemoteFile> {
        let what = format!("upload of {}", self.name);
        match self.t.info(self.uri, &what).await {
            Ok(f) => Ok(f),
            Err(e) => {
                tracing::warn!(file = %self.name, error = %e, "file info after upload failed");
                Ok(RemoteFile {
                    id: self.uri.to_string(),
                    name: self.name.clone(),
                    size: self.size,
                    mtime_ms: self.mtime_ms,
                    is_dir: false,
                    sha1: None,
                    md5: None,
                    url: None,
                    extra: None,
                })
            }
        }
    }

    async fn abort(&self) {
        self.t.cancel(&self.id, self.uri, &self.name).await;
    }
}
