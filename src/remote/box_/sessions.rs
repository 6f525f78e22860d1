//! Box upload sessions, as protocol steps of the part-session seam
//! ([`crate::remote::session`]): create (or resume a journaled session whose parts still
//! match our data), send one part with its SHA-1 `Digest` and `Content-Range`, commit with
//! the whole file's SHA-1, abort. The driver does the rest.

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    hex_to_b64, rfc3339, BoxTarget, Failure, DEFAULT_NOT_READY_WAIT, DIGEST, PAGE_LIMIT,
    PARALLEL_PARTS,
};
use crate::remote::http::{parse_json, Attempt, Exchange};
use crate::remote::session::{
    self, Flow, Layout, Open, Opened, Part, PartPlan, PartProtocol, PartSession,
};
use crate::remote::{PartSource, RemoteFile, Result, Sealed, TargetError, UploadRequest};

#[derive(Debug, Deserialize)]
struct SessionEndpoints {
    upload_part: String,
    commit: String,
    abort: String,
    list_parts: String,
}

#[derive(Debug, Deserialize)]
struct UploadSession {
    id: String,
    part_size: u64,
    total_parts: u64,
    session_endpoints: SessionEndpoints,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
struct UploadPart {
    part_id: String,
    offset: u64,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha1: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UploadedPart {
    part: UploadPart,
}

#[derive(Debug, Deserialize)]
struct PartsPage {
    #[serde(default)]
    total_count: Option<u64>,
    entries: Vec<UploadPart>,
}

impl BoxTarget {
    // -----------------------------------------------------------------------------------
    // Sessions: the protocol steps; the part lifecycle is `session::drive`.

    async fn create_session(
        &self,
        req: &UploadRequest,
        parent: &str,
        version_of: Option<&str>,
    ) -> Result<std::result::Result<UploadSession, Failure>> {
        let what = format!("box upload session for {}", req.name);
        let (url, body) = match version_of {
            Some(id) => (
                format!("{}/files/{id}/upload_sessions", self.upload),
                json!({"file_size": req.size, "file_name": req.name}),
            ),
            None => (
                format!("{}/files/upload_sessions", self.upload),
                json!({"folder_id": parent, "file_size": req.size, "file_name": req.name}),
            ),
        };
        match self
            .call(&what, || self.http.post(&url).json(&body))
            .await?
        {
            Ok(r) => Ok(Ok(check_session(&what, req.size, &r.body)?)),
            Err(f) => Ok(Err(f)),
        }
    }

    /// A journaled session, if the server still has it for a file of this size.
    async fn resume(&self, req: &UploadRequest, sid: &str) -> Result<Option<UploadSession>> {
        let what = format!("box resume of {}", req.name);
        let url = format!("{}/files/upload_sessions/{sid}", self.upload);
        match self.call(&what, || self.http.get(&url)).await? {
            Ok(r) => match check_session(&what, req.size, &r.body) {
                Ok(s) => Ok(Some(s)),
                Err(e) => {
                    tracing::info!(session = sid, error = %e, "box: journaled session unusable");
                    Ok(None)
                }
            },
            Err(f) if f.status == StatusCode::NOT_FOUND => Ok(None),
            Err(f) => Err(f.into_error(&what)),
        }
    }

    /// Every part the server holds for a session (all pages).
    async fn list_parts(&self, what: &str, s: &UploadSession) -> Result<Vec<UploadPart>> {
        let mut out = Vec::new();
        loop {
            let url = s.session_endpoints.list_parts.clone();
            let offset = out.len();
            let body = self
                .call_ok(what, || {
                    self.http
                        .get(&url)
                        .query(&[("offset", offset as u64), ("limit", PAGE_LIMIT as u64)])
                })
                .await?;
            let page: PartsPage = parse_json(what, &body)?;
            let n = page.entries.len();
            out.extend(page.entries);
            if n == 0 || page.total_count.is_some_and(|t| out.len() as u64 >= t) {
                return Ok(out);
            }
        }
    }

    /// Parts already on the server that match our data, by index; a session holding
    /// different data is unusable (None).
    async fn usable_parts(
        &self,
        req: &UploadRequest,
        s: &UploadSession,
    ) -> Result<Option<Vec<(u64, UploadPart)>>> {
        let what = format!("box resume of {}", req.name);
        let mut out = Vec::new();
        for p in self.list_parts(&what, s).await? {
            let index = p.offset / s.part_size;
            let len = s.part_size.min(req.size.saturating_sub(p.offset));
            if p.offset % s.part_size != 0 || p.offset >= req.size || p.size != len {
                return Ok(None);
            }
            let data = crate::remote::read_source(&req.source, p.offset, len as usize).await?;
            let sha = crate::remote::source::hash_bytes::<sha1::Sha1>(&data).await?;
            if p.sha1
                .as_deref()
                .is_some_and(|h| !h.eq_ignore_ascii_case(&sha))
            {
                return Ok(None);
            }
            out.push((index, p));
        }
        Ok(Some(out))
    }
}

fn check_session(what: &str, size: u64, body: &[u8]) -> Result<UploadSession> {
    let s: UploadSession = parse_json(what, body)?;
    if s.part_size == 0 || s.total_parts != size.div_ceil(s.part_size) {
        return Err(TargetError::protocol(format!(
            "{what}: the session's part size {} and {} parts do not fit {size} bytes",
            s.part_size, s.total_parts
        )));
    }
    Ok(s)
}

/// One session upload: where the file goes and what it replaces.
struct SessionUpload<'a> {
    t: &'a BoxTarget,
    parent: &'a str,
    version_of: Option<&'a str>,
    /// The etag the replaced file must still have at the commit (`If-Match`).
    if_match: Option<&'a str>,
}

/// An open Box upload session.
struct BoxSession<'a> {
    t: &'a BoxTarget,
    s: UploadSession,
    name: String,
    size: u64,
    mtime_ms: i64,
    source: Arc<dyn PartSource>,
    /// `If-Match` of the commit: the replaced file's etag, for a conditional new version.
    if_match: Option<String>,
}

#[async_trait]
impl<'a> PartProtocol for SessionUpload<'a> {
    type Session = BoxSession<'a>;

    async fn open(&self, req: &UploadRequest, round: u32) -> Result<Open<BoxSession<'a>>> {
        let what = format!("box upload of {}", req.name);
        let t = self.t;
        // A journaled session first; a session that is gone or holds other data is dropped.
        let mut resumed = None;
        if let Some(sid) = req.resume_session.as_ref().filter(|_| round == 0) {
            if let Some(s) = t.resume(req, sid).await? {
                match t.usable_parts(req, &s).await? {
                    Some(parts) => resumed = Some((s, parts)),
                    None => t.abort_session(&req.name, &s).await,
                }
            }
        }
        // A conditional commit only where this session makes a new version of that file.
        let mut conditional = self.version_of.is_some();
        let (s, done) = match resumed {
            Some(r) => r,
            None => {
                let s = match t.create_session(req, self.parent, self.version_of).await? {
                    Ok(s) => s,
                    Err(f) => match (self.version_of, f.conflicting_file()) {
                        // The name is taken by a file: upload as its new version.
                        (None, Some(id)) => {
                            conditional = false;
                            t.create_session(req, self.parent, Some(&id))
                                .await?
                                .map_err(|f| f.into_error(&what))?
                        }
                        _ => return Err(f.into_error(&what)),
                    },
                };
                (s, Vec::new())
            }
        };
        tracing::info!(session = %s.id, name = %req.name, part_size = s.part_size,
            parts = s.total_parts, resumed = done.len(), "box: session upload");
        let layout = Layout {
            label: "box",
            plan: PartPlan::fixed(s.part_size),
            flow: Flow::Parallel(PARALLEL_PARTS),
            part_sha1: true,
            streamed: false,
            last_part_completes: false,
        };
        Ok(Open::Session(Opened {
            id: s.id.clone(),
            session: BoxSession {
                t,
                s,
                name: req.name.clone(),
                size: req.size,
                mtime_ms: req.mtime_ms,
                source: req.source.clone(),
                if_match: self.if_match.filter(|_| conditional).map(str::to_string),
            },
            layout,
            done,
        }))
    }

    fn resumable(&self) -> bool {
        true
    }
}
#[async_trait]
impl PartSession for BoxSession<'_> {
    type Receipt = UploadPart;
    type Output = RemoteFile;

    /// One attempt; an overlap answer after a lost first answer is settled by listing the
    /// session's parts.
    async fn put_part(&self, part: &Part, _attempt: u32) -> Attempt<UploadPart> {
        let what = format!("box part {} of {}", part.index, self.name);
        let (offset, len) = (part.offset, part.len);
        let sha = part.sha1.clone().unwrap_or_default();
        let digest = match hex_to_b64(&sha) {
            Ok(b) => format!("sha={b}"),
            Err(e) => return Attempt::Fail(e),
        };
        let range = format!("bytes {}-{}/{}", offset, offset + len - 1, self.size);
        let rb = self
            .t
            .http
            .auth(self.t.http.put(&self.s.session_endpoints.upload_part))
            .header(DIGEST, digest)
            .header(CONTENT_RANGE, range)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(part.body().0);
        let reply = match self.t.http.exchange(rb).await {
            Exchange::Answer(r) => r,
            Exchange::Lost(reason) => return Attempt::again(reason),
            Exchange::Fatal(e) => return Attempt::Fail(e),
        };
        if let Some(busy) = reply.busy() {
            return busy;
        }
        let got = if reply.status.is_success() {
            match parse_json::<UploadedPart>(&what, &reply.body) {
                Ok(p) => p.part,
                Err(e) => return Attempt::Fail(e),
            }
        } else {
            let f = Failure::from_body(reply.status, &reply.body);
            if f.error.code != "range_overlaps_existing_part" {
                return Attempt::Fail(f.into_error(&what));
            }
            // An earlier attempt may have landed with its answer lost.
            match self.t.list_parts(&what, &self.s).await {
                Ok(parts) => match parts.into_iter().find(|p| p.offset == offset) {
                    Some(p) if p.sha1.as_deref() == Some(sha.as_str()) && p.size == len => p,
                    Some(p) => {
                        return Attempt::Fail(TargetError::protocol(format!(
                        "{what}: the server holds different data at offset {offset} (sha1 {:?})",
                        p.sha1
                    )))
                    }
                    // Still being received from the earlier attempt: ask again later.
                    None => return Attempt::again("part range busy on the server"),
                },
                Err(e) => return Attempt::Fail(e),
            }
        };
        if got.offset != offset || got.size != len {
            return Attempt::Fail(TargetError::protocol(format!(
                "{what}: the server recorded {}+{} instead of {offset}+{len}",
                got.offset, got.size
            )));
        }
        if got
            .sha1
            .as_ref()
            .is_some_and(|h| !h.eq_ignore_ascii_case(&sha))
        {
            return Attempt::Fail(TargetError::protocol(format!(
                "{what}: the server's SHA-1 {:?} differs from ours {sha}",
                got.sha1
            )));
        }
        Attempt::Done(got)
    }

    /// Commit: `Digest` of the whole file, the parts as returned; 202 means "not yet".
    async fn complete(&self, parts: Vec<(u64, UploadPart)>, sealed: &Sealed) -> Result<RemoteFile> {
        let what = format!("box commit of {}", self.name);
        let sha1_hex = crate::remote::source::given_or_hashed::<sha1::Sha1>(
            sealed.digests.sha1.as_deref(),
            &self.source,
            self.size,
        )
        .await?;
        let digest = format!("sha={}", hex_to_b64(&sha1_hex)?);
        let parts: Vec<UploadPart> = parts.into_iter().map(|(_, p)| p).collect();
        let mut body = json!({ "parts": parts });
        if let Some(t) = rfc3339(self.mtime_ms) {
            body["attributes"] = json!({ "content_modified_at": t });
        }
        let http = &self.t.http;
        let url = &self.s.session_endpoints.commit;
        http.retry(&what, || async {
            let mut rb = http
                .auth(http.post(url))
                .header(DIGEST, digest.as_str())
                .json(&body);
            if let Some(etag) = &self.if_match {
                rb = rb.header(reqwest::header::IF_MATCH, etag.as_str());
            }
            let reply = match http.exchange(rb).await {
                Exchange::Answer(r) => r,
                Exchange::Lost(reason) => return Attempt::again(reason),
                Exchange::Fatal(e) => return Attempt::Fail(e),
            };
            if reply.status == StatusCode::ACCEPTED {
                return Attempt::Retry {
                    after: Some(
                        crate::remote::http::retry_after(&reply.headers)
                            .unwrap_or(DEFAULT_NOT_READY_WAIT),
                    ),
                    reason: "the server is still processing the parts (202)".to_string(),
                };
            }
            if let Some(busy) = reply.busy() {
                return busy;
            }
            if reply.status.is_success() {
                return match BoxTarget::files_to_file(&what, &reply.body) {
                    Ok(f) => Attempt::Done(f),
                    Err(e) => Attempt::Fail(e),
                };
            }
            Attempt::Fail(Failure::from_body(reply.status, &reply.body).into_error(&what))
        })
        .await
    }

    async fn abort(&self) {
        self.t.abort_session(&self.name, &self.s).await;
    }
}

impl BoxTarget {
    async fn abort_session(&self, name: &str, s: &UploadSession) {
        let what = format!("box abort of the session for {name}");
        let url = &s.session_endpoints.abort;
        match self.call(&what, || self.http.delete(url)).await {
            Ok(Ok(_)) => tracing::info!(session = %s.id, name, "box: session aborted"),
            Ok(Err(f)) => tracing::warn!(session = %s.id, status = %f.status, "box: abort refused"),
            Err(e) => tracing::warn!(session = %s.id, error = %e, "box: abort failed"),
        }
    }

    /// Upload through sessions ([`session::drive`]).
    pub(super) async fn session_upload(
        &self,
        req: &UploadRequest,
        parent: &str,
        version_of: Option<&str>,
        if_match: Option<&str>,
    ) -> Result<RemoteFile> {
        let proto = SessionUpload {
            t: self,
            parent,
            version_of,
            if_match,
        };
        session::drive(self.http.policy(), &proto, req).await
    }
}
