//! Box downloads. `GET /files/{id}/content` answers 302 with a signed download link (on
//! `dl.boxcloud.com`) that serves ranges without the token. Box documents the link as
//! valid for 15 minutes, "subject to change without notice", so the client keeps it per
//! file version (the id and the SHA-1, or the size and time where there is no SHA-1) for
//! [`LINK_TTL`] and sends later ranged reads of that version straight to it: one request
//! per read instead of two (a cold 1 GiB read makes ~260 instead of ~520, and a random
//! 4 KiB miss waits for one round trip instead of two).
//!
//! A link the download host refuses (it expired early, the server forgot it, the file has
//! a new version) is dropped and a fresh one asked for, once per read. The redirect is not
//! followed by the HTTP layer: the link is read from `Location`, and the token never
//! travels to the download host.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{LOCATION, RANGE};
use reqwest::StatusCode;

use super::{BoxTarget, Failure, DEFAULT_NOT_READY_WAIT};
use crate::remote::http::{ranged_body, Attempt, Exchange};
use crate::remote::{RemoteFile, Result, TargetError};

/// How long a download link is used after Box handed it out: 10 minutes, well inside
/// the 15 Box documents (and the emulator enforces), so a read that starts near the end
/// of its life still finishes before it expires.
const LINK_TTL: Duration = Duration::from_secs(10 * 60);

/// Links kept before expired ones are swept out (one per file version read recently).
const SWEEP_ABOVE: usize = 256;

/// Download links by file version, with the instant they stop being used. `Debug` shows
/// how many there are, never a link (each carries a signature).
#[derive(Default)]
pub(super) struct Links {
    map: Mutex<HashMap<String, (String, Instant)>>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("cached", &self.lock().len())
            .finish()
    }
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &str) -> Option<String> {
        let map = self.lock();
        let (link, until) = map.get(key)?;
        (Instant::now() < *until).then(|| link.clone())
    }

    fn put(&self, key: String, link: String) {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= SWEEP_ABOVE {
            map.retain(|_, (_, until)| now < *until);
        }
        map.insert(key, (link, now + LINK_TTL));
    }

    /// Drop `key`'s link, unless another read replaced it with a fresh one meanwhile.
    fn forget(&self, key: &str, link: &str) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|(l, _)| l == link) {
            map.remove(key);
        }
    }
}

/// The version of `file` a link is kept for: a new version gets a new link.
fn link_key(file: &RemoteFile) -> String {
    match &file.sha1 {
        Some(sha1) => format!("{}#{sha1}", file.id),
        None => format!("{}#{}@{}", file.id, file.size, file.mtime_ms),
    }
}

/// Answers of the download host that mean the link is no good any more (Box's expired
/// links are refused; a link of a replaced version may be gone).
fn link_refused(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::GONE
    )
}

/// What `GET /files/{id}/content` gave.
enum Content {
    /// The signed link (a 3xx answer's `Location`).
    Link(String),
    /// The bytes themselves: the server answered without a redirect.
    Data(Bytes),
}

impl BoxTarget {
    /// A ranged read as the server answered it ([`crate::remote::http::check_read`] checks
    /// it): from the kept link of this version when there is one, else from a fresh link.
    pub(super) async fn read_unchecked(
        &self,
        file: &RemoteFile,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        if len == 0 || (file.size > 0 && offset >= file.size) {
            return Ok(Bytes::new());
        }
        let what = super::read_what(file);
        let key = link_key(file);
        if let Some(link) = self.links.get(&key) {
            match self
                .http
                .get_range(&what, &link, offset, len, false)
                .await?
            {
                Ok(data) => return Ok(data),
                Err(r) if link_refused(r.status) => {
                    tracing::debug!(name = %file.name, status = %r.status, "download link refused, asking for a fresh one");
                    self.links.forget(&key, &link);
                }
                Err(r) => return Err(Failure::from_body(r.status, &r.body).into_error(&what)),
            }
        }
        let link = match self.content(file, &what, offset, len).await? {
            Content::Data(data) => return Ok(data),
            Content::Link(link) => link,
        };
        self.links.put(key.clone(), link.clone());
        match self
            .http
            .get_range(&what, &link, offset, len, false)
            .await?
        {
            Ok(data) => Ok(data),
            Err(r) => {
                self.links.forget(&key, &link);
                Err(Failure::from_body(r.status, &r.body).into_error(&what))
            }
        }
    }

    /// `GET /files/{id}/content` (with the range, for a server that answers the bytes
    /// directly), its redirect not followed; a 202 ("not ready yet") waits its
    /// `Retry-After` and asks again.
    async fn content(
        &self,
        file: &RemoteFile,
        what: &str,
        offset: u64,
        len: u64,
    ) -> Result<Content> {
        let url = format!("{}/files/{}/content", self.api, file.id);
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        self.http
            .retry(what, || async {
                let rb = self
                    .http
                    .auth(self.http.get_unfollowed(&url))
                    .header(RANGE, range.as_str());
                let reply = match self.http.exchange(rb).await {
                    Exchange::Answer(r) => r,
                    Exchange::Lost(reason) => return Attempt::again(reason),
                    Exchange::Fatal(e) => return Attempt::Fail(e),
                };
                if reply.status.is_redirection() {
                    return match reply
                        .headers
                        .get(LOCATION)
                        .and_then(|l| l.to_str().ok())
                        .and_then(|l| reqwest::Url::parse(&url).ok()?.join(l).ok())
                    {
                        Some(link) => Attempt::Done(Content::Link(link.to_string())),
                        None => Attempt::Fail(TargetError::protocol(format!(
                            "{what}: the server answered {} without a usable Location",
                            reply.status
                        ))),
                    };
                }
                if reply.status == StatusCode::ACCEPTED {
                    let after = crate::remote::http::retry_after(&reply.headers);
                    return Attempt::Retry {
                        after: Some(after.unwrap_or(DEFAULT_NOT_READY_WAIT)),
                        reason: "the file is not ready for download yet (202)".to_string(),
                    };
                }
                if let Some(busy) = reply.busy() {
                    return busy;
                }
                match ranged_body(what, &reply, offset, len) {
                    Some(Ok(b)) => Attempt::Done(Content::Data(b)),
                    Some(Err(e)) => Attempt::Fail(e),
                    None => Attempt::Fail(
                        Failure::from_body(reply.status, &reply.body).into_error(what),
                    ),
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: &str, sha1: Option<&str>) -> RemoteFile {
        RemoteFile {
            id: id.into(),
            name: "a.bin".into(),
            size: 10,
            mtime_ms: 5,
            is_dir: false,
            sha1: sha1.map(str::to_string),
            md5: None,
            url: None,
            extra: None,
        }
    }

    #[test]
    fn links_are_kept_per_version_and_hidden_from_debug() {
        let links = Links::default();
        let v1 = link_key(&file("7", Some("aa")));
        let v2 = link_key(&file("7", Some("bb")));
        assert_ne!(v1, v2, "a new version has a key of its own");
        assert_eq!(link_key(&file("7", None)), "7#10@5");
        links.put(v1.clone(), "https://dl.example/secret-sig".into());
        assert_eq!(
            links.get(&v1).as_deref(),
            Some("https://dl.example/secret-sig")
        );
        assert_eq!(links.get(&v2), None);
        assert!(!format!("{links:?}").contains("secret"));
        // Forgetting an older link leaves a fresher one alone.
        links.forget(&v1, "https://dl.example/older");
        assert!(links.get(&v1).is_some());
        links.forget(&v1, "https://dl.example/secret-sig");
        assert_eq!(links.get(&v1), None);
    }
}
