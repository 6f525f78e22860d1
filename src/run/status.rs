//! `uploadfs unmount` (drain with progress, then unmount and wait for the daemon) and
//! `uploadfs status` (live from a daemon's control socket, else from its catalog).
//!
//! `unmount` says at once when the uploads it waits for wait for an unreachable target,
//! and names `--force`, which unmounts without them: they stay staged and journaled and
//! go up at the next mount. `status` also shows mounts whose daemon died (the mountpoint
//! answers ENOTCONN), with what they left to upload and how to get the mountpoint back.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use super::registry::{
    all_records, every_record, mounted_fstype, pid_alive, read_record, MountRecord,
};
use crate::catalog::{Catalog, NodeRow, ROOT_INO};
use crate::cli::{StatusArgs, UnmountArgs};

/// How often `status --watch` refreshes.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

pub(super) fn run_unmount(mountpoint: &Path, lazy: bool) -> anyhow::Result<()> {
    let mut fm = Command::new("fusermount3");
    fm.arg("-u");
    if lazy {
        fm.arg("-z");
    }
    let out = fm.arg(mountpoint).output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            // fusermount3 refuses mounts it did not make (root mounts directly): umount(8).
            let mut um = Command::new("umount");
            if lazy {
                um.arg("-l");
            }
            let o2 = um.arg(mountpoint).output()?;
            if o2.status.success() {
                Ok(())
            } else {
                bail!(
                    "cannot unmount {}: {}{}",
                    mountpoint.display(),
                    String::from_utf8_lossy(&o.stderr).trim(),
                    if String::from_utf8_lossy(&o2.stderr).contains("busy") {
                        " (files are still open; close them or use --force)"
                    } else {
                        ""
                    }
                )
            }
        }
        Err(_) => {
            let o2 = Command::new("umount").arg(mountpoint).output()?;
            if o2.status.success() {
                Ok(())
            } else {
                bail!(
                    "cannot unmount {}: {}",
                    mountpoint.display(),
                    String::from_utf8_lossy(&o2.stderr).trim()
                )
            }
        }
    }
}

/// `uploadfs unmount`.
pub fn unmount(args: UnmountArgs) -> anyhow::Result<()> {
    let mp = args
        .mountpoint
        .canonicalize()
        .unwrap_or_else(|_| args.mountpoint.clone());
    match mounted_fstype(&mp) {
        Some(t) if t == "fuse.uploadfs" || t == "fuse" => {}
        Some(t) => bail!("{} is a {t} mount, not uploadfs", mp.display()),
        None => bail!("{} is not mounted", mp.display()),
    }
    let record = read_record(&mp).filter(|r| pid_alive(r.pid));
    let socket = record.as_ref().and_then(|r| r.control.clone());
    if args.force {
        // The daemon exits without finishing background uploads; they stay journaled.
        if let Some(sock) = &socket {
            if let Err(e) = crate::run::control::abandon(sock) {
                tracing::warn!(error = %e, "cannot reach the daemon");
            }
        }
        run_unmount(&mp, true)?;
        if let Some(r) = &record {
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid_alive(r.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        return Ok(());
    }
    // Drain: wait, showing progress, until nothing is queued or uploading.
    if let (Some(r), Some(sock)) = (&record, &socket) {
        let mut view = crate::run::control::LiveView::new(true);
        let mut last_draw: Option<Instant> = None;
        let mut last_text = String::new();
        let mut hinted = false;
        loop {
            let st = match crate::run::control::query_status(sock) {
                Ok(st) => st,
                Err(e) => {
                    if mounted_fstype(&mp).is_none() {
                        // Unmounted meanwhile (`unmount --force` from elsewhere).
                        return Ok(());
                    }
                    tracing::warn!(error = %e, "cannot read the daemon's progress");
                    break;
                }
            };
            let unreachable = st.health.as_ref().is_some_and(|h| h.unreachable);
            if st.busy > 0 && (st.waiting > 0 || unreachable) && !hinted {
                hinted = true;
                let why = st
                    .health
                    .as_ref()
                    .and_then(|h| crate::run::control::health_text(&r.target, h))
                    .unwrap_or_else(|| format!("target {} is unreachable", r.target));
                eprintln!(
                    "uploadfs: {why}\nuploadfs: {} upload(s) wait for it; unmount waits until they \
                     are done. `uploadfs unmount --force {}` unmounts now and keeps them staged \
                     for the next mount.",
                    st.busy,
                    mp.display()
                );
            }
            if st.busy == 0 {
                let failed = st.pending.iter().filter(|f| f.state == "failed").count();
                if failed > 0 {
                    eprintln!(
                        "uploadfs: {failed} failed upload(s) stay journaled and are retried at the next mount"
                    );
                }
                break;
            }
            // A plain (non-terminal) view prints a snapshot every few seconds only, and only
            // when something changed.
            if last_draw.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
                let v = crate::run::control::StatusView::live(r, st);
                let text = crate::run::control::render_text(std::slice::from_ref(&v));
                if text != last_text {
                    view.update(&[v]);
                    last_text = text;
                }
                last_draw = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        view.finish();
    }
    run_unmount(&mp, false)?;
    // What remains are releases (and uploads they queued) the daemon is still finishing.
    if let Some(r) = record {
        let mut last_note = Instant::now();
        while pid_alive(r.pid) {
            if last_note.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "waiting for pending uploads of {} to finish...",
                    mp.display()
                );
                last_note = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn node_paths(nodes: &[NodeRow]) -> std::collections::HashMap<u64, String> {
    let by_ino: std::collections::HashMap<u64, &NodeRow> =
        nodes.iter().map(|n| (n.ino, n)).collect();
    let mut out = std::collections::HashMap::new();
    for n in nodes {
        let mut parts = vec![];
        let mut cur = n;
        let mut guard = 0;
        while cur.ino != ROOT_INO && guard < 4096 {
            parts.push(cur.name.clone());
            match by_ino.get(&cur.parent) {
                Some(p) => cur = p,
                None => break,
            }
            guard += 1;
        }
        parts.reverse();
        out.insert(n.ino, format!("/{}", parts.join("/")));
    }
    out
}

/// One mount's status: live from the daemon's socket, else from its catalog.
fn mount_status(r: &MountRecord) -> anyhow::Result<crate::run::control::StatusView> {
    use crate::fs::FileStatus;
    use crate::run::control::{StatusView, Totals};
    let dead = !pid_alive(r.pid);
    if let Some(sock) = r.control.as_ref().filter(|_| !dead) {
        match crate::run::control::query_status(sock) {
            Ok(st) => return Ok(StatusView::live(r, st)),
            Err(e) => tracing::debug!(error = %e, "daemon unreachable; reading the catalog"),
        }
    }
    let catalog = Catalog::open_read_only(&r.state_dir.join("catalog.db"))?;
    let nodes = catalog.load_nodes()?;
    let paths = node_paths(&nodes);
    let pending: Vec<FileStatus> = catalog
        .pending_nodes()?
        .into_iter()
        .map(|n| FileStatus {
            path: paths.get(&n.ino).cloned().unwrap_or_default(),
            state: n.state.as_str().to_string(),
            size: n.size,
            bytes_done: 0,
            parts_done: 0,
            rate: None,
            eta_seconds: None,
            error: n.last_error,
            attempts: 0,
            retry_in_seconds: None,
            waiting_for_target: false,
        })
        .collect();
    let note = dead.then(|| {
        format!(
            "the daemon (pid {}) is gone; the mountpoint answers ENOTCONN (Transport endpoint \
             is not connected). `uploadfs mount {} {}` takes it over and uploads what is left; \
             `fusermount3 -uz {}` only detaches it",
            r.pid,
            r.target,
            r.mountpoint.display(),
            r.mountpoint.display()
        )
    });
    Ok(StatusView {
        mountpoint: r.mountpoint.clone(),
        target: r.target.clone(),
        pid: r.pid,
        source: "catalog",
        mount: if dead { "dead" } else { "running" },
        write_back: false,
        health: None,
        waiting: 0,
        stale: false,
        listing_error: None,
        note,
        totals: Totals::of(&pending),
        pending,
        conflicts: vec![],
    })
}

/// A record whose daemon died while its mount stayed (the mountpoint answers ENOTCONN).
fn dead_mount(r: &MountRecord) -> bool {
    !pid_alive(r.pid) && mounted_fstype(&r.mountpoint).is_some()
}

/// `uploadfs status`: files of running mounts that are not in sync with the remote, with
/// live progress; `--watch` redraws until interrupted.
pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let records = || -> anyhow::Result<Vec<MountRecord>> {
        Ok(match &args.mountpoint {
            Some(m) => {
                let mp = m
                    .canonicalize()
                    .or_else(|_| std::path::absolute(m))
                    .unwrap_or_else(|_| m.clone());
                vec![read_record(&mp)
                    .filter(|r| pid_alive(r.pid) || dead_mount(r))
                    .ok_or_else(|| anyhow!("{} is not a running uploadfs mount", mp.display()))?]
            }
            None => {
                let mut v = all_records();
                v.extend(every_record().into_iter().filter(dead_mount));
                v
            }
        })
    };
    let views = || -> anyhow::Result<Vec<crate::run::control::StatusView>> {
        records()?.iter().map(mount_status).collect()
    };
    if args.json {
        loop {
            println!(
                "{}",
                serde_json::to_string(&serde_json::json!({ "mounts": views()? }))?
            );
            if !args.watch {
                return Ok(());
            }
            std::thread::sleep(WATCH_INTERVAL);
        }
    }
    if !args.watch {
        print!("{}", crate::run::control::render_text(&views()?));
        return Ok(());
    }
    let mut view = crate::run::control::LiveView::new(false);
    loop {
        let v = views()?;
        view.update(&v);
        if v.is_empty() {
            view.finish();
            return Ok(());
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
}
