//! The Virola Messenger client: files are attachments of one configured message
//! (`room_id`, `message_id`), authenticated with the Web API access token as
//! `Authorization: Bearer`.
//!
//! Upload is one `multipart/form-data` POST with a single `files` part to
//! `/messages/{message_id}/attachments`, its body streamed from the source file (never
//! loaded in memory) and rebuilt for each attempt. The answer carries no attachment id, so
//! the client lists the room's messages afterwards and picks the attachment of the message
//! that was not there before the upload and matches name, size and `fileChecksum` (SHA-1
//! of the data; the emulator's choice, and the 40-hex form the docs show). Because a
//! dropped connection can hide a stored upload, every retry first looks for the
//! attachment and only re-sends when it did not land: a file is never stored twice.
//!
//! Listing pages through the room's messages (newest first) until it reaches the
//! configured message. Reads are Range GETs of `/attachments/{id}/{name}`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::StatusCode;
use serde::Deserialize;

use super::http::{excerpt, parse_json, status_error, Attempt, Exchange, HttpClient};
use super::{
    Capabilities, DirRef, ErrorKind, RemoteFile, Result, Target, TargetError, UploadRequest,
};
use crate::config::TargetConfig;

/// Nominal part size: there are no parts, one request carries the whole file.
const NOMINAL_PART: u64 = 8 * 1024 * 1024;
/// Messages asked for per page when looking for the configured message.
const PAGE: usize = 50;
/// How often to look again for an accepted upload that is not listed yet.
const FIND_ATTEMPTS: u32 = 5;

/// `Debug` shows no token (the [`HttpClient`] keeps it as a `Secret`).
#[derive(Debug)]
pub struct VirolaTarget {
    http: HttpClient,
    base: String,
    room_id: u64,
    message_id: u64,
    /// Attachment ids handed to an upload already, so two concurrent uploads of identical
    /// files never claim the same attachment.
    claimed: Mutex<HashSet<String>>,
}

impl VirolaTarget {
    pub fn new(http: HttpClient, cfg: &TargetConfig) -> anyhow::Result<Self> {
        let room_id = cfg
            .room_id
            .ok_or_else(|| anyhow::anyhow!("virola target needs room_id"))?;
        let message_id = cfg
            .message_id
            .ok_or_else(|| anyhow::anyhow!("virola target needs message_id"))?;
        Ok(Self {
            http,
            base: cfg.url.trim_end_matches('/').to_string(),
            room_id,
            message_id,
            claimed: Mutex::new(HashSet::new()),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn claimed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.claimed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Map a non-success answer, using Virola's `errorText` when there is one.
    fn fail(&self, what: &str, status: StatusCode, body: &[u8]) -> TargetError {
        let text = serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .and_then(|e| e.error_text)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return TargetError::new(
                ErrorKind::Auth,
                format!(
                    "{what}: the Web API access token was refused ({status}: {}); renew it",
                    excerpt(&text)
                ),
            );
        }
        status_error(what, status, &text)
    }

    /// Attachments of the configured message, found by paging the room backwards.
    async fn message_attachments(&self) -> Result<Vec<Attachment>> {
        let what = format!("listing room {} messages", self.room_id);
        let mut cursor: Option<u64> = None;
        let mut seen: HashSet<u64> = HashSet::new();
        loop {
            let mut url = format!(
                "{}?direction=backward&limit={PAGE}",
                self.url(&format!("/rooms/{}/messages", self.room_id))
            );
            if let Some(c) = cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let r = self
                .http
                .call(&what, || self.http.auth(self.http.get(&url)))
                .await?;
            if !r.status.is_success() {
                return Err(self.fail(&what, r.status, &r.body));
            }
            let page: MessagesPage = parse_json(&what, &r.body)?;
            let mut progressed = false;
            let mut lowest = u64::MAX;
            for m in page.messages {
                if m.message_id == self.message_id {
                    return Ok(m.attachments);
                }
                progressed |= seen.insert(m.message_id);
                lowest = lowest.min(m.message_id);
            }
            // Pages go newest to oldest: once below the message, or out of messages, it
            // is not in this room.
            if !progressed || lowest < self.message_id {
                return Err(TargetError::new(
                    ErrorKind::NotFound,
                    format!(
                        "message {} not found in room {}: check message_id and room_id",
                        self.message_id, self.room_id
                    ),
                ));
            }
            cursor = Some(lowest);
        }
    }

    /// The attachment of this upload: new since `before`, same name, size and checksum.
    async fn find_landed(
        &self,
        before: &HashSet<String>,
        name: &str,
        size: u64,
        sha1: &str,
    ) -> Result<Option<Attachment>> {
        let atts = self.message_attachments().await?;
        let mut claimed = self.claimed();
        let hit = atts
            .into_iter()
            .filter(|a| {
                let id = a.attachment_id.to_string();
                !before.contains(&id) && !claimed.contains(&id)
            })
            .filter(|a| {
                a.file_name == name
                    && a.file_size == size
                    && a.file_checksum
                        .as_deref()
                        .is_none_or(|c| c.eq_ignore_ascii_case(sha1))
            })
            .max_by_key(|a| a.attachment_id);
        if let Some(a) = &hit {
            claimed.insert(a.attachment_id.to_string());
        }
        Ok(hit)
    }

    fn to_remote(&self, a: Attachment) -> RemoteFile {
        RemoteFile {
            id: a.attachment_id.to_string(),
            name: a.file_name,
            size: a.file_size,
            mtime_ms: a.last_modified_utc.or(a.created_utc).unwrap_or(0),
            is_dir: false,
            sha1: a
                .file_checksum
                .filter(|c| c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(|c| c.to_ascii_lowercase()),
            md5: None,
            url: None,
            extra: Some(self.message_id.to_string()),
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    super::check_plain_name(name, "Virola refuses this attachment name")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    error_text: Option<String>,
}

#[derive(Deserialize)]
struct MessagesPage {
    #[serde(default)]
    messages: Vec<Message>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    message_id: u64,
    #[serde(default)]
    attachments: Vec<Attachment>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attachment {
    attachment_id: u64,
    file_name: String,
    file_size: u64,
    file_checksum: Option<String>,
    created_utc: Option<i64>,
    last_modified_utc: Option<i64>,
}

#[async_trait]
impl Target for VirolaTarget {
    fn health(&self) -> Option<&std::sync::Arc<crate::remote::health::Health>> {
        Some(self.http.health())
    }

    fn check_name(&self, name: &str) -> Result<()> {
        check_name(name)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: "virola",
            part_size: NOMINAL_PART,
            max_parallel_parts: 1,
            max_file_size: None,
            range_reads: true,
            folders: false,
            rename: false,
            delete: true,
            needs_md5: false,
            wants_sha1: true,
            case_insensitive_names: false,
            replaces_in_place: false,
            early_start: false,
            size_later: false,
        }
    }

    async fn upload(&self, req: UploadRequest) -> Result<RemoteFile> {
        check_name(&req.name)?;
        let req = req.with_final_size().await?;
        // One request posts the file, checksum first: a file still being written is
        // complete first.
        let digests = req.final_digests().await?;
        let sha1 = super::source::given_or_hashed::<sha1::Sha1>(
            digests.sha1.as_deref(),
            &req.source,
            req.size,
        )
        .await?;
        let before: HashSet<String> = self
            .message_attachments()
            .await?
            .into_iter()
            .map(|a| a.attachment_id.to_string())
            .collect();
        let what = format!("uploading {}", req.name);
        let url = self.url(&format!("/messages/{}/attachments", self.message_id));
        let attempts = AtomicU32::new(0);
        let sent = self
            .http
            .retry(&what, || async {
                // After a failed attempt the file may have landed anyway (the connection
                // dropped after the server stored it): look before sending it again.
                if attempts.fetch_add(1, Ordering::Relaxed) > 0 {
                    match self.find_landed(&before, &req.name, req.size, &sha1).await {
                        Ok(Some(a)) => return Attempt::Done(Some(a)),
                        Ok(None) => {}
                        Err(e) => return Attempt::Fail(e),
                    }
                }
                let (part, failure) =
                    match super::source::file_part(&req.source, req.size, &req.name) {
                        Ok(p) => p,
                        Err(e) => return Attempt::Fail(e),
                    };
                let form = reqwest::multipart::Form::new().part("files", part);
                let ex = self
                    .http
                    .exchange(self.http.auth(self.http.post(&url)).multipart(form))
                    .await;
                if let Some(e) = failure.take(&what) {
                    return Attempt::Fail(e);
                }
                let reply = match ex {
                    Exchange::Answer(r) => r,
                    Exchange::Lost(reason) => return Attempt::again(reason),
                    Exchange::Fatal(e) => return Attempt::Fail(e),
                };
                if let Some(busy) = reply.busy() {
                    return busy;
                }
                if !reply.status.is_success() {
                    return Attempt::Fail(self.fail(&what, reply.status, &reply.body));
                }
                Attempt::Done(None)
            })
            .await?;
        if let Some(a) = sent {
            tracing::debug!(name = %req.name, id = a.attachment_id, "virola: upload had landed before a retry");
            req.observer.part_done(0, req.size);
            return Ok(self.to_remote(a));
        }
        req.observer.part_done(0, req.size);
        // The answer has no id: find the attachment in the message (listing may lag).
        for n in 0..FIND_ATTEMPTS {
            if let Some(a) = self
                .find_landed(&before, &req.name, req.size, &sha1)
                .await?
            {
                tracing::debug!(name = %req.name, id = a.attachment_id, "virola: uploaded");
                return Ok(self.to_remote(a));
            }
            tokio::time::sleep(Duration::from_millis(100 << n)).await;
        }
        Err(TargetError::protocol(format!(
            "{what}: the server accepted the upload but no matching attachment appeared in message {}",
            self.message_id
        )))
    }

    async fn read_range(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes> {
        let data = self.read_unchecked(file, offset, len).await?;
        super::http::check_read(&read_what(file), file, offset, len, data)
    }

    async fn list(&self, dir: &DirRef) -> Result<Vec<RemoteFile>> {
        if dir.is_some() {
            return Err(TargetError::new(
                ErrorKind::NotFound,
                "virola has no folders; only the message's attachments exist",
            ));
        }
        Ok(self
            .message_attachments()
            .await?
            .into_iter()
            .map(|a| self.to_remote(a))
            .collect())
    }

    async fn delete(&self, file: &RemoteFile) -> Result<()> {
        let what = format!("deleting {}", file.name);
        let url = self.url(&format!("/attachments/{}", file.id));
        let r = self
            .http
            .call(&what, || self.http.auth(self.http.delete(&url)))
            .await?;
        if r.status.is_success() {
            self.claimed().remove(&file.id);
            Ok(())
        } else {
            Err(self.fail(&what, r.status, &r.body))
        }
    }

    async fn rename(&self, _file: &RemoteFile, _p: &DirRef, _n: &str) -> Result<RemoteFile> {
        Err(TargetError::unsupported("rename"))
    }

    async fn mkdir(&self, _parent: &DirRef, _name: &str) -> Result<RemoteFile> {
        Err(TargetError::unsupported("mkdir"))
    }

    async fn check(&self) -> Result<()> {
        self.message_attachments().await.map(|_| ())
    }
}

impl VirolaTarget {
    /// A ranged read as the server answered it ([`super::http::check_read`] checks it).
    async fn read_unchecked(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let what = read_what(file);
        let name =
            percent_encoding::utf8_percent_encode(&file.name, percent_encoding::NON_ALPHANUMERIC);
        let url = self.url(&format!("/attachments/{}/{name}", file.id));
        match self.http.get_range(&what, &url, offset, len, true).await? {
            Ok(data) => Ok(data),
            Err(r) => Err(self.fail(&what, r.status, &r.body)),
        }
    }
}

/// How reads of `file` are named in messages.
fn read_what(file: &RemoteFile) -> String {
    format!("reading {}", file.name)
}
