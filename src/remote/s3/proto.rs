//! The S3 protocol steps, one function each: every request signed by rusty-s3 (a presigned
//! URL, so the payload is `UNSIGNED-PAYLOAD` and the body streams as it is), sent through the
//! shared [`HttpClient`] (retries of 5xx/429/`SlowDown`, `Retry-After`, TLS), and its answer
//! parsed by rusty-s3 or, for the actions rusty-s3 lacks (CopyObject, UploadPartCopy,
//! ListMultipartUploads, error documents), by quick-xml's serde reader ([`super::wire`]).
//!
//! Each step is a whole request with its retries and nothing more, so an upload driver can
//! put them together as it likes: [`S3Client::create_multipart`] →
//! [`S3Client::upload_part`]… → [`S3Client::complete_multipart`], or
//! [`S3Client::abort_multipart`] on any failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use md5::Digest as _;
use reqwest::header::HeaderName;
use reqwest::{Method, StatusCode};
use rusty_s3::{Bucket, Credentials, Map, S3Action};

use super::wire::{
    check_copy_answer, copy_source, etag_can_be_md5, etag_md5, meta_from_headers, meta_headers,
    multipart_etag, parse_time, s3_error, unquote, xml_error, ErrorDoc, ListUploadsDoc, ObjectMeta,
};
use crate::remote::http::{retry_after, Attempt, Exchange, HttpClient, Reply, Request};
use crate::remote::{ErrorKind, Result, TargetError};

/// How long a signed URL stays valid: one attempt of one request (the HTTP layer's request
/// timeout is five minutes), with room for a slow clock.
const SIGNED_FOR: Duration = Duration::from_secs(3600);

/// Keys per ListObjectsV2 page (the protocol's maximum).
const LIST_PAGE: &str = "1000";

const CONTENT_MD5: HeaderName = HeaderName::from_static("content-md5");

/// The MD5 of a body, as `Content-MD5` sends it (base64) and a plain ETag shows it (hex).
#[derive(Debug, Clone)]
pub struct Md5Of {
    pub hex: String,
    pub b64: String,
}

impl Md5Of {
    pub fn bytes(data: &[u8]) -> Md5Of {
        let d = md5::Md5::digest(data);
        Md5Of {
            hex: hex::encode(d),
            b64: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, d),
        }
    }
}

/// `headers` (lowercase names from this module) on a request.
fn with_headers(mut r: Request, headers: &[(&'static str, String)]) -> Request {
    for (k, v) in headers {
        r = r.header(HeaderName::from_static(k), v.as_str());
    }
    r
}

/// An object as HeadObject or ListObjectsV2 describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// The ETag without quotes.
    pub etag: String,
    /// The object's MD5, when its ETag is one: a single-part object stored without
    /// KMS or customer-key encryption (whose ETags are not MD5s).
    pub md5: Option<String>,
    /// `Last-Modified`, ms since the epoch (0 when absent or unreadable).
    pub last_modified_ms: i64,
    /// The user metadata (HeadObject only; listings carry none).
    pub meta: ObjectMeta,
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    /// Common prefixes (sub-"directories"), each ending in the delimiter.
    pub prefixes: Vec<String>,
    /// Where the next page starts, when there is one.
    pub next: Option<String>,
}

/// How far the server's clock may lag ours when telling our own stray uploads from
/// another writer's (loopback and LAN clocks agree to well under this).
const CLOCK_SKEW_MS: i64 = 60_000;

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    /// When it was created, ms since the epoch (0 when the server does not say).
    pub initiated_ms: i64,
}

/// A part already stored for a multipart upload (ListParts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPart {
    pub number: u16,
    pub etag: String,
    pub size: u64,
}

/// One bucket, its keys and the HTTP client: every S3 request goes through here.
#[derive(Clone)]
pub struct S3Client {
    pub(super) http: HttpClient,
    bucket: Bucket,
    creds: Credentials,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Client")
            .field("http", &self.http)
            .field("bucket", &self.bucket.name())
            .field("region", &self.bucket.region())
            .finish_non_exhaustive()
    }
}

impl S3Client {
    pub fn new(http: HttpClient, bucket: Bucket, creds: Credentials) -> S3Client {
        S3Client {
            http,
            bucket,
            creds,
        }
    }

    /// The unsigned URL of `key` (for messages and tests).
    pub fn object_url(&self, key: &str) -> Result<url::Url> {
        self.bucket
            .object_url(key)
            .map_err(|e| TargetError::new(ErrorKind::InvalidName, format!("key {key:?}: {e}")))
    }

    /// Sign `action` with `headers` (lowercase names; also sent as they are) and build the
    /// request. Called once per attempt, so every retry carries a fresh signature.
    fn request<'a, A: S3Action<'a>>(
        &self,
        mut action: A,
        method: Method,
        headers: &'a [(&'static str, String)],
    ) -> Request {
        for (k, v) in headers {
            action.headers_mut().insert(*k, v.as_str());
        }
        let url = action.sign(SIGNED_FOR);
        with_headers(self.http.request(method, url), headers)
    }

    /// A request rusty-s3 has no action for, signed with its SigV4 signer: a bucket-level
    /// request with a query (sorted by the map) and signed headers.
    fn custom(
        &self,
        method: Method,
        query: &[(&str, &str)],
        headers: &[(&'static str, String)],
    ) -> Request {
        let mut q = Map::new();
        for (k, v) in query {
            q.insert(*k, *v);
        }
        let mut h = Map::new();
        for (k, v) in headers {
            h.insert(*k, v.as_str());
        }
        let rmethod = match method.as_str() {
            "PUT" => rusty_s3::Method::Put,
            "POST" => rusty_s3::Method::Post,
            "DELETE" => rusty_s3::Method::Delete,
            "HEAD" => rusty_s3::Method::Head,
            _ => rusty_s3::Method::Get,
        };
        let signed = rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            rmethod,
            self.bucket.base_url().clone(),
            self.creds.key(),
            self.creds.secret(),
            self.creds.token(),
            self.bucket.region(),
            SIGNED_FOR.as_secs(),
            q.iter(),
            h.iter(),
        );
        with_headers(self.http.request(method, signed), headers)
    }

    /// One attempt: send once and sort the answer out. 429 and 5xx (S3's `SlowDown`,
    /// `InternalError`) and lost requests are tried again, as is a refusal whose error
    /// code says the server is busy (`RequestTimeout`); any other non-2xx answer fails
    /// as an [`s3_error`].
    async fn once(&self, what: &str, r: Request) -> Attempt<Reply> {
        let reply = match self.http.exchange(r).await {
            Exchange::Answer(reply) => reply,
            Exchange::Lost(reason) => return Attempt::again(reason),
            Exchange::Fatal(e) => return Attempt::Fail(e),
        };
        if let Some(busy) = reply.busy() {
            return busy;
        }
        if reply.status.is_success() {
            return Attempt::Done(reply);
        }
        let e = s3_error(what, reply.status, &reply.body);
        if e.kind == ErrorKind::Unavailable {
            return Attempt::Retry {
                after: retry_after(&reply.headers),
                reason: e.message,
            };
        }
        Attempt::Fail(e)
    }

    /// Send a request built by `build` (again for each attempt) until it succeeds, fails,
    /// or the retry budget is spent ([`S3Client::once`]).
    async fn call<F>(&self, what: &str, build: F) -> Result<Reply>
    where
        F: Fn() -> Request,
    {
        self.http
            .retry(what, || async { self.once(what, build()).await })
            .await
    }

    /// CreateMultipartUpload with our metadata → the upload id.
    pub async fn create_multipart(&self, key: &str, meta: &ObjectMeta) -> Result<String> {
        let what = format!("start of the multipart upload of {key}");
        let headers = meta_headers(meta);
        let started_ms = jiff::Timestamp::now().as_millisecond();
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let created = self
            .call(&what, || {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let a = self.bucket.create_multipart_upload(Some(&self.creds), key);
                self.request(a, Method::POST, &headers)
            })
            .await
            .and_then(|reply| {
                rusty_s3::actions::CreateMultipartUpload::parse_response(&reply.body)
                    .map(|r| r.upload_id().to_string())
                    .map_err(|e| xml_error(&what, e, &reply.body))
            });
        // An attempt that was tried again may have created an upload whose answer was
        // lost: nobody knows its id, so nobody would ever complete or abort it.
        if attempts.load(std::sync::atomic::Ordering::Relaxed) > 1 {
            self.abort_strays(key, created.as_deref().ok(), started_ms)
                .await;
        }
        created
    }

    /// Abort the unfinished uploads of exactly `key`, other than `keep`, that were created
    /// since `since_ms` (less [`CLOCK_SKEW_MS`]): the strays of our own retried create.
    /// Best effort; an upload another writer started earlier is left alone.
    async fn abort_strays(&self, key: &str, keep: Option<&str>, since_ms: i64) {
        let Ok(pending) = self.list_multipart_uploads(key).await else {
            return;
        };
        for p in pending {
            let ours = p.initiated_ms == 0 || p.initiated_ms >= since_ms - CLOCK_SKEW_MS;
            if p.key == key && Some(p.upload_id.as_str()) != keep && ours {
                tracing::debug!(key, upload = %p.upload_id, "aborting an upload whose creation answer was lost");
                let _ = self.abort_multipart(key, &p.upload_id).await;
            }
        }
    }

    /// UploadPart `number` (1-based) → its ETag, with retries ([`S3Client::part_attempt`]).
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        body: Bytes,
    ) -> Result<String> {
        let what = format!("part {number} of {key}");
        let md5 = Md5Of::bytes(&body);
        self.http
            .retry(&what, || {
                self.part_attempt(key, upload_id, number, &body, &md5)
            })
            .await
    }

    /// One attempt at UploadPart `number` (1-based) → its ETag. The body's MD5 goes along
    /// as `Content-MD5`, so the server refuses a part damaged on the way, and a plain-MD5
    /// ETag is checked too.
    pub async fn part_attempt(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        body: &Bytes,
        md5: &Md5Of,
    ) -> Attempt<String> {
        let what = format!("part {number} of {key}");
        let a = self
            .bucket
            .upload_part(Some(&self.creds), key, number, upload_id);
        let r = self
            .request(a, Method::PUT, &[])
            .header(CONTENT_MD5, md5.b64.as_str())
            .body(body.clone());
        let reply = match self.once(&what, r).await {
            Attempt::Done(reply) => reply,
            Attempt::Retry { after, reason } => return Attempt::Retry { after, reason },
            Attempt::Fail(e) => return Attempt::Fail(e),
        };
        let Some(etag) = reply
            .headers
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(unquote)
        else {
            return Attempt::Fail(TargetError::protocol(format!(
                "{what}: the answer has no ETag"
            )));
        };
        if let Some(m) = etag_md5(&etag).filter(|_| etag_can_be_md5(&reply.headers)) {
            if m != md5.hex {
                return Attempt::Fail(TargetError::protocol(format!(
                    "{what}: the server's ETag {m} is not the MD5 of the part sent"
                )));
            }
        }
        Attempt::Done(etag)
    }

    /// CompleteMultipartUpload with the parts' ETags in order (part `i + 1` is `etags[i]`)
    /// → the object's ETag. The answer can be 200 with an error document: an `InternalError`
    /// or `SlowDown` there is retried (completing again with the same parts is harmless),
    /// any other code fails. When an attempt's answer was lost and the next one finds no
    /// such upload, the lost one completed it: the object's ETag, compared with the one the
    /// parts make (`md5(part MD5s)-N`), says so.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<String> {
        self.complete_multipart_if(key, upload_id, etags, None)
            .await
    }

    /// [`Self::complete_multipart`] with `If-Match: "<etag>"`: the object is replaced only
    /// if it still has that ETag, else `ErrorKind::Changed`.
    pub async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
        if_match: Option<&str>,
    ) -> Result<String> {
        let what = format!("completion of the multipart upload of {key}");
        let action = || {
            self.bucket.complete_multipart_upload(
                Some(&self.creds),
                key,
                upload_id,
                etags.iter().map(String::as_str),
            )
        };
        let xml = action().body();
        let lost = AtomicBool::new(false);
        let done = self
            .http
            .retry(&what, || async {
                let mut r = self
                    .http
                    .request(Method::POST, action().sign(SIGNED_FOR))
                    .body(xml.clone());
                if let Some(e) = if_match {
                    r = r.header(reqwest::header::IF_MATCH, quoted(e));
                }
                let reply = match self.http.exchange(r).await {
                    Exchange::Answer(reply) => reply,
                    Exchange::Lost(reason) => {
                        lost.store(true, Ordering::Relaxed);
                        return Attempt::again(reason);
                    }
                    Exchange::Fatal(e) => return Attempt::Fail(e),
                };
                let status = reply.status;
                let body = &reply.body;
                let err = if status.is_success() {
                    match quick_xml::de::from_reader::<_, ErrorDoc>(&body[..]) {
                        Ok(ErrorDoc {
                            code: None,
                            etag: Some(etag),
                            ..
                        }) => return Attempt::Done(Ok(unquote(&etag))),
                        Ok(ErrorDoc { code: Some(_), .. }) => s3_error(&what, status, body),
                        Ok(_) => {
                            return Attempt::Fail(xml_error(&what, "no ETag", body));
                        }
                        Err(e) => return Attempt::Fail(xml_error(&what, e, body)),
                    }
                } else {
                    s3_error(&what, status, body)
                };
                if err.kind == ErrorKind::Unavailable || status == StatusCode::TOO_MANY_REQUESTS {
                    return Attempt::Retry {
                        after: retry_after(&reply.headers),
                        reason: err.message,
                    };
                }
                if err.kind == ErrorKind::NotFound && lost.load(Ordering::Relaxed) {
                    return Attempt::Done(Err(err));
                }
                Attempt::Fail(changed_if(if_match, err))
            })
            .await?;
        let gone = match done {
            Ok(etag) => return Ok(etag),
            Err(gone) => gone,
        };
        // Completed by the attempt whose answer was lost, or really gone?
        let want = multipart_etag(etags);
        match self.head_object(key).await? {
            Some(info) if want.as_deref() == Some(info.etag.as_str()) => Ok(info.etag),
            _ => Err(gone),
        }
    }

    /// AbortMultipartUpload: frees the stored parts. An upload already gone is fine.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        let what = format!("abort of the multipart upload of {key}");
        match self
            .call(&what, || {
                let a = self
                    .bucket
                    .abort_multipart_upload(Some(&self.creds), key, upload_id);
                self.request(a, Method::DELETE, &[])
            })
            .await
        {
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// PutObject of a whole (small) object with our metadata → its ETag, checked against
    /// the MD5 of what was sent.
    pub async fn put_object(&self, key: &str, meta: &ObjectMeta, body: Bytes) -> Result<String> {
        self.put_object_if(key, meta, body, None).await
    }

    /// [`Self::put_object`] with `If-Match: "<etag>"` (signed): the object is replaced
    /// only if it still has that ETag, else `ErrorKind::Changed`.
    pub async fn put_object_if(
        &self,
        key: &str,
        meta: &ObjectMeta,
        body: Bytes,
        if_match: Option<&str>,
    ) -> Result<String> {
        let what = format!("upload of {key}");
        let md5 = Md5Of::bytes(&body);
        let mut headers = meta_headers(meta);
        if let Some(e) = if_match {
            headers.push(("if-match", quoted(e)));
        }
        let reply = self
            .call(&what, || {
                let a = self.bucket.put_object(Some(&self.creds), key);
                self.request(a, Method::PUT, &headers)
                    .header(CONTENT_MD5, md5.b64.as_str())
                    .body(body.clone())
            })
            .await
            .map_err(|e| changed_if(if_match, e))?;
        let etag = reply
            .headers
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(unquote)
            .unwrap_or_default();
        if let Some(m) = etag_md5(&etag).filter(|_| etag_can_be_md5(&reply.headers)) {
            if m != md5.hex {
                return Err(TargetError::protocol(format!(
                    "{what}: the server's ETag {m} is not the MD5 of the data sent"
                )));
            }
        }
        Ok(etag)
    }

    /// ListParts: every part stored so far for an upload (all pages).
    pub async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<StoredPart>> {
        let what = format!("list of the stored parts of {key}");
        let mut out = Vec::new();
        let mut marker: Option<u16> = None;
        loop {
            let reply = self
                .call(&what, || {
                    let mut a = self.bucket.list_parts(Some(&self.creds), key, upload_id);
                    if let Some(m) = marker {
                        a.set_part_number_marker(m);
                    }
                    self.request(a, Method::GET, &[])
                })
                .await?;
            let body = &reply.body;
            let r = rusty_s3::actions::ListParts::parse_response(body)
                .map_err(|e| xml_error(&what, e, body))?;
            out.extend(r.parts.iter().map(|p| StoredPart {
                number: p.number,
                etag: unquote(&p.etag),
                size: p.size,
            }));
            match r.next_part_number_marker {
                Some(m) if Some(m) != marker && !r.parts.is_empty() => marker = Some(m),
                _ => break,
            }
        }
        Ok(out)
    }

    /// ListMultipartUploads: the uploads started below `prefix` and not finished (all pages).
    pub async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let what = format!("list of the unfinished uploads below {prefix:?}");
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let reply = self
                .call(&what, || {
                    let mut q = vec![("uploads", ""), ("prefix", prefix)];
                    if let Some((k, u)) = &markers {
                        q.push(("key-marker", k.as_str()));
                        q.push(("upload-id-marker", u.as_str()));
                    }
                    self.custom(Method::GET, &q, &[])
                })
                .await?;
            let body = &reply.body;
            let doc: ListUploadsDoc =
                quick_xml::de::from_reader(&body[..]).map_err(|e| xml_error(&what, e, body))?;
            out.extend(doc.uploads.into_iter().map(|u| PendingUpload {
                key: u.key,
                upload_id: u.upload_id,
                initiated_ms: u.initiated.as_deref().map_or(0, parse_time),
            }));
            let truncated = doc.is_truncated.as_deref() == Some("true");
            match (truncated, doc.next_key_marker, doc.next_upload_id_marker) {
                (true, Some(k), Some(u)) if markers.as_ref() != Some(&(k.clone(), u.clone())) => {
                    markers = Some((k, u))
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// HeadObject → size, ETag, metadata; `None` when there is no such key.
    pub async fn head_object(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let what = format!("metadata of {key}");
        let reply = match self
            .call(&what, || {
                let a = self.bucket.head_object(Some(&self.creds), key);
                self.request(a, Method::HEAD, &[])
            })
            .await
        {
            Ok(reply) => reply,
            // A HEAD answer has no body: a 404 is all it says.
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let h = &reply.headers;
        let get = |k: HeaderName| h.get(k).and_then(|v| v.to_str().ok());
        let etag = get(reqwest::header::ETAG).map(unquote).unwrap_or_default();
        Ok(Some(ObjectInfo {
            key: key.to_string(),
            size: get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            md5: etag_md5(&etag).filter(|_| etag_can_be_md5(h)),
            etag,
            last_modified_ms: get(reqwest::header::LAST_MODIFIED)
                .map(parse_time)
                .unwrap_or(0),
            meta: meta_from_headers(h),
        }))
    }

    /// GetObject of `len` bytes at `offset` (`Range: bytes=a-b`), cut to the range
    /// ([`HttpClient::get_range`]: a server that ignores the range sends the whole object).
    pub async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let what = format!("read of {key} at {offset}");
        // Signed once: the URL stays valid far longer than the retry budget.
        let url = self
            .bucket
            .get_object(Some(&self.creds), key)
            .sign(SIGNED_FOR);
        match self
            .http
            .get_range(&what, url.as_str(), offset, len, false)
            .await?
        {
            Ok(data) => Ok(data),
            Err(reply) => Err(s3_error(&what, reply.status, &reply.body)),
        }
    }

    /// One page of ListObjectsV2 below `prefix`, grouped by `delimiter` when given.
    pub async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
    ) -> Result<ListPage> {
        let what = format!("listing of {prefix:?}");
        let reply = self
            .call(&what, || {
                let mut a = self.bucket.list_objects_v2(Some(&self.creds));
                // Keys come back as XML text, not URL-encoded: rusty-s3 asks for
                // `encoding-type=url` but does not decode what it gets.
                a.query_mut().remove("encoding-type");
                a.query_mut().insert("max-keys", LIST_PAGE);
                a.with_prefix(prefix);
                if let Some(d) = delimiter {
                    a.with_delimiter(d);
                }
                if let Some(t) = token {
                    a.with_continuation_token(t);
                }
                self.request(a, Method::GET, &[])
            })
            .await?;
        let body = &reply.body;
        let r = rusty_s3::actions::ListObjectsV2::parse_response(body)
            .map_err(|e| xml_error(&what, e, body))?;
        Ok(ListPage {
            objects: r
                .contents
                .into_iter()
                .map(|c| ObjectInfo {
                    key: c.key,
                    size: c.size,
                    // A listing does not say how an object is encrypted: HeadObject does.
                    md5: None,
                    etag: unquote(&c.etag),
                    last_modified_ms: parse_time(&c.last_modified),
                    meta: ObjectMeta::default(),
                })
                .collect(),
            prefixes: r.common_prefixes.into_iter().map(|p| p.prefix).collect(),
            next: r.next_continuation_token.filter(|t| !t.is_empty()),
        })
    }

    /// CopyObject `src` → `dst` (up to 5 GiB), metadata copied along. The answer can be 200
    /// with an error document: checked.
    pub async fn copy_object(&self, src: &str, dst: &str) -> Result<()> {
        let what = format!("copy of {src} to {dst}");
        let headers = [("x-amz-copy-source", copy_source(self.bucket.name(), src))];
        let reply = self
            .call(&what, || {
                let a = self.bucket.put_object(Some(&self.creds), dst);
                self.request(a, Method::PUT, &headers)
            })
            .await?;
        check_copy_answer(&what, &reply.body).map(|_| ())
    }

    /// UploadPartCopy: part `number` of upload `upload_id` of `dst` is bytes
    /// `first..=last` of `src` → its ETag (for copies above CopyObject's 5 GiB).
    pub async fn upload_part_copy(
        &self,
        dst: &str,
        upload_id: &str,
        number: u16,
        src: &str,
        first: u64,
        last: u64,
    ) -> Result<String> {
        let what = format!("copy of part {number} of {src} to {dst}");
        let headers = [
            ("x-amz-copy-source", copy_source(self.bucket.name(), src)),
            ("x-amz-copy-source-range", format!("bytes={first}-{last}")),
        ];
        let reply = self
            .call(&what, || {
                let a = self
                    .bucket
                    .upload_part(Some(&self.creds), dst, number, upload_id);
                self.request(a, Method::PUT, &headers)
            })
            .await?;
        check_copy_answer(&what, &reply.body)
    }

    /// DeleteObject (a missing key is no error in S3).
    pub async fn delete_object(&self, key: &str) -> Result<()> {
        let what = format!("delete of {key}");
        self.call(&what, || {
            let a = self.bucket.delete_object(Some(&self.creds), key);
            self.request(a, Method::DELETE, &[])
        })
        .await
        .map(|_| ())
    }

    /// Whether any object's key starts with `prefix` (one listing of at most one key).
    pub async fn any_below(&self, prefix: &str) -> Result<bool> {
        let what = format!("listing of {prefix:?}");
        let reply = self
            .call(&what, || {
                let mut a = self.bucket.list_objects_v2(Some(&self.creds));
                a.query_mut().remove("encoding-type");
                a.query_mut().insert("max-keys", "1");
                a.with_prefix(prefix);
                self.request(a, Method::GET, &[])
            })
            .await?;
        let body = &reply.body;
        let r = rusty_s3::actions::ListObjectsV2::parse_response(body)
            .map_err(|e| xml_error(&what, e, body))?;
        Ok(!r.contents.is_empty())
    }

    /// HeadBucket-like check of the keys: one listing of at most one key.
    pub async fn probe(&self) -> Result<()> {
        let what = format!("listing of bucket {}", self.bucket.name());
        self.call(&what, || {
            let mut a = self.bucket.list_objects_v2(Some(&self.creds));
            a.query_mut().remove("encoding-type");
            a.query_mut().insert("max-keys", "1");
            self.request(a, Method::GET, &[])
        })
        .await
        .map(|_| ())
    }
}

/// An ETag as `If-Match` names it: quoted.
fn quoted(etag: &str) -> String {
    format!("\"{}\"", etag.trim_matches('"'))
}

/// A refusal of a request made with `If-Match`: a failed precondition means the object
/// changed (`ErrorKind::Changed`); any other error stays what it is.
fn changed_if(if_match: Option<&str>, e: TargetError) -> TargetError {
    if if_match.is_some() && e.kind == ErrorKind::Conflict {
        TargetError::new(ErrorKind::Changed, e.message)
    } else {
        e
    }
}
