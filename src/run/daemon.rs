//! The mount daemon: `uploadfs mount` re-executes itself with `--foreground` as a detached
//! child and waits on a ready pipe; the foreground process builds the filesystem core,
//! starts the fuser session, serves the control socket and unmounts itself on a signal.
//! See [`super`] for the whole stop sequence.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::registry::{
    mounted, mounted_fstype, pid_alive, read_record, registry_file, MountRecord,
};
use super::status::run_unmount;
use crate::catalog::Catalog;
use crate::cli::MountArgs;
use crate::fs::{Fs, FsOptions};

/// Environment variable carrying the ready pipe's descriptor to the daemon.
const READY_FD_ENV: &str = "UPLOADFS_READY_FD";

/// How long `mount` waits for the daemon to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Listing cache lifetime by default (`list_ttl_ms` sets it): files uploaded elsewhere
/// show up, and an opened file is checked against the remote, within this time.
const LIST_TTL: Duration = Duration::from_secs(5);

/// FUSE dispatch threads: enough that slow commits never block lookups and listings.
const FUSE_THREADS: usize = 8;

fn default_dir(base: Option<PathBuf>, target: &str) -> PathBuf {
    base.unwrap_or_else(|| PathBuf::from("."))
        .join("uploadfs")
        .join(target)
}

/// `uploadfs mount`.
pub fn run(args: MountArgs, log_file: Option<PathBuf>) -> anyhow::Result<()> {
    if args.foreground {
        let ready = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<RawFd>().ok());
        std::env::remove_var(READY_FD_ENV);
        let mut ready = ready.map(|fd| unsafe { std::fs::File::from_raw_fd(fd) });
        let r = foreground(&args, &mut ready);
        if let (Err(e), Some(f)) = (&r, ready.as_mut()) {
            let _ = writeln!(f, "error: {e:#}");
        }
        return r;
    }
    spawn_daemon(&args, log_file)
}

/// Refuse to stack a second uploadfs mount on a running one.
fn check_not_mounted(mountpoint: &Path) -> anyhow::Result<()> {
    if let Some(r) = read_record(mountpoint) {
        if pid_alive(r.pid) && mounted_fstype(mountpoint).is_some() {
            bail!(
                "{} is already mounted by uploadfs (target {}, pid {}); unmount it first",
                mountpoint.display(),
                r.target,
                r.pid
            );
        }
    }
    Ok(())
}

/// Refuse a mountpoint that holds files (the mount would hide them without a word),
/// unless `-o nonempty` says so, as FUSE mounts do.
fn check_empty(mountpoint: &Path, options: &[String]) -> anyhow::Result<()> {
    if options.iter().any(|o| o.trim() == "nonempty") {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(mountpoint)
        .with_context(|| format!("cannot read mountpoint {}", mountpoint.display()))?;
    if entries.next().is_some() {
        bail!(
            "mountpoint {} is not empty: the mount would hide its files; empty it, or mount with -o nonempty",
            mountpoint.display()
        );
    }
    Ok(())
}

/// A mountpoint left by a daemon that died (SIGKILL, crash) answers ENOTCONN: detach it
/// when it is an uploadfs mount whose daemon is gone, so the new mount can take its place.
fn clean_dead_mount(mountpoint: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
        _ => return Ok(()),
    }
    let abs = std::path::absolute(mountpoint)?;
    let ours =
        mounted(&abs).is_some_and(|(t, src)| t == "fuse.uploadfs" || src.starts_with("uploadfs:"));
    let live = read_record(&abs).is_some_and(|r| pid_alive(r.pid));
    if !ours || live {
        bail!(
            "{} is a disconnected FUSE mount not left by uploadfs; detach it with `fusermount3 -uz {}`",
            abs.display(),
            abs.display()
        );
    }
    tracing::info!(mountpoint = %abs.display(), "detaching the mount of a daemon that died");
    run_unmount(&abs, true)
}

fn spawn_daemon(args: &MountArgs, log_file: Option<PathBuf>) -> anyhow::Result<()> {
    clean_dead_mount(&args.mountpoint)?;
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {} does not exist", args.mountpoint.display()))?;
    if !mountpoint.is_dir() {
        bail!("mountpoint {} is not a directory", mountpoint.display());
    }
    check_not_mounted(&mountpoint)?;
    let exe = std::env::current_exe().context("cannot find the uploadfs executable")?;
    let mut fds = [0 as RawFd; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the ready pipe");
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    // The write end must survive exec in the child.
    unsafe { libc::fcntl(wfd, libc::F_SETFD, 0) };
    let mut cmd = Command::new(exe);
    if let Some(l) = &log_file {
        cmd.arg("--log-file").arg(l);
    }
    cmd.arg("mount")
        .arg(&args.target)
        .arg(&mountpoint)
        .arg("--foreground");
    if let Some(c) = &args.config {
        cmd.arg("--config").arg(c);
    }
    if args.write_back {
        cmd.arg("--write-back");
    }
    if let Some(d) = &args.cache_dir {
        cmd.arg("--cache-dir").arg(d);
    }
    if let Some(d) = &args.state_dir {
        cmd.arg("--state-dir").arg(d);
    }
    cmd.arg("--cache-size").arg(args.cache_size.to_string());
    if args.keep_remote {
        cmd.arg("--keep-remote");
    }
    if args.insecure {
        cmd.arg("--insecure");
    }
    if !args.options.is_empty() {
        cmd.arg("-o").arg(args.options.join(","));
    }
    cmd.env(READY_FD_ENV, wfd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    unsafe { libc::close(wfd) };
    let mut reader = unsafe { std::fs::File::from_raw_fd(rfd) };
    let mut child = spawned.context("cannot start the mount daemon")?;
    // Wait for "ok", "error: ...", or EOF (the daemon died), polling so that a hung
    // daemon cannot hang `mount`.
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut msg = Vec::new();
    loop {
        let mut pfd = libc::pollfd {
            fd: rfd,
            events: libc::POLLIN,
            revents: 0,
        };
        let n = unsafe { libc::poll(&mut pfd, 1, 500) };
        if n > 0 {
            let mut buf = [0u8; 4096];
            let got = reader.read(&mut buf).unwrap_or(0);
            if got == 0 {
                break;
            }
            msg.extend_from_slice(&buf[..got]);
            if msg.ends_with(b"\n") {
                break;
            }
        } else if Instant::now() > deadline {
            bail!(
                "the mount daemon (pid {}) did not become ready within {}s",
                child.id(),
                READY_TIMEOUT.as_secs()
            );
        }
    }
    let msg = String::from_utf8_lossy(&msg).trim().to_string();
    if msg == "ok" {
        return Ok(());
    }
    if let Some(e) = msg.strip_prefix("error: ") {
        let _ = child.wait();
        bail!("{e}");
    }
    let status = child.wait().context("waiting for the mount daemon")?;
    bail!(
        "the mount daemon exited before the mount was ready ({status}){}",
        log_file
            .map(|l| format!("; see {}", l.display()))
            .unwrap_or_else(|| "; run with --foreground or --log-file to see why".to_string())
    )
}

/// Parse `-o` options into fuser's mount options and access mode.
fn mount_config(target: &str, options: &[String]) -> anyhow::Result<fuser::Config> {
    use fuser::{MountOption as M, SessionACL};
    let mut cfg = fuser::Config::default();
    let mut opts = vec![
        M::FSName(format!("uploadfs:{target}")),
        M::Subtype("uploadfs".to_string()),
        M::NoDev,
        M::NoSuid,
    ];
    for o in options.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        match o {
            "allow_other" => cfg.acl = SessionACL::All,
            "allow_root" => cfg.acl = SessionACL::RootAndOwner,
            "ro" => opts.push(M::RO),
            "rw" => opts.push(M::RW),
            "noatime" => opts.push(M::NoAtime),
            "noexec" => opts.push(M::NoExec),
            "exec" => opts.push(M::Exec),
            "default_permissions" => opts.push(M::DefaultPermissions),
            "auto_unmount" => opts.push(M::AutoUnmount),
            // Checked before mounting (`check_empty`); not a kernel option.
            "nonempty" => {}
            o if o.starts_with("fsname=") || o.starts_with("subtype=") => {
                bail!("-o {o}: the file system name and type are set by uploadfs")
            }
            o => opts.push(M::CUSTOM(o.to_string())),
        }
    }
    cfg.mount_options = opts;
    cfg.n_threads = Some(FUSE_THREADS);
    cfg.clone_fd = true;
    Ok(cfg)
}

/// Hold an exclusive lock on the state directory for the daemon's lifetime.
fn lock_state_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "state directory {} is in use by another uploadfs mount; give this mount its own --state-dir",
            dir.display()
        );
    }
    Ok(f)
}

/// Identity of a target, so a catalog is never used against a different remote.
fn target_identity(name: &str, cfg: &crate::config::TargetConfig) -> String {
    let where_ = if name == "local" { "local" } else { &cfg.url };
    format!(
        "{}|{}|{}|{}|{}|{}|{}",
        cfg.kind.as_str(),
        where_,
        cfg.folder_id.as_deref().unwrap_or(""),
        cfg.root.as_deref().unwrap_or(""),
        cfg.channel_id.as_deref().unwrap_or(""),
        cfg.room_id
            .map(|r| format!("{r}/{}", cfg.message_id.unwrap_or(0)))
            .unwrap_or_default(),
        cfg.pool_id.as_deref().unwrap_or(""),
    )
}

fn foreground(args: &MountArgs, ready: &mut Option<std::fs::File>) -> anyhow::Result<()> {
    clean_dead_mount(&args.mountpoint)?;
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {} does not exist", args.mountpoint.display()))?;
    check_not_mounted(&mountpoint)?;
    check_empty(&mountpoint, &args.options)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("uploadfs-rt")
        .build()?;
    let open = rt.block_on(crate::open::open_target(
        &args.target,
        args.config.as_deref(),
        args.insecure,
    ))?;
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_dir(dirs::cache_dir(), &args.target));
    let state_dir = args.state_dir.clone().unwrap_or_else(|| {
        default_dir(
            dirs::state_dir().or_else(dirs::data_local_dir),
            &args.target,
        )
    });
    for d in [&cache_dir, &state_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let _lock = lock_state_dir(&state_dir)?;
    let catalog = Arc::new(Catalog::open(&state_dir.join("catalog.db"))?);
    let identity = target_identity(&args.target, &open.config);
    match catalog.meta("target")? {
        Some(id) if id != identity => bail!(
            "the catalog in {} belongs to another target ({}); use another --state-dir",
            state_dir.display(),
            id.split('|').take(2).collect::<Vec<_>>().join(" at ")
        ),
        Some(_) => {}
        None => catalog.set_meta("target", &identity)?,
    }
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fs = Arc::new(Fs::new(
        open.target.clone(),
        catalog,
        FsOptions {
            target_name: args.target.clone(),
            token_source: open.config.token_source.clone(),
            cache_dir: cache_dir.clone(),
            cache_size: args.cache_size,
            keep_remote: args.keep_remote,
            uid,
            gid,
            max_file_size: open.config.max_file_size,
            list_ttl: open
                .config
                .list_ttl_ms
                .map_or(LIST_TTL, Duration::from_millis),
        },
    )?);
    if args.write_back {
        fs.enable_write_back();
    }
    let control = {
        let _rt = rt.enter();
        crate::run::control::serve(
            fs.clone(),
            &state_dir.join(crate::run::control::SOCKET_NAME),
        )
    };
    let config = mount_config(&args.target, &args.options)?;
    let adapter =
        crate::fuse::FuseAdapter::new(fs.clone(), rt.handle().clone()).with_mountpoint(&mountpoint);
    let mut session = fuser::Session::new(adapter, &mountpoint, &config)
        .with_context(|| format!("cannot mount at {}", mountpoint.display()))?;
    let record = MountRecord {
        pid: std::process::id(),
        mountpoint: mountpoint.clone(),
        target: args.target.clone(),
        state_dir: state_dir.clone(),
        cache_dir,
        started_ms: crate::catalog::now_ms(),
        control: control.clone(),
    };
    let reg = registry_file(&mountpoint);
    if let Some(parent) = reg.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Ok(text) = serde_json::to_string(&record) {
        let _ = std::fs::write(&reg, text);
    }
    tracing::info!(target = %args.target, mountpoint = %mountpoint.display(), "mounted");
    if let Some(mut f) = ready.take() {
        let _ = f.write_all(b"ok\n");
    }
    // Background uploads; files an earlier run left to upload (closed in write-back mode,
    // interrupted, failed) are queued again without delaying the mount.
    rt.spawn(fs.clone().run_uploads());
    let recovered = fs.recover();
    if recovered > 0 {
        tracing::info!(files = recovered, "uploading files left by an earlier run");
    }
    // SIGTERM / SIGINT: unmount (retrying while the mount is busy), which ends the session;
    // a second signal stops without finishing the background uploads (they stay journaled).
    let unmounter = session.unmount_callable();
    let mp = mountpoint.clone();
    let fs_sig = fs.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received; unmounting");
        tokio::task::spawn_blocking(move || unmount_on_signal(unmounter, &mp));
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting now; unfinished uploads stay journaled");
        fs_sig.uploads().set_abandon();
    });
    let result = session.run();
    // The kernel mount is gone: finish what close() handed to the background first.
    let busy = fs.uploads().busy();
    if busy > 0 && !fs.uploads().abandoned() {
        tracing::info!(files = busy, "finishing background uploads before exiting");
    }
    rt.block_on(fs.drain());
    // Empty stage files kept for reuse go with the mount.
    fs.clear_stage_pool();
    let left = fs.pending().len();
    if left > 0 {
        tracing::warn!(
            files = left,
            "files not uploaded stay journaled for the next mount"
        );
    }
    let _ = std::fs::remove_file(&reg);
    if let Some(c) = &control {
        let _ = std::fs::remove_file(c);
    }
    drop(fs);
    if let Some(server) = open.server {
        rt.block_on(server.stop());
    }
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    // Uploads still running (abandoned) are cut off here; they are journaled.
    rt.shutdown_timeout(Duration::from_secs(2));
    result.context("FUSE session failed")
}

/// Unmount from inside the daemon; a busy mount is retried, then detached lazily.
fn unmount_on_signal(mut unmounter: fuser::SessionUnmounter, mountpoint: &Path) {
    /// Attempts (one per second) before falling back to a lazy unmount.
    const TRIES: u32 = 30;
    for i in 0..TRIES {
        match unmounter.unmount() {
            Ok(()) => return,
            Err(e) => {
                if i % 10 == 0 {
                    tracing::warn!(error = %e, "unmount failed (busy?); retrying");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status();
}
