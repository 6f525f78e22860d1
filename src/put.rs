//! `uploadfs put` and `uploadfs get`: one file up or down without FUSE, for scripts and as
//! the direct-client baseline of the benchmarks. A progress bar is drawn on a terminal.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha1::Digest as _;

use crate::cli::{GetArgs, PutArgs};
use crate::open::{open_target, OpenTarget};
use crate::remote::{
    ByteCounter, Digests, DirRef, ErrorKind, FileSource, RemoteFile, Target, TargetError,
    UploadRequest,
};

/// Size of one ranged GET of `uploadfs get`.
const GET_BLOCK: u64 = 8 * 1024 * 1024;
/// Ranged GETs in flight at once.
const GET_PARALLEL: usize = 4;

/// Split `TARGET[:PATH]`.
pub fn split_dest(dest: &str) -> (&str, Option<&str>) {
    match dest.split_once(':') {
        Some((t, p)) if !p.is_empty() => (t, Some(p.trim_start_matches('/'))),
        Some((t, _)) => (t, None),
        None => (dest, None),
    }
}

fn progress_bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

/// Find (and with `create`, make) the folder `dirs` below the root; flat targets only
/// have the root.
async fn resolve_dir(target: &dyn Target, dirs: &[&str], create: bool) -> anyhow::Result<DirRef> {
    let caps = target.capabilities();
    let mut cur: DirRef = None;
    if dirs.is_empty() {
        return Ok(cur);
    }
    if !caps.folders {
        bail!(
            "target kind {} has no folders; give a plain file name",
            caps.kind
        );
    }
    for d in dirs {
        let entries = target.list(&cur).await?;
        let found = entries
            .into_iter()
            .find(|e| e.is_dir && names_equal(&e.name, d, caps.case_insensitive_names));
        cur = Some(match found {
            Some(e) => e.id,
            None if create => target.mkdir(&cur, d).await?.id,
            None => bail!("no folder named {d}"),
        });
    }
    Ok(cur)
}

pub fn names_equal(a: &str, b: &str, case_insensitive: bool) -> bool {
    if case_insensitive {
        a.to_lowercase() == b.to_lowercase()
    } else {
        a == b
    }
}

/// Hash a local file (SHA-1 and MD5) in one pass.
fn digest_file(path: &Path) -> std::io::Result<Digests> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut sha1 = sha1::Sha1::new();
    let mut md5 = md5::Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha1.update(&buf[..n]);
        md5.update(&buf[..n]);
    }
    Ok(Digests {
        sha1: Some(hex::encode(sha1.finalize())),
        md5: Some(hex::encode(md5.finalize())),
    })
}

/// `uploadfs put FILE TARGET[:PATH]` (or `--recursive DIR TARGET[:PATH]`).
pub async fn put(args: &PutArgs) -> anyhow::Result<RemoteFile> {
    let (tname, _) = split_dest(&args.dest);
    let open = open_target(tname, args.config.as_deref(), args.insecure).await?;
    put_to(args, &open)
        .await
        .map_err(|e| with_token_hint(e, &open.config.token_source))
}

async fn put_to(args: &PutArgs, open: &OpenTarget) -> anyhow::Result<RemoteFile> {
    let (tname, path) = split_dest(&args.dest);
    let target = open.target.clone();
    if args.recursive {
        return put_tree(target, args, tname, path.unwrap_or("")).await;
    }
    let meta = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    if !meta.is_file() {
        bail!(
            "{} is not a regular file (use --recursive for a directory)",
            args.file.display()
        );
    }
    let local_name = args
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{} has no usable file name", args.file.display()))?;
    let (dirs, name): (Vec<&str>, &str) = match path {
        None => (vec![], local_name),
        Some(p) if p.ends_with('/') => {
            (p.split('/').filter(|s| !s.is_empty()).collect(), local_name)
        }
        Some(p) => {
            let mut parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            let name = parts.pop().unwrap_or(local_name);
            (parts, name)
        }
    };
    let caps = target.capabilities();
    let parent = resolve_dir(target.as_ref(), &dirs, true).await?;
    let existing = target
        .list(&parent)
        .await?
        .into_iter()
        .find(|e| !e.is_dir && names_equal(&e.name, name, caps.case_insensitive_names));
    let pb = progress_bar(meta.len(), args.quiet);
    pb.set_message(format!("put {name}"));
    let remote = upload_one(&target, parent, name, &args.file, existing, &pb)
        .await
        .map_err(|e| {
            anyhow!(
                "upload of {} to {tname}:{name} failed: {e:#}",
                args.file.display()
            )
        })?;
    pb.finish_and_clear();
    Ok(remote)
}

/// For a refused token, say where it comes from (the error chain holds the cause).
fn with_token_hint(e: anyhow::Error, token_source: &str) -> anyhow::Error {
    let refused = e.chain().any(|c| {
        c.downcast_ref::<TargetError>()
            .is_some_and(|t| t.kind == ErrorKind::Auth)
    });
    if refused && !token_source.is_empty() {
        anyhow!("{e:#} (the token comes from {token_source})")
    } else {
        e
    }
}

/// Upload one local file as `name` in `parent`, replacing `existing`.
async fn upload_one(
    target: &Arc<dyn Target>,
    parent: DirRef,
    name: &str,
    file: &Path,
    existing: Option<RemoteFile>,
    pb: &ProgressBar,
) -> anyhow::Result<RemoteFile> {
    let caps = target.capabilities();
    let meta = std::fs::metadata(file)?;
    let digests = {
        let p = file.to_path_buf();
        tokio::task::spawn_blocking(move || digest_file(&p)).await??
    };
    let counter = Arc::new(ByteCounter::default());
    // Several uploads may share one bar: each adds what it sent since its last tick.
    let ticker = {
        let (pb, counter) = (pb.clone(), counter.clone());
        tokio::spawn(async move {
            let mut shown = 0;
            loop {
                let now = counter.0.load(Ordering::Relaxed);
                pb.inc(now.saturating_sub(shown));
                shown = now;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mtime_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let req = UploadRequest {
        parent,
        name: name.to_string(),
        size: meta.len(),
        digests,
        mtime_ms,
        replaces: existing.clone(),
        resume_session: None,
        source: Arc::new(FileSource::open(file)?),
        observer: counter.clone(),
    };
    let result = target.upload(req).await;
    ticker.abort();
    let remote = result?;
    // Targets without versions: the new file is in; now the old one can go.
    if let Some(old) = existing {
        if !caps.replaces_in_place && old.id != remote.id && caps.delete {
            target.delete(&old).await?;
        }
    }
    Ok(remote)
}

/// `put --recursive`: mirror a local directory tree, `jobs` files at a time.
async fn put_tree(
    target: Arc<dyn Target>,
    args: &PutArgs,
    tname: &str,
    path: &str,
) -> anyhow::Result<RemoteFile> {
    let caps = target.capabilities();
    let base: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let root_dir = resolve_dir(target.as_ref(), &base, true).await?;
    // Walk the tree: (local path, remote parent, name).
    let mut jobs: Vec<(std::path::PathBuf, DirRef, String)> = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![(args.file.clone(), root_dir.clone())];
    while let Some((dir, remote_dir)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e
                .file_name()
                .into_string()
                .map_err(|n| anyhow!("{n:?} is not UTF-8"))?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                let sub = if caps.folders {
                    resolve_dir_from(target.as_ref(), remote_dir.clone(), &name).await?
                } else {
                    remote_dir.clone()
                };
                stack.push((e.path(), sub));
            } else if ft.is_file() {
                total += e.metadata()?.len();
                jobs.push((e.path(), remote_dir.clone(), name));
            }
        }
    }
    // Existing names per remote directory, listed once each.
    let mut existing: std::collections::HashMap<DirRef, Vec<RemoteFile>> = Default::default();
    for (_, d, _) in &jobs {
        if !existing.contains_key(d) {
            existing.insert(d.clone(), target.list(d).await?);
        }
    }
    let pb = progress_bar(total, args.quiet);
    pb.set_message(format!("put {} files", jobs.len()));
    let mut last = None;
    let mut results = futures_util::stream::iter(jobs.into_iter().map(|(file, dir, name)| {
        let old = existing.get(&dir).and_then(|v| {
            v.iter()
                .find(|e| !e.is_dir && names_equal(&e.name, &name, caps.case_insensitive_names))
                .cloned()
        });
        let (target, pb) = (target.clone(), pb.clone());
        async move {
            upload_one(&target, dir, &name, &file, old, &pb)
                .await
                .map_err(|e| {
                    anyhow!(
                        "upload of {} to {tname}:{name} failed: {e:#}",
                        file.display()
                    )
                })
        }
    }))
    .buffer_unordered(args.jobs.max(1));
    while let Some(r) = results.next().await {
        last = Some(r?);
    }
    pb.finish_and_clear();
    last.ok_or_else(|| anyhow!("{} holds no files", args.file.display()))
}

/// The folder `name` in `parent`, created when missing.
async fn resolve_dir_from(
    target: &dyn Target,
    parent: DirRef,
    name: &str,
) -> anyhow::Result<DirRef> {
    let caps = target.capabilities();
    let found = target
        .list(&parent)
        .await?
        .into_iter()
        .find(|e| e.is_dir && names_equal(&e.name, name, caps.case_insensitive_names));
    Ok(Some(match found {
        Some(e) => e.id,
        None => target.mkdir(&parent, name).await?.id,
    }))
}

/// Find a remote file by `PATH` (walking folders where the target has them).
pub async fn find_remote(target: &dyn Target, path: &str) -> anyhow::Result<RemoteFile> {
    let caps = target.capabilities();
    let mut parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let name = parts.pop().ok_or_else(|| anyhow!("empty path"))?;
    let dir = resolve_dir(target, &parts, false).await?;
    target
        .list(&dir)
        .await?
        .into_iter()
        .rfind(|e| !e.is_dir && names_equal(&e.name, name, caps.case_insensitive_names))
        .ok_or_else(|| anyhow!("no file named {path}"))
}

/// `uploadfs get TARGET:PATH [OUT]`.
pub async fn get(args: &GetArgs) -> anyhow::Result<u64> {
    let (tname, _) = split_dest(&args.src);
    let open = open_target(tname, args.config.as_deref(), args.insecure).await?;
    get_from(args, &open)
        .await
        .map_err(|e| with_token_hint(e, &open.config.token_source))
}

async fn get_from(args: &GetArgs, open: &OpenTarget) -> anyhow::Result<u64> {
    let (tname, path) = split_dest(&args.src);
    let path = path.ok_or_else(|| anyhow!("give the remote file as TARGET:PATH"))?;
    let target = open.target.clone();
    let remote = find_remote(target.as_ref(), path).await?;
    let mut out: Box<dyn Write + Send> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout()),
    };
    let pb = progress_bar(remote.size, args.quiet || args.out.is_none());
    pb.set_message(format!("get {}", remote.name));
    let blocks = remote.size.div_ceil(GET_BLOCK);
    let mut stream = futures_util::stream::iter(0..blocks)
        .map(|i| {
            let target = target.clone();
            let remote = remote.clone();
            async move {
                let off = i * GET_BLOCK;
                let len = GET_BLOCK.min(remote.size - off);
                target
                    .read_range(&remote, off, len)
                    .await
                    .map(|b| (off, len, b))
            }
        })
        .buffered(GET_PARALLEL);
    // The digest the target gives is checked like the mount checks a whole-file read, on a
    // thread of its own so hashing overlaps the download: the SHA-1, or for S3 the MD5 (a
    // single-part object's ETag).
    let verifier = match (&remote.sha1, &remote.md5) {
        (Some(h), _) => Some(Verifier::start(Algo::Sha1, h.clone())),
        (None, Some(h)) if open.config.kind == crate::config::TargetKind::S3 => {
            Some(Verifier::start(Algo::Md5, h.clone()))
        }
        _ => None,
    };
    let mut total = 0u64;
    while let Some(r) = stream.next().await {
        let (off, len, bytes) = r.map_err(|e| anyhow!("download of {tname}:{path} failed: {e}"))?;
        if bytes.len() as u64 != len {
            bail!(
                "download of {tname}:{path} failed: server sent {} bytes at offset {off}, expected {len}",
                bytes.len()
            );
        }
        out.write_all(&bytes)?;
        if let Some(v) = &verifier {
            v.feed(bytes);
        }
        total += len;
        pb.set_position(total);
    }
    out.flush()?;
    pb.finish_and_clear();
    if let Some(v) = verifier {
        let v_name = v.algo.name();
        let (want, got) = v.finish()?;
        if !want.eq_ignore_ascii_case(&got) {
            bail!(
                "download of {tname}:{path} is corrupt: its {} is {got}, the target says {want}{}",
                v_name,
                if args.out.is_some() {
                    "; the file written is not to be trusted"
                } else {
                    ""
                }
            );
        }
    }
    Ok(total)
}

/// The digest a download is checked with.
#[derive(Clone, Copy)]
enum Algo {
    Sha1,
    Md5,
}

impl Algo {
    fn name(self) -> &'static str {
        match self {
            Algo::Sha1 => "SHA-1",
            Algo::Md5 => "MD5",
        }
    }
}

/// Hashes downloaded blocks in order on its own thread.
struct Verifier {
    algo: Algo,
    want: String,
    tx: std::sync::mpsc::SyncSender<bytes::Bytes>,
    thread: std::thread::JoinHandle<String>,
}

impl Verifier {
    /// Blocks queued at most: bounds the memory held for hashing (blocks are GET_BLOCK).
    const QUEUE: usize = 4;

    fn start(algo: Algo, want: String) -> Verifier {
        let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(Self::QUEUE);
        let thread = std::thread::spawn(move || match algo {
            Algo::Sha1 => hash_all(sha1::Sha1::new(), rx),
            Algo::Md5 => hash_all(md5::Md5::new(), rx),
        });
        Verifier {
            algo,
            want,
            tx,
            thread,
        }
    }

    fn feed(&self, b: bytes::Bytes) {
        // A closed channel means the thread died; `finish` reports it.
        let _ = self.tx.send(b);
    }

    /// (expected, computed).
    fn finish(self) -> anyhow::Result<(String, String)> {
        drop(self.tx);
        let got = self
            .thread
            .join()
            .map_err(|_| anyhow!("the download's digest could not be computed"))?;
        Ok((self.want, got))
    }
}

/// Hex digest of every block received, in order.
fn hash_all<D: sha1::Digest>(mut h: D, rx: std::sync::mpsc::Receiver<bytes::Bytes>) -> String {
    for b in rx {
        h.update(&b);
    }
    hex::encode(h.finalize())
}
