//! Namespace operations: lookup, getattr/setattr, mkdir, unlink, rmdir, rename, and the
//! remote delete they share (skipped while another path still uses the remote file, or
//! turned into "hide" when the mount keeps remote files).
//!
//! Ordering with uploads: an operation that removes or moves a file first holds off the
//! file's uploads ([`Fs::hold_uploads`]): an early upload is given up, a running commit is
//! waited for, and no commit starts until the operation is done. What lands remotely is
//! then what the local namespace says, before the operation returns (so `rm d/x; rmdir d`
//! never meets an upload landing in `d` afterwards).
//!
//! A file unlinked while open becomes an orphan of the tree ([`super::inode::Tree`]): its
//! descriptors keep reading and writing its stage, `fstat` answers with a link count of 0,
//! and nothing is uploaded; the last close drops it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::catalog::{now_ms, NodeKind, ROOT_INO};
use crate::remote::{ErrorKind, RemoteFile};

use super::handle::OpenFile;

use super::names::{check_lookup_name, check_new_name, is_save_temp, is_trash_dir};
use super::{Attr, Error, Fs, FsResult, SetAttr};

impl Fs {
    /// Look a name up, merging the directory's remote listing first when it is older than
    /// the TTL (so files changed, added or deleted elsewhere show within the TTL).
    pub async fn lookup(&self, parent: u64, name: &std::ffi::OsStr) -> FsResult<Attr> {
        let name = check_lookup_name(name)?;
        {
            let t = self.tree();
            let p = t.get(parent).ok_or(libc::ENOENT)?;
            if !p.is_dir() {
                return Err(Error::new(libc::ENOTDIR));
            }
        }
        self.refresh(parent, false).await;
        let t = self.tree();
        let c = t.child(parent, name).ok_or(libc::ENOENT)?;
        Ok(t.get(c).map(|n| self.attr_of(&t, n)).ok_or(libc::ENOENT)?)
    }

    /// Attributes of a node, or of an orphan (unlinked while open: `fstat` still works).
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let t = self.tree();
        t.get_or_orphan(ino)
            .map(|n| self.attr_of(&t, n))
            .ok_or(Error::new(libc::ENOENT))
    }

    /// The write state of a file, once its uploads are held off: an early upload is given
    /// up (nothing becomes visible remotely) and the caller then takes its `commit_lock`,
    /// which waits for a running commit and keeps new ones from starting.
    pub(super) fn hold_uploads(&self, ino: u64) -> Option<Arc<OpenFile>> {
        let of = self.tree().get(ino).and_then(|n| n.open.clone())?;
        if of.cancel_early() {
            self.uploads.end(ino);
        }
        Some(of)
    }

    /// A directory's entries changed: its mtime (and so its ctime) moves on. In memory
    /// only, so a create costs no second catalog write: the catalog takes the time with
    /// the directory's next change of its own (a remount may show an older time).
    pub(super) fn touch_dir(&self, dir: u64) {
        if let Some(n) = self.tree().get_mut(dir) {
            n.row.mtime_ms = now_ms().max(n.row.mtime_ms);
        }
    }

    pub async fn setattr(&self, ino: u64, s: SetAttr) -> FsResult<Attr> {
        if let Some(size) = s.size {
            self.truncate(ino, size, s.fh).await?;
        }
        let mut t = self.tree();
        // An orphan (unlinked, still open) changes in memory only: it has no row.
        let linked = t.get(ino).is_some();
        let n = t.get_or_orphan_mut(ino).ok_or(libc::ENOENT)?;
        let before = n.row.clone();
        if let Some(m) = s.mode {
            n.row.mode = m & 0o7777;
        }
        if let Some(u) = s.uid {
            n.row.uid = u;
        }
        if let Some(g) = s.gid {
            n.row.gid = g;
        }
        let mut gave_up = false;
        if let Some(m) = s.mtime_ms {
            // An upload that started while the file was written carries the mtime it
            // started with (S3 sends metadata when the upload is created): a time the
            // writer sets before close (`cp -a`, `touch -d`) gives it up, and the upload
            // at close sends the file with that time.
            if m != n.row.mtime_ms {
                gave_up = n.open.as_ref().is_some_and(|of| of.cancel_early());
            }
            n.row.mtime_ms = m;
        }
        if gave_up {
            tracing::debug!(
                ino,
                "mtime set while the file uploads: the upload waits for close"
            );
            self.uploads.end(ino);
        }
        if n.row != before && linked {
            let row = n.row.clone();
            self.persist(&row)?;
        }
        let n = t.get_or_orphan(ino).ok_or(libc::ENOENT)?;
        Ok(self.attr_of(&t, n))
    }

    /// An unprivileged write: the set-user-ID and set-group-ID bits go, as on a local
    /// filesystem (an orphan's change stays in memory).
    pub fn kill_suid(&self, ino: u64) {
        let mut t = self.tree();
        let linked = t.get(ino).is_some();
        let Some(n) = t.get_or_orphan_mut(ino) else {
            return;
        };
        let mode = n.row.mode & !(libc::S_ISUID | libc::S_ISGID);
        if mode != n.row.mode {
            n.row.mode = mode;
            let row = n.row.clone();
            if linked {
                self.persist_or_log(&row);
            }
        }
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let name = check_new_name(name)?;
        self.check_target_name(name, true)?;
        if !self.caps.folders && parent == ROOT_INO && is_trash_dir(name) {
            // A desktop trash here would upload every trashed file's `.trashinfo` to the
            // flat target (a channel, a message): refuse, so file managers say the trash
            // is unavailable and offer a permanent delete instead.
            return Err(Error::new(libc::EPERM));
        }
        self.refresh(parent, false).await;
        let pref = {
            let t = self.tree();
            let p = t.get(parent).ok_or(libc::ENOENT)?;
            if !p.is_dir() {
                return Err(Error::new(libc::ENOTDIR));
            }
            if t.child(parent, name).is_some() {
                return Err(Error::new(libc::EEXIST));
            }
            if self.caps.folders && parent != ROOT_INO && p.row.remote.is_none() {
                return Err(Error::new(libc::EIO));
            }
            self.dir_ref(&t, parent)
        };
        let remote = if self.caps.folders {
            Some(
                self.target
                    .mkdir(&pref, name)
                    .await
                    .map_err(|e| Error::from(e).context(format_args!("mkdir {name}")))?,
            )
        } else {
            None
        };
        let mut t = self.tree();
        if t.child(parent, name).is_some() {
            return Err(Error::new(libc::EEXIST));
        }
        if let Some(r) = &remote {
            // A folder just made is empty: no need to list it soon.
            self.listed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(r.id.clone(), Instant::now());
        }
        let mut row = self.new_row(parent, name, NodeKind::Dir, mode, uid, gid);
        row.remote = remote;
        let attr = self.insert_row(&mut t, row)?;
        drop(t);
        self.touch_dir(parent);
        Ok(attr)
    }

    /// Delete a remote file unless another path still uses it or the mount keeps remotes.
    pub(super) async fn delete_remote(&self, remote: &RemoteFile, except: u64) -> FsResult<()> {
        if self.opts.keep_remote || !self.caps.delete {
            // The remote keeps it; later listings must not bring it back.
            self.hide(&remote.id);
            return Ok(());
        }
        let shared = self
            .tree()
            .by_remote(&remote.id)
            .into_iter()
            .any(|i| i != except);
        if shared {
            return Ok(());
        }
        match self.target.delete(remote).await {
            Ok(()) => {
                self.tombstone(&remote.id);
                Ok(())
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                self.tombstone(&remote.id);
                Ok(())
            }
            Err(e) => Err(Error::from(e).context(format_args!("remote delete of {}", remote.name))),
        }
    }

    /// Delete an (empty, as far as this mount knows) remote folder. A folder the target
    /// refuses to delete for its content is not empty: ENOTEMPTY, never EIO, whether the
    /// target says so as a conflict or as a refusal the client cannot name (then a fresh
    /// listing shows the content).
    async fn delete_folder(&self, remote: &RemoteFile, ino: u64) -> FsResult<()> {
        let Err(mut e) = self.delete_remote(remote, ino).await else {
            return Ok(());
        };
        if e.errno == libc::EEXIST {
            e.errno = libc::ENOTEMPTY;
            return Err(e);
        }
        self.refresh(ino, true).await;
        if self.tree().has_children(ino) {
            tracing::debug!(ino, error = %e, "folder delete refused: it has content");
            return Err(Error::new(libc::ENOTEMPTY));
        }
        Err(e)
    }

    pub async fn unlink(&self, parent: u64, name: &std::ffi::OsStr) -> FsResult<()> {
        let name = check_lookup_name(name)?;
        let ino = {
            let t = self.tree();
            let c = t.child(parent, name).ok_or(libc::ENOENT)?;
            let n = t.get(c).ok_or(libc::ENOENT)?;
            if n.is_dir() {
                return Err(Error::new(libc::EISDIR));
            }
            c
        };
        // A running commit ends first: what it landed is deleted below, not after.
        let of = self.hold_uploads(ino);
        let _held = match &of {
            Some(of) => Some(of.commit_lock.lock().await),
            None => None,
        };
        let (remote, replaces) = {
            let t = self.tree();
            let n = t.get(ino).ok_or(libc::ENOENT)?;
            if n.row.parent != parent || t.child(parent, name) != Some(ino) {
                // Renamed or removed while the commit ran.
                return Err(Error::new(libc::ENOENT));
            }
            (n.row.remote.clone(), n.row.replaces.clone())
        };
        if let Some(r) = &remote {
            if of.is_none() && self.has_handles(ino) {
                // Open for reading only: its bytes are the remote file's, so the delete
                // waits for the last close ([`Fs::delete_when_closed`]).
                self.delete_when_closed(ino, r.clone());
            } else {
                self.delete_remote(r, ino).await?;
            }
        }
        if let Some(r) = &replaces {
            self.delete_remote(r, ino).await?;
        }
        self.forget_node(ino);
        self.touch_dir(parent);
        Ok(())
    }

    /// A landed file unlinked while descriptors read it: unread blocks still come from the
    /// remote file, so it stays until the last close (as NFS's "silly rename" keeps it).
    /// Meanwhile its id is hidden — in the catalog too, so listings never bring it back,
    /// not even after a crash (the remote copy then stays, hidden, rather than vanishing
    /// under a reader). The same id landing again (a target replacing in place, or
    /// deduplicating) unhides it in the landing step, and then it is not deleted.
    fn delete_when_closed(&self, ino: u64, remote: RemoteFile) {
        self.hide(&remote.id);
        self.unlinked_reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ino, remote);
    }

    /// The last close of a file [`Fs::delete_when_closed`] kept: delete it now, unless
    /// the id is in use again.
    pub(super) async fn delete_kept_for_readers(&self, ino: u64) {
        let Some(remote) = self
            .unlinked_reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ino)
        else {
            return;
        };
        let hidden = self
            .hidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&remote.id);
        if !hidden || !self.tree().by_remote(&remote.id).is_empty() {
            return;
        }
        match self.target.delete(&remote).await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => {
                // It stays hidden: nobody sees it again, and nothing is lost.
                tracing::warn!(name = %remote.name, error = %e, "cannot delete a file unlinked while it was read");
                return;
            }
        }
        self.tombstone(&remote.id);
        self.hidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&remote.id);
        if let Err(e) = self.catalog.unhide(&remote.id) {
            tracing::error!(error = %e, "catalog update failed");
        }
    }

    /// Hide a remote id from every later listing, in memory and in the catalog.
    fn hide(&self, id: &str) {
        self.hidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
        if let Err(e) = self.catalog.hide(id) {
            tracing::error!(error = %e, "catalog update failed");
        }
    }

    /// Drop a file node locally (after its remote side was dealt with). A file still open
    /// stays an orphan until its last close; its stage file goes now (the open descriptor
    /// keeps it readable and writable), so a crash leaves nothing behind.
    pub(super) fn forget_node(&self, ino: u64) {
        let has_handles = self.has_handles(ino);
        {
            let mut t = self.tree();
            if let Some(n) = t.remove(ino) {
                if let Some(of) = &n.open {
                    of.unlinked.store(true, Ordering::SeqCst);
                    of.stage.remove_file();
                } else if let Some(p) = &n.row.stage {
                    let _ = std::fs::remove_file(p);
                }
                if has_handles {
                    t.keep_orphan(n);
                }
            }
        }
        if let Err(e) = self.catalog.delete_node(ino) {
            tracing::error!(error = %e, "catalog delete failed");
        }
    }

    pub async fn rmdir(&self, parent: u64, name: &std::ffi::OsStr) -> FsResult<()> {
        let name = check_lookup_name(name)?;
        let ino = {
            let t = self.tree();
            let c = t.child(parent, name).ok_or(libc::ENOENT)?;
            let n = t.get(c).ok_or(libc::ENOENT)?;
            if !n.is_dir() {
                return Err(Error::new(libc::ENOTDIR));
            }
            c
        };
        // Folder targets: always the remote's word, not a cached listing: some delete a
        // folder with whatever it holds (Cloudreve), and content added elsewhere since the
        // last listing must make this ENOTEMPTY, not vanish with the folder. (A flat
        // target's folders are the catalog's own; its listing covers the whole target.)
        self.refresh(ino, self.caps.folders).await;
        let remote = {
            let t = self.tree();
            if t.has_children(ino) {
                return Err(Error::new(libc::ENOTEMPTY));
            }
            t.get(ino).ok_or(libc::ENOENT)?.row.remote.clone()
        };
        if let Some(r) = &remote {
            if self.caps.folders {
                self.delete_folder(r, ino).await?;
            }
        }
        {
            let mut t = self.tree();
            if t.has_children(ino) {
                // Something was created in it while the remote delete ran.
                return Err(Error::new(libc::ENOTEMPTY));
            }
            t.remove(ino);
        }
        if let Err(e) = self.catalog.delete_node(ino) {
            tracing::error!(error = %e, "catalog delete failed");
        }
        self.touch_dir(parent);
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        new_parent: u64,
        new_name: &std::ffi::OsStr,
        flags: u32,
    ) -> FsResult<()> {
        if flags & (libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT) != 0 {
            return Err(Error::new(libc::EINVAL));
        }
        let name = check_lookup_name(name)?;
        let new_name = check_new_name(new_name)?;
        self.refresh(new_parent, false).await;
        // Uploads of the source and of a replaced destination end (or are given up, for
        // the destination's early upload) before anything moves, and none starts until
        // the rename is done; locked in inode order, so two renames never wait on each
        // other.
        let (src_of, dst_of) = {
            let (src, dst) = {
                let t = self.tree();
                let src = t.child(parent, name).ok_or(libc::ENOENT)?;
                (src, t.child(new_parent, new_name).filter(|d| *d != src))
            };
            // A replaced directory must be empty remotely too (see `rmdir`).
            let dst_dir = dst.filter(|d| self.tree().get(*d).is_some_and(|n| n.is_dir()));
            if let Some(d) = dst_dir {
                self.refresh(d, self.caps.folders).await;
            }
            let src_of = self.tree().get(src).and_then(|n| n.open.clone());
            let dst_of = dst.and_then(|d| self.hold_uploads(d).map(|of| (d, of)));
            (src_of.map(|of| (src, of)), dst_of)
        };
        let mut to_hold: Vec<&(u64, Arc<OpenFile>)> = src_of.iter().chain(dst_of.iter()).collect();
        to_hold.sort_by_key(|(ino, _)| *ino);
        let mut held = Vec::with_capacity(to_hold.len());
        for (_, of) in to_hold {
            held.push(of.commit_lock.lock().await);
        }
        // Look at source and destination.
        let (src, dst, src_remote, src_is_dir, src_pending_only, src_shared) = {
            let t = self.tree();
            let src = t.child(parent, name).ok_or(libc::ENOENT)?;
            let np = t.get(new_parent).ok_or(libc::ENOENT)?;
            if !np.is_dir() {
                return Err(Error::new(libc::ENOTDIR));
            }
            let s = t.get(src).ok_or(libc::ENOENT)?;
            if s.is_dir() && t.is_ancestor(src, new_parent) {
                return Err(Error::new(libc::EINVAL));
            }
            let dst = t.child(new_parent, new_name).filter(|d| *d != src);
            if let Some(d) = dst {
                if flags & libc::RENAME_NOREPLACE != 0 {
                    return Err(Error::new(libc::EEXIST));
                }
                let dn = t.get(d).ok_or(libc::ENOENT)?;
                match (s.is_dir(), dn.is_dir()) {
                    (false, true) => return Err(Error::new(libc::EISDIR)),
                    (true, false) => return Err(Error::new(libc::ENOTDIR)),
                    (true, true) if t.has_children(d) => return Err(Error::new(libc::ENOTEMPTY)),
                    _ => {}
                }
            }
            let committing = s.open.as_ref().is_some_and(|o| o.is_uploading());
            // A remote file that other paths share (Dyson's content dedupe) keeps its
            // remote name: only this path moves.
            let shared = s
                .row
                .remote
                .as_ref()
                .is_some_and(|r| t.by_remote(&r.id).len() > 1);
            (
                src,
                dst,
                s.row.remote.clone(),
                s.is_dir(),
                s.row.remote.is_none() || committing,
                shared,
            )
        };
        self.check_target_name(new_name, src_is_dir)?;
        // The replaced destination: a pending source's upload replaces its remote file
        // (and deletes it afterwards where the target has no in-place versions); for a
        // committed source it is deleted first, so the remote rename finds the name free.
        let mut carry_replaces = None;
        if let Some(d) = dst {
            let (d_remote, d_replaces, d_is_dir) = {
                let t = self.tree();
                let dn = t.get(d).ok_or(libc::ENOENT)?;
                (dn.row.remote.clone(), dn.row.replaces.clone(), dn.is_dir())
            };
            if src_pending_only && !src_is_dir {
                carry_replaces = d_remote.clone();
            } else if let Some(r) = &d_remote {
                if !d_is_dir || self.caps.folders {
                    if d_is_dir {
                        self.delete_folder(r, d).await?;
                    } else {
                        self.delete_remote(r, d).await?;
                    }
                }
            }
            if let Some(r) = &d_replaces {
                self.delete_remote(r, d).await?;
            }
            self.forget_node(d);
        }
        // Remote rename/move of a committed node.
        let mut new_remote = None;
        if let Some(r) = &src_remote {
            if !src_pending_only && !src_shared {
                let (old_pref, new_pref) = {
                    let t = self.tree();
                    (self.dir_ref(&t, parent), self.dir_ref(&t, new_parent))
                };
                let moved = self.caps.folders && old_pref != new_pref;
                let renamed = r.name != new_name;
                if (moved || renamed) && self.caps.rename && (!src_is_dir || self.caps.folders) {
                    let out = self
                        .target
                        .rename(r, &new_pref, new_name)
                        .await
                        .map_err(|e| {
                            Error::from(e)
                                .context(format_args!("remote rename of {} to {new_name}", r.name))
                        })?;
                    new_remote = Some(out);
                } else if moved && !self.caps.rename {
                    // A folder target that cannot move: refuse rather than lie.
                    return Err(Error::new(libc::EXDEV));
                }
            }
        }
        let save_done = self.waits_for_rename(src) && !is_save_temp(new_name);
        {
            let mut t = self.tree();
            if t.get(src).is_none() {
                return Err(Error::new(libc::ENOENT));
            }
            t.relink(src, new_parent, new_name);
            if let Some(r) = new_remote {
                t.set_remote(src, Some(r));
            }
            if let Some(n) = t.get_mut(src) {
                if carry_replaces.is_some() {
                    n.row.replaces = carry_replaces;
                }
                let row = n.row.clone();
                self.persist(&row)?;
            }
        }
        drop(held);
        self.touch_dir(parent);
        if new_parent != parent {
            self.touch_dir(new_parent);
        }
        if save_done {
            // The save's temporary file is in place: upload it under its final name.
            let of = self.open_for_write(src, false, false).await?;
            let r = self.close_commit(src, &of).await;
            self.put_open(src, &of, false);
            r?;
        }
        // Flat targets without a remote rename: the server gets the new name too.
        self.follow_rename(src).await;
        Ok(())
    }
}
