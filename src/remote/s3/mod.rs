//! S3-compatible object storage (AWS S3, MinIO, SeaweedFS, Ceph RGW, Garage, R2) as a
//! target: keys below the configured `prefix` are the files, `/` in keys makes folders.
//!
//! Library: rusty-s3 (0.8, sans-IO). It signs requests with SigV4 (as presigned URLs, so
//! bodies stream as they are with `UNSIGNED-PAYLOAD`; each part carries `Content-MD5`
//! instead) and parses the XML answers of the actions it has, with quick-xml's serde reader,
//! which we use for the few answers it lacks (ListMultipartUploads, CopyObject, error
//! documents). The wire is the project's one reqwest client ([`super::http`]): the same
//! retries, `Retry-After`, TLS and certificate handling as every other target, and no
//! second HTTP stack. aws-sdk-s3 was weighed and not taken: its smithy runtime and second
//! HTTP/TLS stack add minutes to a clean build on two cores and megabytes to the binary, and
//! it would bring its own retry policy next to ours; rusty-s3 adds a handful of small crates
//! (quick-xml, hmac, sha2, jiff) that share the digest crates we already build. rusty-s3 0.8
//! is the newest line that builds with our minimum Rust version; CopyObject, UploadPartCopy
//! and ListMultipartUploads are signed with its signer ([`rusty_s3::signing::sign`]), extra
//! headers (`x-amz-meta-*`, `x-amz-copy-source`) as signed headers.
//!
//! Ids: a file's id is its full key, a folder's the prefix ending in `/`; `None` is the
//! configured prefix. As with Cloudreve, whose ids are paths too, renaming a folder changes
//! the ids of everything below it.
//!
//! Folders: a listing with delimiter `/` gives files and common prefixes (folders). `mkdir`
//! writes a zero-byte `dir/` marker (as rclone and s3fs do); a prefix without a marker is a
//! folder all the same. Rename is CopyObject (UploadPartCopy above 5 GiB) + DeleteObject, for
//! a folder once per key below it, the marker last.
//!
//! Metadata: the mtime goes up as `x-amz-meta-mtime` in rclone's fractional seconds and the
//! mode as `x-amz-meta-mode` (decimal `st_mode`, as s3fs writes it); both rclone's and
//! s3fs's integer form are read back. Listings carry no metadata, so a listing asks
//! HeadObject of each file, a bounded number at once.
//!
//! Upload (`upload.rs`): below one part a single PutObject; otherwise a multipart upload
//! as protocol steps of the part-session seam ([`super::session`]): parts growing with
//! their index ([`PLAN`]), sent from the first full one on even before the final size is
//! known, aborted on any failure or when dropped unfinished, resumed from ListParts after
//! a crash. The requests themselves are the functions of [`proto::S3Client`].

pub mod proto;
mod upload;
pub mod wire;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::http::{check_read, HttpClient};
use super::session::PartPlan;
use super::{
    check_plain_name, Capabilities, DirRef, ErrorKind, RemoteFile, Result, Target, TargetError,
    UploadRequest,
};
use crate::config::TargetConfig;
pub use proto::{ObjectInfo, PendingUpload, S3Client, StoredPart};
pub use wire::ObjectMeta;

/// The first parts' size: 8 MiB, above S3's 5 MiB minimum for all parts but the last.
pub const PART_SIZE: u64 = 8 * 1024 * 1024;
/// Parts per size step: every this many parts the part size doubles, so 10,000 parts
/// reach past S3's 5 TiB object limit (8 MiB × 1000 × (2¹⁰ − 1) ≈ 8 TiB).
const PARTS_PER_STEP: u64 = 1000;
/// S3's limit on parts per upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's largest part.
const MAX_PART: u64 = 5 << 30;
/// How uploads are cut into parts.
pub const PLAN: PartPlan = PartPlan::growing(PART_SIZE, PARTS_PER_STEP, MAX_PART, MAX_PARTS);
/// S3's largest object.
pub const MAX_OBJECT: u64 = 5 << 40;
/// Parts sent at once by one upload (memory is bounded by the budget as well).
const PARTS_IN_FLIGHT: usize = 4;
/// HeadObject requests at once while listing.
const HEADS_IN_FLIGHT: usize = 16;

/// Objects whose HeadObject answer is remembered: a few hundred bytes each, so a
/// directory of 20,000 files listed again costs no request per file and a few MiB.
const HEADS_CACHED: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(20_000) {
    Some(n) => n,
    None => unreachable!(),
};
/// Copies (and deletes) at once in a folder rename.
const COPIES_IN_FLIGHT: usize = 8;
/// CopyObject's limit; larger objects are copied in parts.
pub const COPY_LIMIT: u64 = 5 << 30;
/// Part size of a copy in parts: 10,000 of them reach 5 TiB.
const COPY_PART: u64 = 512 << 20;
/// S3's longest key, in bytes.
const MAX_KEY_BYTES: usize = 1024;
/// `x-amz-meta-mode` of the files we write: a regular file, 0644 (modes are not carried yet).
const FILE_MODE: u32 = libc::S_IFREG | 0o644;
/// `x-amz-meta-mode` of the folder markers we write: a directory, 0755.
const DIR_MODE: u32 = libc::S_IFDIR | 0o755;

/// An S3 bucket (below a prefix) as a target.
#[derive(Debug)]
pub struct S3Target {
    client: S3Client,
    /// The configured prefix: empty or ending in `/`.
    root: String,
    copy_limit: u64,
    copy_part: u64,
    /// What HeadObject said of objects already listed, by key, ETag and Last-Modified
    /// (any rewrite of a key changes its Last-Modified): a listing asks only about
    /// objects it has not seen, so a warm `ls -l` costs the listing alone.
    heads: std::sync::Mutex<lru::LruCache<(String, String, i64), RemoteFile>>,
}

impl S3Target {
    pub fn new(http: HttpClient, cfg: &TargetConfig) -> anyhow::Result<S3Target> {
        let s3 = cfg
            .s3
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("target is not configured as kind = \"s3\""))?;
        let endpoint = url::Url::parse(&s3.endpoint)?;
        let style = if s3.path_style {
            rusty_s3::UrlStyle::Path
        } else {
            rusty_s3::UrlStyle::VirtualHost
        };
        let bucket = rusty_s3::Bucket::new(endpoint, style, s3.bucket.clone(), s3.region.clone())
            .map_err(|e| {
            anyhow::anyhow!(
                "bucket {} at {}: {e} (an IP address or a server without \
                         bucket host names needs `path_style = true`)",
                s3.bucket,
                s3.endpoint
            )
        })?;
        let creds = match &s3.session_token {
            Some(t) => rusty_s3::Credentials::new_with_token(
                s3.access_key_id.clone(),
                s3.secret_access_key.expose(),
                t.expose(),
            ),
            None => {
                rusty_s3::Credentials::new(s3.access_key_id.clone(), s3.secret_access_key.expose())
            }
        };
        Ok(S3Target {
            client: S3Client::new(http, bucket, creds),
            root: s3.prefix.clone(),
            copy_limit: COPY_LIMIT,
            copy_part: COPY_PART,
            heads: std::sync::Mutex::new(lru::LruCache::new(HEADS_CACHED)),
        })
    }

    /// Copy objects above `limit` bytes in parts of `part` bytes (S3: 5 GiB and more than
    /// 5 MiB); lower values let tests and servers with smaller limits use UploadPartCopy.
    pub fn with_copy_limits(mut self, limit: u64, part: u64) -> S3Target {
        self.copy_limit = limit;
        self.copy_part = part.max(5 << 20);
        self
    }

    fn heads_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, lru::LruCache<(String, String, i64), RemoteFile>> {
        self.heads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The protocol steps, for callers that drive an upload themselves and for checks.
    pub fn client(&self) -> &S3Client {
        &self.client
    }

    /// The key prefix of a folder (ending in `/`, or empty for the bucket's root).
    fn dir_prefix(&self, dir: &DirRef) -> String {
        match dir {
            None => self.root.clone(),
            Some(p) if p.is_empty() || p.ends_with('/') => p.clone(),
            Some(p) => format!("{p}/"),
        }
    }

    /// The key of `name` in `dir`, refused when S3 would refuse it.
    fn key(&self, dir: &DirRef, name: &str, folder: bool) -> Result<String> {
        self.check_name(name)?;
        let key = format!(
            "{}{name}{}",
            self.dir_prefix(dir),
            if folder { "/" } else { "" }
        );
        if key.len() > MAX_KEY_BYTES {
            return Err(TargetError::new(
                ErrorKind::InvalidName,
                format!("{name:?}: S3 refuses keys longer than 1024 bytes"),
            ));
        }
        Ok(key)
    }

    /// A file as we describe it, from what S3 said of its key.
    fn file_of(info: &ObjectInfo) -> RemoteFile {
        RemoteFile {
            id: info.key.clone(),
            name: last_name(&info.key).to_string(),
            size: info.size,
            mtime_ms: info.meta.mtime_ms.unwrap_or(info.last_modified_ms),
            is_dir: false,
            sha1: None,
            md5: info.md5.clone(),
            url: None,
            extra: None,
        }
    }

    fn dir_of(prefix: &str, mtime_ms: i64) -> RemoteFile {
        RemoteFile {
            id: prefix.to_string(),
            name: last_name(prefix).to_string(),
            size: 0,
            mtime_ms,
            is_dir: true,
            sha1: None,
            md5: None,
            url: None,
            extra: None,
        }
    }

    /// The file now at `key`, by HeadObject.
    async fn stat(&self, key: &str) -> Result<RemoteFile> {
        match self.client.head_object(key).await? {
            Some(info) => Ok(Self::file_of(&info)),
            None => Err(TargetError::new(
                ErrorKind::NotFound,
                format!("{key}: no such object after writing it"),
            )),
        }
    }

    /// Every object below `prefix` (all levels, all pages).
    async fn all_below(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_page(prefix, None, token.as_deref())
                .await?;
            out.extend(page.objects);
            match page.next {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// Copy one object: CopyObject, or UploadPartCopy in parts above the copy limit. A
    /// folder marker is written anew instead (with its metadata): some servers (SeaweedFS)
    /// keep `dir/` keys as folders of their own and refuse to copy them.
    async fn copy(&self, src: &str, dst: &str, size: u64) -> Result<()> {
        if src.ends_with('/') && size == 0 {
            let meta = match self.client.head_object(src).await? {
                Some(info) if info.meta != ObjectMeta::default() => info.meta,
                _ => ObjectMeta {
                    mtime_ms: Some(jiff::Timestamp::now().as_millisecond()),
                    mode: Some(DIR_MODE),
                },
            };
            return self
                .client
                .put_object(dst, &meta, Bytes::new())
                .await
                .map(|_| ());
        }
        if size <= self.copy_limit {
            return self.client.copy_object(src, dst).await;
        }
        let meta = self
            .client
            .head_object(src)
            .await?
            .map(|i| i.meta)
            .unwrap_or_default();
        let part = self.copy_part.max(size.div_ceil(MAX_PARTS));
        let upload_id = self.client.create_multipart(dst, &meta).await?;
        let id = upload_id.as_str();
        self.or_abort(dst, id, async {
            let mut etags: Vec<(u64, String)> = futures_util::stream::iter(0..size.div_ceil(part))
                .map(|i| async move {
                    let first = i * part;
                    let last = (first + part).min(size) - 1;
                    let number = u16::try_from(i + 1).unwrap_or(u16::MAX);
                    let etag = self
                        .client
                        .upload_part_copy(dst, id, number, src, first, last)
                        .await?;
                    Ok::<_, TargetError>((i, etag))
                })
                .buffer_unordered(PARTS_IN_FLIGHT)
                .try_collect()
                .await?;
            etags.sort_by_key(|(i, _)| *i);
            let etags: Vec<String> = etags.into_iter().map(|(_, e)| e).collect();
            self.client.complete_multipart(dst, id, &etags).await
        })
        .await
        .map(|_| ())
    }

    /// Rename a folder: copy every key below it to the new prefix (the marker last), then
    /// delete the old keys (files, then markers deepest first, its own marker last), so a
    /// failure half-way loses nothing.
    async fn rename_dir(&self, old: &str, new: &str) -> Result<()> {
        if new.starts_with(old) {
            return Err(TargetError::new(
                ErrorKind::InvalidName,
                format!("cannot move folder {old} into itself ({new})"),
            ));
        }
        let keys = self.all_below(old).await?;
        let marker = keys.iter().any(|o| o.key == old);
        let children: Vec<(String, u64)> = keys
            .into_iter()
            .filter(|o| o.key != old)
            .map(|o| (o.key, o.size))
            .collect();
        futures_util::stream::iter(children.clone())
            .map(|(key, size)| async move {
                let dst = format!("{new}{}", &key[old.len()..]);
                self.copy(&key, &dst, size).await
            })
            .buffer_unordered(COPIES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        if marker {
            self.copy(old, new, 0).await?;
        }
        // Files first, then the sub-folders' markers deepest first: a server that keeps
        // folders of its own (SeaweedFS) drops one only once it is empty.
        let (mut markers, files): (Vec<_>, Vec<_>) =
            children.into_iter().partition(|(k, _)| k.ends_with('/'));
        futures_util::stream::iter(files)
            .map(|(key, _)| async move { self.client.delete_object(&key).await })
            .buffer_unordered(COPIES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        markers.sort_by_key(|(k, _)| std::cmp::Reverse(k.matches('/').count()));
        for (key, _) in markers {
            self.client.delete_object(&key).await?;
        }
        if marker {
            self.client.delete_object(old).await?;
        }
        Ok(())
    }
}

/// A listing entry's name (the key below the listed prefix) can be a file name.
fn usable_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// The last component of a key or prefix (`a/b/` → `b`).
fn last_name(key: &str) -> &str {
    let k = key.strip_suffix('/').unwrap_or(key);
    k.rsplit('/').next().unwrap_or(k)
}

#[async_trait]
impl Target for S3Target {
    fn health(&self) -> Option<&std::sync::Arc<crate::remote::health::Health>> {
        Some(self.client.http.health())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: "s3",
            part_size: PART_SIZE,
            max_parallel_parts: PARTS_IN_FLIGHT,
            max_file_size: Some(MAX_OBJECT),
            range_reads: true,
            folders: true,
            rename: true,
            delete: true,
            needs_md5: false,
            wants_sha1: false,
            case_insensitive_names: false,
            replaces_in_place: true,
            early_start: true,
            size_later: true,
        }
    }

    async fn upload(&self, req: UploadRequest) -> Result<RemoteFile> {
        self.upload_file(&req).await
    }

    /// `stat`: one HeadObject of the key (a folder has no object: `Unsupported`, so the
    /// caller lists instead).
    async fn stat(&self, file: &RemoteFile) -> Result<Option<RemoteFile>> {
        if file.is_dir {
            return Err(TargetError::unsupported("a metadata request for a folder"));
        }
        Ok(self.client.head_object(&file.id).await?.map(|info| {
            let mut f = Self::file_of(&info);
            // The ETag names this version in a conditional write.
            f.extra = Some(info.etag.clone()).filter(|e| !e.is_empty());
            f
        }))
    }

    /// A conditional write: `If-Match` with the ETag [`Target::stat`] saw (SeaweedFS and
    /// AWS honour it on PutObject; CompleteMultipartUpload likewise where supported).
    async fn upload_unless_changed(
        &self,
        req: UploadRequest,
        expected: &RemoteFile,
    ) -> Result<RemoteFile> {
        self.upload_file_if(&req, expected.extra.as_deref()).await
    }

    async fn read_range(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes> {
        let len = len.min(file.size.saturating_sub(offset));
        if len == 0 {
            return Ok(Bytes::new());
        }
        let data = self.client.get_range(&file.id, offset, len).await?;
        check_read(&format!("read of {}", file.id), file, offset, len, data)
    }

    async fn list(&self, dir: &DirRef) -> Result<Vec<RemoteFile>> {
        let prefix = self.dir_prefix(dir);
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_page(&prefix, Some("/"), token.as_deref())
                .await?;
            // The folder's own marker is not one of its children, and a key no file
            // name can show (`a//b`, `a/./b`) is left out.
            let below = |k: &str| k.get(prefix.len()..).unwrap_or("").to_string();
            files.extend(
                page.objects
                    .into_iter()
                    .filter(|o| usable_name(&below(&o.key))),
            );
            dirs.extend(
                page.prefixes
                    .into_iter()
                    .filter(|p| usable_name(below(p).trim_end_matches('/'))),
            );
            match page.next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        let mut out: Vec<RemoteFile> = futures_util::stream::iter(files)
            .map(|o| async move {
                // The metadata (mtime) is only in HeadObject, asked once per version of
                // an object; an object gone since the listing is left out.
                let version = (o.key.clone(), o.etag.clone(), o.last_modified_ms);
                let known = self.heads_lock().get(&version).cloned();
                if let Some(f) = known {
                    return Ok(Some(f));
                }
                match self.client.head_object(&o.key).await? {
                    Some(info) => {
                        let f = Self::file_of(&info);
                        // Keyed by what the listing said, which HEAD agrees with unless
                        // the object changed in between (then the next listing asks again).
                        if info.etag == o.etag {
                            self.heads_lock().put(version, f.clone());
                        }
                        Ok(Some(f))
                    }
                    None => Ok::<_, TargetError>(None),
                }
            })
            .buffered(HEADS_IN_FLIGHT)
            .try_filter_map(|f| async move { Ok(f) })
            .try_collect()
            .await?;
        dirs.sort();
        dirs.dedup();
        // A common prefix with nothing below it is no folder: some servers (SeaweedFS, whose
        // folders are directories of its filer) keep listing a prefix after its last key,
        // marker included, was deleted or moved away.
        let dirs: Vec<String> = futures_util::stream::iter(dirs)
            .map(|p| async move {
                let live = self.client.any_below(&p).await?;
                Ok::<_, TargetError>(live.then_some(p))
            })
            .buffered(HEADS_IN_FLIGHT)
            .try_filter_map(|p| async move { Ok(p) })
            .try_collect()
            .await?;
        out.extend(dirs.iter().map(|p| Self::dir_of(p, 0)));
        Ok(out)
    }

    async fn delete(&self, file: &RemoteFile) -> Result<()> {
        // A folder is its marker; S3 answers a missing key with success, so a folder
        // without one needs nothing.
        self.client.delete_object(&file.id).await
    }

    async fn rename(
        &self,
        file: &RemoteFile,
        new_parent: &DirRef,
        new_name: &str,
    ) -> Result<RemoteFile> {
        let dst = self.key(new_parent, new_name, file.is_dir)?;
        if dst == file.id {
            return Ok(file.clone());
        }
        if file.is_dir {
            self.rename_dir(&file.id, &dst).await?;
            return Ok(Self::dir_of(&dst, file.mtime_ms));
        }
        self.copy(&file.id, &dst, file.size).await?;
        self.client.delete_object(&file.id).await?;
        self.stat(&dst).await
    }

    async fn mkdir(&self, parent: &DirRef, name: &str) -> Result<RemoteFile> {
        let key = self.key(parent, name, true)?;
        let now = jiff::Timestamp::now().as_millisecond();
        let meta = ObjectMeta {
            mtime_ms: Some(now),
            mode: Some(DIR_MODE),
        };
        self.client.put_object(&key, &meta, Bytes::new()).await?;
        Ok(Self::dir_of(&key, now))
    }

    fn check_name(&self, name: &str) -> Result<()> {
        check_plain_name(name, "S3 keys cannot hold this name")
    }

    async fn check(&self) -> Result<()> {
        self.client.probe().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_tile_the_object() {
        assert_eq!(PLAN.part_size(2), PART_SIZE);
        let size = 1000 * PART_SIZE + 3 * PART_SIZE + 5;
        let mut next = 0;
        for i in 0..PLAN.count(size) {
            assert_eq!(PLAN.offset(i), next);
            let len = PLAN.part_size(i).min(size - next);
            assert!(len > 0);
            next += len;
        }
        assert_eq!(next, size);
        assert_eq!(PLAN.count(size), 1002);
    }

    fn config(endpoint: &str, path_style: bool) -> TargetConfig {
        let mut c = TargetConfig::null();
        c.kind = crate::config::TargetKind::S3;
        c.s3 = Some(crate::config::S3Config {
            endpoint: endpoint.to_string(),
            region: "us-east-1".to_string(),
            bucket: "photos".to_string(),
            prefix: String::new(),
            path_style,
            access_key_id: "AKID".to_string(),
            secret_access_key: crate::config::Secret::new("s3-secret"),
            session_token: None,
        });
        c
    }

    #[test]
    fn addressing_styles() {
        let build = |endpoint: &str, path_style: bool| {
            let cfg = config(endpoint, path_style);
            S3Target::new(HttpClient::new("t", &cfg).unwrap(), &cfg)
        };
        let t = build("https://s3.eu-west-3.amazonaws.com", false).unwrap();
        let url = t.client.object_url("a b").unwrap();
        assert_eq!(
            url.as_str(),
            "https://photos.s3.eu-west-3.amazonaws.com/a%20b"
        );
        let t = build("http://127.0.0.1:9000", true).unwrap();
        let url = t.client.object_url("dir/x").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9000/photos/dir/x");
        // A bucket cannot be a host name below an IP address: the error says what to set.
        let err = build("http://127.0.0.1:9000", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("path_style = true"), "{err}");
        assert!(!format!("{t:?}").contains("s3-secret"));
    }

    #[test]
    fn names_of_keys() {
        assert_eq!(last_name("a/b/c.txt"), "c.txt");
        assert_eq!(last_name("a/b/"), "b");
        assert_eq!(last_name("top"), "top");
        assert!(usable_name("a.txt"));
        assert!(!usable_name(""));
        assert!(!usable_name(".."));
        assert!(!usable_name("a/b"));
    }
}
