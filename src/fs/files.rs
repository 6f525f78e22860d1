//! File operations: open, create, read, write and truncate.
//!
//! Every inode written through the mount gets one [`OpenFile`] (its stage and write state)
//! shared by its handles; an existing file opened for writing is fetched into the stage
//! lazily, on the first read, write or partial truncate. A committed file opened read-only
//! is read through the block cache with a per-handle read-ahead.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::catalog::{now_ms, NodeKind, NodeState};
use crate::read::fetcher::ReadError;
use crate::read::ReadAhead;
use crate::remote::{RemoteFile, TargetError};

use super::commit::conflict::RemoteNow;
use super::commit::early::Expected;
use crate::write::Stage;

use super::handle::{Handle, HandleState, OpenFile};
use super::names::{caller, check_new_name, tgid_of};
use super::{Attr, Error, Fs, FsResult, Opened};

/// Size of one ranged read when an existing file is fetched into a stage for editing.
const LOAD_CHUNK: u64 = 8 * 1024 * 1024;

impl Fs {
    pub(super) async fn truncate(&self, ino: u64, size: u64, fh: Option<u64>) -> FsResult<()> {
        {
            let t = self.tree();
            // An orphan (unlinked, still open) is truncated through its descriptor.
            let n = t.get_or_orphan(ino).ok_or(libc::ENOENT)?;
            if n.is_dir() {
                return Err(Error::new(libc::EISDIR));
            }
        }
        if self.max_size().is_some_and(|m| size > m) {
            return Err(Error::new(libc::EFBIG));
        }
        // A committed file without local data: the same size is a no-op.
        {
            let t = self.tree();
            let n = t.get_or_orphan(ino).ok_or(libc::ENOENT)?;
            if n.open.is_none() && n.row.size == size && n.row.state == NodeState::Committed {
                return Ok(());
            }
        }
        let from_handle = fh
            .and_then(|f| self.handle(f).ok())
            .and_then(|h| h.open.clone());
        let (of, counted) = match from_handle {
            Some(of) => (of, false),
            None => (self.open_for_write(ino, size == 0, false).await?, true),
        };
        let r = async {
            let was_empty = of.size() == 0;
            self.truncate_stage(&of, size).await?;
            self.mark_modified(ino);
            if of.writers.load(Ordering::SeqCst) == 0 {
                // Nobody will close this file for writing: commit now.
                self.close_commit(ino, &of).await
            } else {
                if was_empty && size > 0 {
                    self.start_early(ino, &of, Expected::Size(size));
                }
                Ok(())
            }
        }
        .await;
        if counted {
            self.put_open(ino, &of, false);
        }
        r
    }

    /// `fallocate(FALLOC_FL_KEEP_SIZE)` up to `end` on a handle: nothing to reserve in a
    /// sparse stage. Not a size hint: a reservation says "about this much" (rsync
    /// reserves one byte less than it writes), and an upload started with the wrong size
    /// would be sent twice.
    pub fn reserve(&self, fh: u64, end: u64) -> FsResult<()> {
        if self.max_size().is_some_and(|m| end > m) {
            return Err(Error::new(libc::EFBIG));
        }
        if !self.handle(fh)?.writable {
            return Err(Error::new(libc::EBADF));
        }
        Ok(())
    }

    /// Truncate a stage; a not yet fetched one is fetched first unless it becomes empty.
    pub(super) async fn truncate_stage(&self, of: &OpenFile, size: u64) -> FsResult<()> {
        if size > 0 {
            self.ensure_loaded(of).await?;
        }
        let _l = of.load_lock.lock().await;
        let _g = of.gate.read().await;
        of.stage.truncate(size)?;
        if of.unloaded().is_some() {
            of.set_loaded(None);
            of.mark_needs_commit();
        }
        Ok(())
    }

    /// Fetch a committed file (its first `upto` bytes) into a stage.
    pub(super) async fn load_remote(
        &self,
        stage: &Stage,
        remote: &RemoteFile,
    ) -> Result<(), TargetError> {
        let mut off = 0u64;
        while off < remote.size {
            let len = LOAD_CHUNK.min(remote.size - off);
            let b = self.target.read_range(remote, off, len).await?;
            if b.len() as u64 != len {
                return Err(TargetError::protocol(format!(
                    "reading {}: the server sent {} bytes at offset {off}, expected {len}",
                    remote.name,
                    b.len()
                )));
            }
            stage.write_at(off, &b)?;
            off += len;
        }
        Ok(())
    }

    /// Fetch the remote content a lazily opened stage stands for.
    pub(super) async fn ensure_loaded(&self, of: &OpenFile) -> FsResult<()> {
        if of.unloaded().is_none() {
            return Ok(());
        }
        let _l = of.load_lock.lock().await;
        let Some(remote) = of.unloaded() else {
            return Ok(());
        };
        let _g = of.gate.read().await;
        if let Err(e) = self.load_remote(&of.stage, &remote).await {
            let _ = of.stage.truncate(0);
            return Err(
                Error::from(e).context(format_args!("cannot fetch {} for editing", remote.name))
            );
        }
        of.set_loaded(Some(of.stage.version()));
        Ok(())
    }

    /// The inode's write state, creating its stage if needed (an existing file's content is
    /// fetched lazily unless `trunc`). The returned state already counts the caller as one
    /// more handle (and writer, if `writer`): the counts move under the tree lock, so a
    /// concurrent release can never drop a stage that is being handed out. Undo with
    /// [`Fs::put_open`].
    pub(super) async fn open_for_write(
        &self,
        ino: u64,
        trunc: bool,
        writer: bool,
    ) -> FsResult<Arc<OpenFile>> {
        let take = |of: &OpenFile| {
            of.handles.fetch_add(1, Ordering::SeqCst);
            if writer {
                of.writers.fetch_add(1, Ordering::SeqCst);
            }
        };
        loop {
            let (existing, remote, stage_path, state) = {
                let mut t = self.tree();
                if let Some(n) = t.get_mut(ino) {
                    // The content may change: the kernel's cached pages must go at the
                    // next read-only open.
                    n.page_cache = None;
                }
                let n = t.get(ino).ok_or(libc::ENOENT)?;
                if n.is_dir() {
                    return Err(Error::new(libc::EISDIR));
                }
                if let Some(of) = &n.open {
                    take(of);
                }
                (
                    n.open.clone(),
                    n.row.remote.clone(),
                    n.row.stage.clone(),
                    n.row.state,
                )
            };
            if let Some(of) = existing {
                if trunc {
                    let r = async {
                        let _l = of.load_lock.lock().await;
                        let _g = of.gate.read().await;
                        of.stage.truncate(0)?;
                        of.set_loaded(None);
                        of.mark_needs_commit();
                        Ok(())
                    }
                    .await;
                    if let Err(e) = r {
                        self.put_open(ino, &of, writer);
                        return Err(e);
                    }
                }
                return Ok(of);
            }
            let md5 = self.caps.needs_md5;
            let (stage, needs_commit, reused) = match &stage_path {
                Some(p) if state != NodeState::Committed && p.exists() => {
                    let s = Stage::open_existing(p, md5)?;
                    if trunc {
                        s.truncate(0)?;
                    }
                    // Pending data is uploaded at the next close; an incomplete stage
                    // only once something is written to it.
                    (Arc::new(s), trunc || state != NodeState::Incomplete, true)
                }
                _ => {
                    let s = self.new_stage()?;
                    let needs_commit = remote.is_none() || trunc;
                    (s, needs_commit, false)
                }
            };
            let of = match (&remote, needs_commit) {
                (Some(r), false) => OpenFile::lazy(stage.clone(), r.clone()),
                _ => OpenFile::new(stage.clone(), needs_commit),
            };
            let mut t = self.tree();
            let Some(n) = t.get_mut(ino) else {
                if !reused {
                    stage.remove_file();
                }
                return Err(Error::new(libc::ENOENT));
            };
            if n.open.is_some() {
                if !reused {
                    stage.remove_file();
                }
                continue;
            }
            take(&of);
            n.open = Some(of.clone());
            n.row.stage = Some(stage.path().to_path_buf());
            // A reader or the background uploader leaves a queued or failed file's state.
            if needs_commit && (writer || n.row.state == NodeState::Committed) {
                n.row.state = NodeState::Staged;
            }
            let row = n.row.clone();
            self.persist(&row)?;
            return Ok(of);
        }
    }

    /// Give back what [`Fs::open_for_write`] counted, dropping the stage if it was the last.
    pub(super) fn put_open(&self, ino: u64, of: &Arc<OpenFile>, writer: bool) {
        if writer {
            of.writers.fetch_sub(1, Ordering::SeqCst);
        }
        of.handles.fetch_sub(1, Ordering::SeqCst);
        self.cleanup(ino, of);
    }

    pub(super) fn register(&self, h: Handle) -> u64 {
        let fh = self.new_fh();
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(h));
        fh
    }

    pub async fn open(&self, ino: u64, flags: i32, pid: u32) -> FsResult<u64> {
        self.open_ext(ino, flags, pid).await.map(|o| o.fh)
    }

    /// `open`, also telling whether the kernel may keep the file's cached pages (a
    /// read-only open of the same remote version as the previous read-only open).
    pub async fn open_ext(&self, ino: u64, flags: i32, pid: u32) -> FsResult<Opened> {
        self.revalidate(ino).await?;
        let acc = flags & libc::O_ACCMODE;
        let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        let trunc = writable && flags & libc::O_TRUNC != 0;
        if writable {
            let of = self.open_for_write(ino, trunc, true).await?;
            if trunc {
                // POSIX: an O_TRUNC open of an existing file marks its times for update.
                self.mark_modified(ino);
            }
            let fh = self.register(Handle {
                ino,
                writable: true,
                open: Some(of),
                opener_tgid: tgid_of(pid),
                state: tokio::sync::Mutex::new(HandleState::Writing),
            });
            return Ok(Opened {
                fh,
                keep_cache: false,
            });
        }
        let (local, remote) = {
            let t = self.tree();
            let n = t.get(ino).ok_or(libc::ENOENT)?;
            if n.is_dir() {
                return Err(Error::new(libc::EISDIR));
            }
            let local =
                n.open.is_some() || (n.row.stage.is_some() && n.row.state != NodeState::Committed);
            (local, n.row.remote.clone())
        };
        // Local data (being written, or pending): read the stage.
        let open = if local {
            Some(self.open_for_write(ino, false, false).await?)
        } else {
            None
        };
        let mut keep_cache = false;
        let hstate = match (&open, remote) {
            (Some(_), _) => HandleState::Local,
            (None, Some(r)) => {
                let tag = crate::read::cache::file_tag(&r);
                if let Some(n) = self.tree().get_mut(ino) {
                    keep_cache = n.page_cache.as_ref() == Some(&tag);
                    n.page_cache = Some(tag);
                }
                HandleState::Reading(Box::new(ReadAhead::new(r)))
            }
            (None, None) => HandleState::Local,
        };
        let fh = self.register(Handle {
            ino,
            writable: false,
            open,
            opener_tgid: tgid_of(pid),
            state: tokio::sync::Mutex::new(hstate),
        });
        Ok(Opened { fh, keep_cache })
    }

    /// Close-to-open: a committed file whose remote metadata is older than the listing
    /// TTL (neither its folder's listing nor a check of its own is fresher) is checked
    /// with one metadata request before it is opened. A new version replaces the node's
    /// facts and drops the old version's cached blocks, so reads after this open see the
    /// new bytes; a file gone remotely is removed (ENOENT). A file with local data, or
    /// open here, is this mount's to decide (the commit checks it: a conflict copy).
    /// Without a metadata request, the folder's listing (at most once per TTL) tells.
    async fn revalidate(&self, ino: u64) -> FsResult<()> {
        let (known, parent_ino, name, parent) = {
            let t = self.tree();
            let n = t.get(ino).ok_or(libc::ENOENT)?;
            if n.is_dir() || n.open.is_some() || n.is_pending() {
                return Ok(());
            }
            let Some(r) = n.row.remote.clone() else {
                return Ok(());
            };
            (
                r,
                n.row.parent,
                n.row.name.clone(),
                self.dir_ref(&t, n.row.parent),
            )
        };
        if self.listing_fresh(parent.as_deref().unwrap_or_default()) || self.validated_fresh(ino) {
            return Ok(());
        }
        let now = match self.remote_now(&parent, &name, &known).await {
            Ok(RemoteNow::Unknown) => {
                self.refresh(parent_ino, false).await;
                return match self.tree().get(ino) {
                    Some(_) => Ok(()),
                    None => Err(Error::msg(libc::ENOENT, "the file was deleted remotely")),
                };
            }
            Ok(now) => now,
            Err(e) => {
                // The cached view is served; the next open asks again.
                tracing::warn!(ino, name = %name, error = %e, "cannot revalidate the file; serving what is cached");
                return Ok(());
            }
        };
        let mut t = self.tree();
        let Some(n) = t.get(ino) else {
            return Err(Error::new(libc::ENOENT));
        };
        // Changed here meanwhile (written, or already updated by a listing): keep that.
        if n.open.is_some() || n.is_pending() || n.row.remote.as_ref() != Some(&known) {
            return Ok(());
        }
        let changed = match now {
            RemoteNow::Same(fresh) if fresh == known => false,
            RemoteNow::Same(fresh) => {
                // The same content; the metadata moved (an etag after a rename).
                t.set_remote(ino, Some(fresh));
                true
            }
            RemoteNow::Changed(new) => {
                tracing::info!(ino, name = %name, id = %new.id, size = new.size, "the file changed remotely; dropping its cached data");
                self.cache
                    .forget_file(&crate::read::cache::file_tag(&known));
                t.set_remote(ino, Some(new.clone()));
                if let Some(n) = t.get_mut(ino) {
                    n.row.size = new.size;
                    if new.mtime_ms > 0 {
                        n.row.mtime_ms = new.mtime_ms;
                    }
                    n.row.sha1 = new.sha1.clone();
                    n.row.md5 = new.md5.clone();
                    n.page_cache = None;
                    n.synced = std::time::Instant::now();
                }
                true
            }
            RemoteNow::Gone => {
                tracing::info!(ino, name = %name, "the file was deleted remotely");
                t.remove(ino);
                if let Err(e) = self.catalog.delete_node(ino) {
                    tracing::error!(error = %e, "catalog delete failed");
                }
                self.validated_lock().remove(&ino);
                return Err(Error::msg(libc::ENOENT, "the file was deleted remotely"));
            }
            RemoteNow::Unknown => false,
        };
        if let Some(n) = t.get(ino).filter(|_| changed) {
            let row = n.row.clone();
            self.persist_or_log(&row);
        }
        drop(t);
        self.validated_lock().insert(ino, now_ms());
        Ok(())
    }

    fn validated_lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, i64>> {
        self.validated.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file's own check is younger than the listing TTL.
    fn validated_fresh(&self, ino: u64) -> bool {
        let ttl = self.opts.list_ttl.as_millis() as i64;
        self.validated_lock()
            .get(&ino)
            .is_some_and(|at| now_ms() - *at < ttl)
    }

    /// When the file's remote metadata was last checked, ms since the epoch: by itself
    /// at an open, or by a listing of its folder (`user.uploadfs.validated`).
    pub(super) fn last_validated(&self, ino: u64) -> Option<i64> {
        let own = self.validated_lock().get(&ino).copied();
        let listed = {
            let t = self.tree();
            let n = t.get(ino)?;
            let key = self.dir_ref(&t, n.row.parent).unwrap_or_default();
            self.listed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .map(|at| now_ms() - at.elapsed().as_millis() as i64)
        };
        own.max(listed)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
        pid: u32,
    ) -> FsResult<(Attr, u64)> {
        let name = check_new_name(name)?;
        self.check_target_name(name, false)?;
        self.refresh(parent, false).await;
        let existing = {
            let t = self.tree();
            let p = t.get(parent).ok_or(libc::ENOENT)?;
            if !p.is_dir() {
                return Err(Error::new(libc::ENOTDIR));
            }
            t.child(parent, name)
        };
        if let Some(ino) = existing {
            if flags & libc::O_EXCL != 0 {
                return Err(Error::new(libc::EEXIST));
            }
            let fh = self.open(ino, flags, pid).await?;
            return Ok((self.getattr(ino)?, fh));
        }
        let creator = caller(pid);
        let (attr, of) = {
            let mut t = self.tree();
            if t.child(parent, name).is_some() {
                return Err(Error::new(libc::EEXIST));
            }
            // The stage first, so the row is written once, with its stage.
            let stage = self.new_stage()?;
            let mut row = self.new_row(parent, name, NodeKind::File, mode, uid, gid);
            row.state = NodeState::Staged;
            row.stage = Some(stage.path().to_path_buf());
            let attr = match self.insert_row(&mut t, row) {
                Ok(a) => a,
                Err(e) => {
                    self.pool.recycle(&stage);
                    return Err(e);
                }
            };
            let of = OpenFile::new(stage, true);
            of.writers.fetch_add(1, Ordering::SeqCst);
            of.handles.fetch_add(1, Ordering::SeqCst);
            if let Some(n) = t.get_mut(attr.ino) {
                n.open = Some(of.clone());
                // rsync's temporary files come from `mkstemp`, which creates with O_EXCL;
                // with `--inplace` it opens the final name without it.
                n.by_rsync = creator.is_rsync && flags & libc::O_EXCL != 0;
            }
            (attr, of)
        };
        self.touch_dir(parent);
        let fh = self.register(Handle {
            ino: attr.ino,
            writable: true,
            open: Some(of),
            opener_tgid: creator.tgid,
            state: tokio::sync::Mutex::new(HandleState::Writing),
        });
        Ok((attr, fh))
    }

    /// Read from an open handle. A committed remote file is read through the block cache
    /// without holding the handle's lock while the blocks arrive, so the kernel's parallel
    /// read-ahead requests of one file are served in parallel.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let h = self.handle(fh)?;
        let mut st = h.state.lock().await;
        let (name, pending) = match &mut *st {
            HandleState::Failed(e) => return Err(Error::new(e.errno)),
            HandleState::Reading(ra) => (
                ra.file().name.clone(),
                ra.start(&self.cache, &self.target, offset, size),
            ),
            _ => {
                return match &h.open {
                    Some(of) => {
                        self.ensure_loaded(of).await?;
                        of.stage.read_at(offset, size as usize).map_err(Error::from)
                    }
                    None => Ok(Bytes::new()),
                }
            }
        };
        drop(st);
        let Some(pending) = pending else {
            return Ok(Bytes::new());
        };
        let failed = |e: ReadError| {
            let what = match &e {
                ReadError::Target(_) => format!("read of {name} at {offset} failed"),
                ReadError::Corrupt { .. } => {
                    // The kernel holds pages of the bad data: the next open must drop them.
                    if let Some(n) = self.tree().get_mut(h.ino) {
                        n.page_cache = None;
                    }
                    format!("SHA-1 mismatch on read of {name}")
                }
            };
            Error::from(e).context(what)
        };
        let done = pending.wait().await.map_err(failed)?;
        let step = match &*h.state.lock().await {
            HandleState::Reading(ra) => ra.verify_step(),
            _ => None,
        };
        if let Some(step) = step {
            if let Err(e) = step.run(&self.cache, &self.target, &done).await {
                let corrupt = matches!(e, ReadError::Corrupt { .. });
                let err = failed(e);
                if corrupt {
                    // Every later read of this handle fails too: the kernel retries a
                    // failed read-ahead page with a read of its own, which must not
                    // succeed now that the verdict is in.
                    *h.state.lock().await = HandleState::Failed(err.clone());
                }
                return Err(err);
            }
        }
        Ok(done.data)
    }

    /// Note a local modification (state and mtime), once per transition.
    pub(super) fn mark_modified(&self, ino: u64) {
        let mut t = self.tree();
        if let Some(n) = t.get_mut(ino) {
            n.row.mtime_ms = now_ms();
            // Closed data being changed again is not complete until the next close.
            if matches!(
                n.row.state,
                NodeState::Committed | NodeState::Queued | NodeState::Failed
            ) {
                n.row.state = NodeState::Staged;
                let row = n.row.clone();
                self.persist_or_log(&row);
            }
        }
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(Error::new(libc::EBADF));
        }
        let of = h.open.clone().ok_or(libc::EBADF)?;
        let mut st = h.state.lock().await;
        st.sticky()?;
        let end = offset + data.len() as u64;
        if let Some(max) = self.max_size() {
            if end > max {
                // Nothing of this file may reach the target: fail the handle for good.
                let err = Error::msg(
                    libc::EFBIG,
                    format!("the file grew past the target's limit of {max} bytes; only the first part is kept locally"),
                );
                *st = HandleState::Failed(err.clone());
                // The stage now holds only the first part: never upload it on its own.
                self.set_state(h.ino, NodeState::Incomplete, &err.message);
                return Err(err);
            }
        }
        self.ensure_loaded(&of).await?;
        if offset == 0 && of.size() == 0 && !of.has_early() {
            // The first bytes of an empty file: where the target takes parts before it
            // knows the size, the upload starts now and follows the writer.
            self.start_early(h.ino, &of, Expected::Stream);
        }
        let written = {
            let _g = of.gate.read().await;
            of.stage.write_at(offset, data)
        };
        if let Err(e) = written {
            // The stage lost this write (disk full, I/O error): what it holds is not what
            // the writer wrote, so it must never be uploaded as the file.
            let message = format!("a write to the local stage failed ({e}); the data is incomplete and is not uploaded");
            self.set_state(h.ino, NodeState::Incomplete, &message);
            let err = Error::from(e).context(
                "a write to the local stage failed; the data is incomplete and is not uploaded",
            );
            *st = HandleState::Failed(err.clone());
            return Err(err);
        }
        *st = HandleState::Writing;
        drop(st);
        self.mark_modified(h.ino);
        Ok(data.len() as u32)
    }
}
