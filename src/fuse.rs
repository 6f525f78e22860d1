//! The thin fuser adapter: for each kernel request, one tracing span, `block_on` the
//! matching [`Fs`] operation on the daemon's tokio runtime, then reply, or send the errno
//! of the [`fs::Error`] and log its cause.
//! No semantics live here; fuser runs several dispatch threads, so a long commit in one
//! `flush` never blocks `ls` in another process.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::debug_span;

use crate::catalog::NodeKind;
use crate::fs::{self, Attr, Fs, SetAttr};

/// How long the kernel may cache attributes and entries. Not zero: a zero TTL makes the
/// kernel look up every entry again right after readdir.
const TTL: Duration = Duration::from_secs(1);

/// `st_blksize`: `cp` writes in chunks of max(128 KiB, blksize), and 1 MiB writes are the
/// largest a FUSE daemon receives.
const BLKSIZE: u32 = 1 << 20;

/// Largest write request (the kernel's own ceiling for FUSE).
const MAX_WRITE: u32 = 1 << 20;

/// Background requests (async reads, releases) the kernel may queue to the daemon.
const MAX_BACKGROUND: u16 = 64;

/// Kernel read-ahead for the mount, in KiB. FUSE gets the kernel's default of 128 KiB
/// (256 KiB for a reader that announces sequential access, as `cat` and `cp` do) and the
/// daemon cannot ask for more at init; every read request then carries at most that much,
/// and a cold 512 MiB read took 2 048 requests. At 1 MiB the requests are as large as
/// FUSE allows (`max_pages`), a quarter as many. Set through the mount's
/// `/sys/class/bdi/<dev>/read_ahead_kb`, which only root may write: other mounts keep the
/// default.
const READ_AHEAD_KB: u32 = 1024;

/// The adapter handed to fuser.
pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
    mountpoint: Option<std::path::PathBuf>,
    tuned: std::sync::Once,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>, rt: tokio::runtime::Handle) -> Self {
        Self {
            fs,
            rt,
            mountpoint: None,
            tuned: std::sync::Once::new(),
        }
    }

    /// Where the file system is mounted, to raise its kernel read-ahead.
    pub fn with_mountpoint(mut self, mountpoint: &Path) -> Self {
        self.mountpoint = std::path::absolute(mountpoint).ok();
        self
    }

    /// Raise the mount's read-ahead, once, at the first request after init. Not in
    /// `init`: the kernel sets the read-ahead from the init reply, after `init` returns.
    /// Before any open: a file takes the read-ahead size when it is opened.
    fn tune(&self) {
        self.tuned.call_once(|| {
            if let Some(mp) = &self.mountpoint {
                if let Err(e) = raise_read_ahead(mp, READ_AHEAD_KB) {
                    tracing::debug!(error = %e, "kernel read-ahead left at its default");
                }
            }
        });
    }
}

/// Write `kb` to the read-ahead setting of the file system mounted at `mountpoint` (found
/// in /proc/self/mountinfo; statting the mountpoint here would wait for this daemon).
fn raise_read_ahead(mountpoint: &Path, kb: u32) -> std::io::Result<()> {
    let want = mountpoint.to_string_lossy();
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    // The last mount at that path is the one on top: ours.
    let dev = info
        .lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && unescape_mountinfo(f[4]) == want).then(|| f[2].to_string())
        })
        .ok_or_else(|| std::io::Error::other("mount not found in /proc/self/mountinfo"))?;
    std::fs::write(
        format!("/sys/class/bdi/{dev}/read_ahead_kb"),
        format!("{kb}\n"),
    )?;
    tracing::debug!(%dev, kb, "kernel read-ahead raised");
    Ok(())
}

/// Undo mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn to_time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH
    }
}

fn from_time(t: TimeOrNow) -> i64 {
    let t = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let t = to_time(a.mtime_ms);
    let kind = match a.kind {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
    };
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// The reply to a failed operation: its errno. The cause, when there is more than a bare
/// errno (a refused upload, a lost stage write, a corrupt read), is logged here, once.
fn fail(op: &'static str, e: fs::Error) -> Errno {
    if e.has_cause() {
        tracing::warn!(op, errno = e.errno, error = %e, "request failed");
    } else {
        tracing::trace!(op, errno = e.errno, "request answered with an errno");
    }
    Errno::from_i32(e.errno)
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_background(MAX_BACKGROUND);
        for cap in [
            // open(O_TRUNC) arrives as one open with O_TRUNC, not open + setattr(size 0),
            // so an existing file is never fetched just to be truncated.
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // The kernel then marks the superblock NOSEC and stops asking for
            // security.capability before every write.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!(?cap, "kernel lacks FUSE capability");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.tune();
        let _s = debug_span!("lookup", parent = parent.0, name = ?name).entered();
        match self.rt.block_on(self.fs.lookup(parent.0, name)) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(fail("lookup", e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.tune();
        let _s = debug_span!("getattr", ino = ino.0).entered();
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(fail("getattr", e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _s = debug_span!("setattr", ino = ino.0, ?mode, ?size).entered();
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime_ms: mtime.map(from_time),
            fh: fh.map(|f| f.0),
        };
        match self.rt.block_on(self.fs.setattr(ino.0, s)) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(fail("setattr", e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _s = debug_span!("mkdir", parent = parent.0, name = ?name).entered();
        match self
            .rt
            .block_on(self.fs.mkdir(parent.0, name, mode, req.uid(), req.gid()))
        {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(fail("mkdir", e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = debug_span!("unlink", parent = parent.0, name = ?name).entered();
        match self.rt.block_on(self.fs.unlink(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("unlink", e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = debug_span!("rmdir", parent = parent.0, name = ?name).entered();
        match self.rt.block_on(self.fs.rmdir(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rmdir", e)),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("rename", parent = parent.0, name = ?name, newparent = newparent.0, newname = ?newname).entered();
        match self.rt.block_on(
            self.fs
                .rename(parent.0, name, newparent.0, newname, flags.bits()),
        ) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rename", e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.tune();
        let _s = debug_span!("open", ino = ino.0, flags = flags.0).entered();
        match self
            .rt
            .block_on(self.fs.open_ext(ino.0, flags.0, req.pid()))
        {
            Ok(o) => reply.opened(
                FileHandle(o.fh),
                if o.keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                },
            ),
            Err(e) => reply.error(fail("open", e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _s = debug_span!("read", ino = ino.0, offset, size).entered();
        match self.rt.block_on(self.fs.read(fh.0, offset, size)) {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(fail("read", e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _s = debug_span!("write", ino = ino.0, offset, len = data.len()).entered();
        match self.rt.block_on(self.fs.write(fh.0, offset, data)) {
            Ok(n) => {
                // With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves it to the filesystem to
                // drop set-user/group-ID bits when an unprivileged process writes.
                if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
                    self.fs.kill_suid(ino.0);
                }
                reply.written(n)
            }
            Err(e) => reply.error(fail("write", e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("flush", ino = ino.0, fh = fh.0).entered();
        match self.rt.block_on(self.fs.flush(fh.0, req.pid())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("flush", e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("release", ino = ino.0, fh = fh.0).entered();
        match self.rt.block_on(self.fs.release(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("release", e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("fsync", ino = ino.0).entered();
        match self.rt.block_on(self.fs.fsync(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("fsync", e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _s = debug_span!("opendir", ino = ino.0).entered();
        match self.rt.block_on(self.fs.opendir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(fail("opendir", e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _s = debug_span!("readdir", ino = ino.0, offset).entered();
        match self.fs.readdir(fh.0) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                    let kind = match e.attr.kind {
                        NodeKind::Dir => FileType::Directory,
                        NodeKind::File => FileType::RegularFile,
                    };
                    if reply.add(INodeNo(e.attr.ino), (i + 1) as u64, kind, &e.name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(fail("readdir", e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _s = debug_span!("readdirplus", ino = ino.0, offset).entered();
        match self.fs.readdir(fh.0) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                    // The entry as it is now, not as it was at opendir: the kernel caches
                    // the name → inode pair and takes the attributes over a size it learnt
                    // from writes since then. Entries renamed or removed since are left out.
                    let Some(now) = self.fs.current_entry(ino.0, &e.name, e.attr.ino) else {
                        continue;
                    };
                    let attr = file_attr(&now);
                    if reply.add(
                        INodeNo(e.attr.ino),
                        (i + 1) as u64,
                        &e.name,
                        &TTL,
                        &attr,
                        Generation(0),
                    ) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(fail("readdirplus", e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _s = debug_span!("getxattr", ino = ino.0, name = ?name).entered();
        match self.fs.getxattr(ino.0, name) {
            Ok(v) => reply_xattr(reply, &v, size),
            Err(e) => reply.error(fail("getxattr", e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(v) => reply_xattr(reply, &v, size),
            Err(e) => reply.error(fail("listxattr", e)),
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The mount is private to its owner unless allow_other; permission bits are
        // informational (kept for rsync -a), so access is granted to whoever gets here.
        match self.fs.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(fail("access", e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _s = debug_span!("create", parent = parent.0, name = ?name).entered();
        match self.rt.block_on(self.fs.create(
            parent.0,
            name,
            mode,
            flags,
            req.uid(),
            req.gid(),
            req.pid(),
        )) {
            Ok((a, fh)) => reply.created(
                &TTL,
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(fail("create", e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("fallocate", ino = ino.0, offset, length, mode).entered();
        let end = offset + length;
        if mode == libc::FALLOC_FL_KEEP_SIZE {
            // Reserving space without a size change (`rsync --preallocate`).
            return match self.fs.reserve(fh.0, end) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fail("fallocate", e)),
            };
        }
        if mode != 0 {
            // Punching holes or zeroing ranges are not meaningful for staged uploads.
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        // Plain fallocate only extends the size; the stage is sparse.
        let r = self.rt.block_on(async {
            let cur = self.fs.getattr(ino.0)?.size;
            if end > cur {
                self.fs
                    .setattr(
                        ino.0,
                        SetAttr {
                            size: Some(end),
                            fh: Some(fh.0),
                            ..Default::default()
                        },
                    )
                    .await?;
            }
            Ok::<(), fs::Error>(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("fallocate", e)),
        }
    }
}

/// Answer a getxattr/listxattr: the size when asked for it, ERANGE when the buffer is
/// too small, else the data.
fn reply_xattr(reply: ReplyXattr, v: &[u8], size: u32) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if (size as usize) < v.len() {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(v);
    }
}

#[cfg(test)]
mod tests {
    use super::unescape_mountinfo;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/tmp/a\\040b\\011c"), "/tmp/a b\tc");
        assert_eq!(unescape_mountinfo("/plain/path"), "/plain/path");
        // A backslash without three octal digits stays.
        assert_eq!(unescape_mountinfo("/x\\09"), "/x\\09");
    }
}
