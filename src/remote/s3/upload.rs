//! Uploads to S3: a file under one part is one PutObject; anything larger is a multipart
//! upload whose steps — create (or resume a journaled upload from ListParts), UploadPart,
//! CompleteMultipartUpload, AbortMultipartUpload — plug into the part-session seam
//! ([`crate::remote::session`]). The driver does the rest: it waits for a part's bytes while
//! the file is still being written, bounds part memory, sends parts in parallel with
//! per-part retries, completes once the writer is done and aborts on failure.
//!
//! S3 needs no size before the first part, so a file whose size is known only when its
//! writer closes it (an open-ended seal) streams its parts from the first full one on;
//! parts grow with their index ([`super::PLAN`]) so 10,000 of them reach 5 TiB.
//!
//! An upload id goes to the journal as soon as it exists; after a crash the journaled id
//! resumes the upload: ListParts says what the server holds, and a stored part is kept only
//! when its size and MD5 ETag match our bytes at that place (a part number uploaded again
//! simply replaces the stored one). Besides the driver's aborts, an upload whose future is
//! dropped unfinished (the caller gave up) is aborted in the background ([`AbortGuard`]), so
//! no parts are left behind.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::proto::{Md5Of, S3Client, StoredPart};
use super::wire::{etag_md5, ObjectMeta};
use super::{S3Target, FILE_MODE, MAX_OBJECT, PARTS_IN_FLIGHT, PART_SIZE, PLAN};
use crate::remote::http::Attempt;
use crate::remote::session::{
    self, Flow, Layout, Open, Opened, Part, PartPlan, PartProtocol, PartSession,
};
use crate::remote::source::{hash_bytes, read_upto};
use crate::remote::{
    budget, read_source, wait_ready, ErrorKind, RemoteFile, Result, Sealed, TargetError,
    UploadRequest,
};

impl S3Target {
    /// Upload a whole file: PutObject below one part, a multipart upload otherwise.
    pub(super) async fn upload_file(&self, req: &UploadRequest) -> Result<RemoteFile> {
        self.upload_file_if(req, None).await
    }

    /// [`Self::upload_file`], written only if the key's object still has ETag `if_match`
    /// (`If-Match` on the PutObject or the CompleteMultipartUpload that makes it visible):
    /// `ErrorKind::Changed` when it has another.
    pub(super) async fn upload_file_if(
        &self,
        req: &UploadRequest,
        if_match: Option<&str>,
    ) -> Result<RemoteFile> {
        let key = self.key(&req.parent, &req.name, false)?;
        if req.known_size().is_some_and(|size| size > MAX_OBJECT) {
            return Err(TargetError::new(
                ErrorKind::TooLarge,
                format!("{}: S3 objects end at 5 TiB", req.name),
            ));
        }
        let meta = ObjectMeta {
            mtime_ms: Some(req.mtime_ms),
            mode: Some(FILE_MODE),
        };
        // A file still being written: its first part's bytes, or its end, decide the way.
        let first = req
            .known_size()
            .map_or(PART_SIZE, |size| size.min(PART_SIZE));
        wait_ready(&req.source, 0, first).await?;
        match req.known_size() {
            Some(size) if size < PART_SIZE => {
                self.put_small(&key, req, size, &meta, if_match).await?
            }
            _ => {
                let proto = Multipart {
                    client: self.client(),
                    key: &key,
                    meta: &meta,
                    if_match,
                };
                session::drive(self.client().http.policy(), &proto, req).await?;
            }
        }
        let mut f = self.stat(&key).await?;
        let size = req.sealed().await?.size;
        if size.is_some_and(|size| size != f.size) {
            return Err(TargetError::protocol(format!(
                "{key}: the server stored {} bytes where {size:?} were sent",
                f.size
            )));
        }
        // Some servers' HeadObject drops sub-second precision; we know what we wrote.
        f.mtime_ms = req.mtime_ms;
        Ok(f)
    }

    /// One PutObject of a file under one part, once its writer is done.
    async fn put_small(
        &self,
        key: &str,
        req: &UploadRequest,
        size: u64,
        meta: &ObjectMeta,
        if_match: Option<&str>,
    ) -> Result<()> {
        let digests = req.final_digests().await?;
        let _memory = budget::reserve(size).await;
        let data = read_source(&req.source, 0, size as usize).await?;
        if let Some(want) = &digests.md5 {
            let got = Md5Of::bytes(&data);
            if !want.eq_ignore_ascii_case(&got.hex) {
                return Err(TargetError::new(
                    ErrorKind::LocalIo,
                    format!("{}: the staged data changed while it was read", req.name),
                ));
            }
        }
        self.client()
            .put_object_if(key, meta, data, if_match)
            .await?;
        req.observer.part_done(0, size);
        Ok(())
    }

    /// Run the steps of multipart upload `upload_id` of `key`, and abort it when they fail
    /// or are dropped unfinished (the caller gave up), so no parts are left behind.
    pub(super) async fn or_abort<T>(
        &self,
        key: &str,
        upload_id: &str,
        steps: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let guard = AbortGuard::new(self.client(), key, upload_id);
        let result = steps.await;
        if result.is_err() {
            guard.abort().await;
        }
        guard.disarm();
        result
    }
}

/// Aborts a multipart upload left unfinished: explicitly ([`AbortGuard::abort`]) or, when
/// dropped still armed (its future was dropped), in the background.
pub(super) struct AbortGuard {
    client: S3Client,
    key: String,
    upload_id: String,
    armed: AtomicBool,
}

impl AbortGuard {
    fn new(client: &S3Client, key: &str, upload_id: &str) -> Self {
        AbortGuard {
            client: client.clone(),
            key: key.to_string(),
            upload_id: upload_id.to_string(),
            armed: AtomicBool::new(true),
        }
    }

    /// The upload completed (or is to be kept): nothing to abort.
    fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }

    /// Abort now, best effort.
    async fn abort(&self) {
        self.disarm();
        match self
            .client
            .abort_multipart(&self.key, &self.upload_id)
            .await
        {
            Ok(()) => tracing::info!(key = %self.key, "s3: multipart upload aborted"),
            Err(e) => tracing::warn!(key = %self.key, error = %e, "s3: abort failed"),
        }
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.armed.load(Ordering::Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (client, key, id) = (
            self.client.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.upload_id),
        );
        rt.spawn(async move {
            if let Err(e) = client.abort_multipart(&key, &id).await {
                tracing::warn!(key, error = %e, "s3: abort of an abandoned upload failed");
            }
        });
    }
}

/// The multipart protocol for one key.
struct Multipart<'a> {
    client: &'a S3Client,
    key: &'a str,
    meta: &'a ObjectMeta,
    /// The ETag the completion names in `If-Match`.
    if_match: Option<&'a str>,
}

/// One multipart upload in progress.
struct S3Session {
    guard: AbortGuard,
    if_match: Option<String>,
}

fn layout() -> Layout {
    Layout {
        label: "s3",
        plan: PLAN,
        flow: Flow::Parallel(PARTS_IN_FLIGHT),
        part_sha1: false,
        // Held in memory: each part carries its `Content-MD5`.
        streamed: false,
        last_part_completes: false,
    }
}

#[async_trait]
impl PartProtocol for Multipart<'_> {
    type Session = S3Session;

    async fn open(&self, req: &UploadRequest, round: u32) -> Result<Open<S3Session>> {
        if let Some(id) = req.resume_session.as_ref().filter(|_| round == 0) {
            match self.client.list_parts(self.key, id).await {
                Ok(stored) => {
                    let done = usable_parts(req, &PLAN, stored).await?;
                    tracing::info!(key = self.key, upload = %id, parts = done.len(),
                        "s3: resuming a journaled multipart upload");
                    return Ok(self.opened(id, done));
                }
                Err(e) if e.kind == ErrorKind::NotFound => {
                    tracing::info!(
                        key = self.key,
                        "s3: the journaled upload is gone; starting anew"
                    )
                }
                Err(e) => return Err(e),
            }
        }
        let id = self.client.create_multipart(self.key, self.meta).await?;
        Ok(self.opened(&id, Vec::new()))
    }

    // `resumable` stays false: a failed upload is aborted, whatever the cause, so none is
    // left holding parts; only a crash leaves one, and its journaled id resumes it.
}

impl Multipart<'_> {
    fn opened(&self, id: &str, done: Vec<(u64, String)>) -> Open<S3Session> {
        Open::Session(Opened {
            session: S3Session {
                guard: AbortGuard::new(self.client, self.key, id),
                if_match: self.if_match.map(str::to_string),
            },
            id: id.to_string(),
            layout: layout(),
            done,
        })
    }
}

/// The stored parts of a resumed upload that hold exactly our bytes: same size as the plan
/// gives the part, and an MD5 ETag equal to the MD5 of our data there. Only for a file of
/// known size (an unknown end cannot say how long the last part is): others send all parts.
async fn usable_parts(
    req: &UploadRequest,
    plan: &PartPlan,
    stored: Vec<StoredPart>,
) -> Result<Vec<(u64, String)>> {
    let Some(size) = req.known_size() else {
        return Ok(Vec::new());
    };
    let mut done = Vec::new();
    for p in stored {
        let Some(index) = u64::from(p.number).checked_sub(1) else {
            continue;
        };
        let offset = plan.offset(index);
        let len = plan.part_size(index).min(size.saturating_sub(offset));
        let Some(etag) = etag_md5(&p.etag) else {
            continue;
        };
        if index >= plan.count(size) || len == 0 || p.size != len {
            continue;
        }
        wait_ready(&req.source, offset, len).await?;
        let _memory = budget::reserve(len).await;
        let data = read_upto(&req.source, offset, len as usize).await?;
        if data.len() as u64 == len && hash_bytes::<md5::Md5>(&data).await? == etag {
            done.push((index, p.etag));
        }
    }
    Ok(done)
}

#[async_trait]
impl PartSession for S3Session {
    type Receipt = String;
    type Output = String;

    async fn put_part(&self, part: &Part, _attempt: u32) -> Attempt<String> {
        let g = &self.guard;
        let Ok(number) = u16::try_from(part.index + 1) else {
            return Attempt::Fail(TargetError::new(
                ErrorKind::TooLarge,
                format!("{}: more parts than S3 numbers", g.key),
            ));
        };
        let Some(data) = part.bytes() else {
            return Attempt::Fail(TargetError::protocol(
                "s3: a part is not in memory (the layout holds every part)",
            ));
        };
        let md5 = match md5_of(data).await {
            Ok(m) => m,
            Err(e) => return Attempt::Fail(e),
        };
        g.client
            .part_attempt(&g.key, &g.upload_id, number, data, &md5)
            .await
    }

    async fn complete(&self, receipts: Vec<(u64, String)>, _sealed: &Sealed) -> Result<String> {
        let g = &self.guard;
        if let Some((i, _)) = receipts.iter().enumerate().find(|(n, r)| r.0 != *n as u64) {
            return Err(TargetError::protocol(format!(
                "{}: part {} is missing from the parts to complete",
                g.key,
                i + 1
            )));
        }
        let etags: Vec<String> = receipts.into_iter().map(|(_, e)| e).collect();
        let etag = g
            .client
            .complete_multipart_if(&g.key, &g.upload_id, &etags, self.if_match.as_deref())
            .await?;
        g.disarm();
        Ok(etag)
    }

    async fn abort(&self) {
        self.guard.abort().await;
    }
}

/// A part's MD5, computed off the async threads.
async fn md5_of(data: &Bytes) -> Result<Md5Of> {
    let data = data.clone();
    tokio::task::spawn_blocking(move || Md5Of::bytes(&data))
        .await
        .map_err(|e| TargetError::new(ErrorKind::LocalIo, format!("hashing a part: {e}")))
}

#[cfg(test)]
mod tests {
    use super::super::wire::multipart_etag;
    use super::*;

    #[test]
    fn the_plan_reaches_five_tib_in_ten_thousand_parts() {
        assert_eq!(PLAN.part_size(0), PART_SIZE);
        assert_eq!(PLAN.offset(1000), 1000 * PART_SIZE);
        assert_eq!(PLAN.part_size(1000), 2 * PART_SIZE);
        assert_eq!(PLAN.count(PART_SIZE), 1);
        assert_eq!(PLAN.count(PART_SIZE + 1), 2);
        assert!(
            PLAN.count(MAX_OBJECT) <= 10_000,
            "{}",
            PLAN.count(MAX_OBJECT)
        );
        assert_eq!(layout().flow, Flow::Parallel(PARTS_IN_FLIGHT));
    }

    #[test]
    fn multipart_etags() {
        let a = Md5Of::bytes(b"first part");
        let b = Md5Of::bytes(b"second");
        let mut both = hex::decode(&a.hex).unwrap();
        both.extend(hex::decode(&b.hex).unwrap());
        let want = format!("{}-2", Md5Of::bytes(&both).hex);
        assert_eq!(multipart_etag(&[a.hex.clone(), b.hex]), Some(want));
        assert_eq!(multipart_etag(&[a.hex, "abc-2".into()]), None);
    }
}
