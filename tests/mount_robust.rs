//! "Never lose an upload", through a real mount: the `uploadfs` binary mounts a FUSE
//! filesystem against `uploadfs serve` on loopback and ordinary tools write through it
//! while the server misbehaves. Scenarios are written once and run per target kind.
//!
//! - Faults: 100 files of mixed sizes (a few above the protocol's part size) copied in
//!   parallel while the server fails 10 %, then 30 %, of part uploads and downloads (503,
//!   429, connections dropped before or after the work). Every `cp` must succeed, every
//!   file must land once and byte-identical, and a poller sampling the server's
//!   introspection throughout proves no partial or foreign object is ever listed.
//! - Concurrency: 16 writers and 16 readers on one mount for a bounded time; every
//!   operation completes within a timeout and the daemon's memory stays bounded (its peak
//!   RSS is printed).
//! - Bad input: names the target refuses (EINVAL), names over 255 bytes (ENAMETOOLONG), a
//!   full stage disk (ENOSPC, nothing already written is lost), a revoked token (EACCES,
//!   logged without the token) and garbage answers (EIO, logged, the file kept in state
//!   `failed` and uploaded by the retry at the next mount).
//!
//! Oversized files (EFBIG) are covered by `mount_scenarios`.

mod common;
#[path = "common/mount.rs"]
mod mount;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{pattern, sha1_hex, TestServer, TOKEN};
use mount::{
    bounded, run_bounded, server_files, sh, sh_status, write_config, xattr, Mount, TOOL_TIMEOUT,
};
use serde_json::json;
use uploadfs::config::TargetKind;

const MIB: usize = 1024 * 1024;
/// Cloudreve chunk size the server is started with: files above the client's 4 MiB
/// single-request limit then take several chunks without being huge.
const CLOUDREVE_CHUNK: u64 = 4 * MIB as u64;
/// Files per fault phase.
const FILES_PER_PHASE: usize = 100;
/// Parallel `cp` processes in a fault phase.
const COPIERS: usize = 4;
/// Token the server switches to when the client's token is revoked.
const OTHER_TOKEN: &str = "another-token-9876543210";

fn start_server() -> TestServer {
    TestServer::start(|o| o.cloudreve_chunk_size = CLOUDREVE_CHUNK)
}

/// Mount target `t` of `kind` at `<work>/mnt` with the stage under `cache`.
fn mount_kind(s: &TestServer, kind: TargetKind, config_extra: &str, cache: &Path) -> Mount {
    let work = s.dir.path();
    let cfg = write_config(s, kind, config_extra);
    Mount::start(
        work,
        "t",
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--state-dir",
            work.join("state").to_str().unwrap(),
        ],
        vec![],
    )
}

/// `POST /_uploadfs/control` authenticated with `token` (the server's current one).
fn control_as(s: &TestServer, token: &str, body: serde_json::Value) {
    s.rt.block_on(async {
        let r = reqwest::Client::new()
            .post(s.url("/_uploadfs/control"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("control request");
        assert!(r.status().is_success(), "control failed: {}", r.status());
    })
}

/// The daemon's log so far.
fn daemon_log(s: &TestServer) -> String {
    std::fs::read_to_string(s.dir.path().join("daemon.log")).unwrap_or_default()
}

/// Wait until the server holds `name` exactly once, with exactly `data` (a replacement
/// may list the old and the new copy for a moment; both are complete).
fn wait_landed(s: &TestServer, proto: &str, name: &str, data: &[u8], timeout: Duration) {
    let want = (data.len() as u64, sha1_hex(data));
    let deadline = Instant::now() + timeout;
    loop {
        let copies: Vec<_> = s
            .files(proto)
            .into_iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, size, sha1)| (size, sha1))
            .collect();
        if copies == [want.clone()] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{proto}: {name} is not on the server once as written: {copies:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ----- 1. fault tolerance ------------------------------------------------------------

/// Sizes of the files above the protocol's part size (or its single-request limit) used
/// in each fault phase, kept few so a debug build copies them in seconds.
fn big_sizes(kind: TargetKind) -> Vec<usize> {
    match kind {
        // Upload sessions start at 20,000,000 bytes (three 8 MiB parts).
        TargetKind::Box => vec![20_000_001],
        // Above the client's 4 MiB single request: 2 and 3 chunks of 4 MiB.
        TargetKind::Cloudreve => vec![5 * MIB + 3, 9 * MIB + 1],
        // 8 MiB parts (Virola sends one streamed body; the size still exercises it).
        TargetKind::Fluxer | TargetKind::Virola => vec![9 * MIB + 5],
        // 5 MiB chunks.
        TargetKind::Dyson => vec![6 * MIB + 1, 11 * MIB + 7],
        TargetKind::Null | TargetKind::S3 => vec![],
    }
}

/// Size of the `i`-th ordinary file of a phase: 0 B to 3 MiB, mostly small.
fn mixed_size(i: usize) -> usize {
    match i % 10 {
        0 => i / 10,
        1..=3 => 100 + i * 37,
        4..=6 => 4096 * (i % 7 + 1) + i,
        7 | 8 => 64 * 1024 + i * 4099,
        _ => MIB + (i * 23_456) % (2 * MIB),
    }
}

/// One source file: its name in the mount and what the server must hold for it.
#[derive(Clone, Debug)]
struct Source {
    name: String,
    size: u64,
    sha1: String,
}

/// Write `FILES_PER_PHASE` files under `dir` named `<prefix>NNN.bin`, every content distinct
/// from all others (`seen`), as Dyson stores one object per content.
fn make_phase(
    dir: &Path,
    prefix: &str,
    seed: u64,
    big: &[usize],
    seen: &mut HashSet<String>,
) -> Vec<Source> {
    std::fs::create_dir_all(dir).unwrap();
    let mut out = vec![];
    for i in 0..FILES_PER_PHASE {
        let mut size = if i >= FILES_PER_PHASE - big.len() {
            big[FILES_PER_PHASE - 1 - i]
        } else {
            mixed_size(i)
        };
        let mut s = seed + i as u64;
        let data = loop {
            let d = pattern(size, s);
            if seen.insert(sha1_hex(&d)) {
                break d;
            }
            // Same content as an earlier file (e.g. a second empty file): change it.
            size += 1;
            s += 1000;
        };
        let name = format!("{prefix}{i:03}.bin");
        std::fs::write(dir.join(&name), &data).unwrap();
        out.push(Source {
            name,
            size: data.len() as u64,
            sha1: sha1_hex(&data),
        });
    }
    out
}

/// Samples the server's introspection until stopped; every listed file must be one of the
/// expected sources, complete and byte-identical (a partial object never shows).
struct Poller {
    stop: Arc<AtomicBool>,
    samples: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Poller {
    fn start(s: &TestServer, proto: &str, expected: HashMap<String, (u64, String)>) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(AtomicU64::new(0));
        let (url, proto) = (s.url("/_uploadfs/state"), proto.to_string());
        let (st, sa) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let client = reqwest::Client::new();
            let mut bad = vec![];
            while !st.load(Ordering::SeqCst) {
                let state: Option<serde_json::Value> = rt.block_on(async {
                    let r = client.get(&url).bearer_auth(TOKEN).send().await.ok()?;
                    r.json().await.ok()
                });
                if let Some(state) = state {
                    for f in state["protocols"][&proto]["files"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        let name = f["name"].as_str().unwrap_or_default();
                        let got = (
                            f["size"].as_u64().unwrap_or_default(),
                            f["sha1"].as_str().unwrap_or_default().to_string(),
                        );
                        match expected.get(name) {
                            Some(want) if *want == got => {}
                            want => bad.push(format!(
                                "{name} listed with {got:?}, the source is {want:?}"
                            )),
                        }
                    }
                    sa.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            bad
        });
        Poller {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Stop and assert that no sample ever showed a partial or unknown file.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let bad = self.thread.take().unwrap().join().expect("poller");
        bad.iter().take(20).for_each(|b| eprintln!("poller: {b}"));
        assert!(
            bad.is_empty(),
            "{} samples showed a partial or unknown file, first: {}",
            bad.len(),
            bad[0]
        );
        let n = self.samples.load(Ordering::Relaxed);
        assert!(n > 0, "the poller never got an answer");
        n
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `cp <src>/<name> mnt/<name>` for every source with `COPIERS` processes at once; returns
/// the failures (name, exit status, stderr).
fn copy_all(work: &Path, src: &str, files: &[Source]) -> Vec<String> {
    let queue = Arc::new(Mutex::new(
        files.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
    ));
    let failures = Arc::new(Mutex::new(vec![]));
    let threads: Vec<_> = (0..COPIERS)
        .map(|_| {
            let (queue, failures, work, src) = (
                queue.clone(),
                failures.clone(),
                work.to_path_buf(),
                src.to_string(),
            );
            std::thread::spawn(move || loop {
                let Some(name) = queue.lock().unwrap().pop() else {
                    return;
                };
                let out = run_bounded(
                    Command::new("cp")
                        .arg(format!("{src}/{name}"))
                        .arg(format!("mnt/{name}"))
                        .current_dir(&work),
                    TOOL_TIMEOUT,
                );
                if !out.status.success() {
                    failures.lock().unwrap().push(format!(
                        "{name}: {} {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("copier");
    }
    let v = failures.lock().unwrap().clone();
    v
}

/// Every source of `phases` is on the server exactly once, byte-identical, and nothing
/// else is (an empty file is committed by the release after `close()`, hence the wait).
fn assert_all_landed(s: &TestServer, proto: &str, all: &[Source]) {
    let want: BTreeMap<String, (u64, String)> = all
        .iter()
        .map(|f| (f.name.clone(), (f.size, f.sha1.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // `server_files` fails on a name listed twice.
        let got = server_files(s, proto);
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
            let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
            let differ: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
                .map(|(k, _)| k)
                .collect();
            panic!("{proto}: server files differ: missing {missing:?}, extra {extra:?}, different {differ:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn faults(kind: TargetKind) {
    let s = start_server();
    let proto = kind.as_str();
    let work = s.dir.path().to_path_buf();
    let big = big_sizes(kind);
    let mut seen = HashSet::new();
    let p1 = make_phase(&work.join("src1"), "a", 1, &big, &mut seen);
    let p2 = make_phase(&work.join("src2"), "b", 5000, &big, &mut seen);
    let expected: HashMap<String, (u64, String)> = p1
        .iter()
        .chain(&p2)
        .map(|f| (f.name.clone(), (f.size, f.sha1.clone())))
        .collect();
    let m = mount_kind(&s, kind, "", &work.join("cache"));
    let poller = Poller::start(&s, proto, expected);
    let mut landed = vec![];
    for (rate, src, files) in [(0.1, "src1", &p1), (0.3, "src2", &p2)] {
        s.control(json!({ "fail_rate": rate }));
        let t0 = Instant::now();
        let failures = copy_all(&work, src, files);
        assert!(
            failures.is_empty(),
            "{proto} at fail rate {rate}: {} cp failed: {failures:#?}",
            failures.len()
        );
        let copied = t0.elapsed();
        landed.extend(files.iter().cloned());
        assert_all_landed(&s, proto, &landed);
        // Read everything back through the mount (downloads fail at the same rate).
        sh(
            &work,
            &format!("for f in {src}/*; do cmp \"$f\" \"mnt/${{f#{src}/}}\" || exit 1; done"),
        );
        eprintln!(
            "{proto}: fail rate {rate}: {} files copied in {copied:?}, read back after {:?}",
            files.len(),
            t0.elapsed()
        );
    }
    s.control(json!({ "fail_rate": 0.0 }));
    let samples = poller.finish();
    let st = s.state();
    eprintln!(
        "{proto}: {samples} introspection samples, {} faults injected",
        st["faults_injected"]
    );
    assert!(
        st["faults_injected"].as_u64().unwrap_or(0) > 0,
        "no fault was injected"
    );
    drop(m);
}

// ----- 2. concurrency ------------------------------------------------------------------

/// Writers and readers on one mount at once.
const WRITERS: usize = 16;
const READERS: usize = 16;
/// How long the mixed load runs.
const LOAD_TIME: Duration = Duration::from_secs(15);
/// No single operation through the mount may take longer (a hang is a deadlock).
const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Byte budget of the daemon's in-memory block cache in the concurrency test (the
/// default, 256 MiB, would dominate the memory measured).
const BLOCK_CACHE: u64 = 64 * 1024 * 1024;
/// Generous bound on the daemon's resident memory (block cache included).
const RSS_LIMIT_KIB: u64 = 300 * 1024;

/// `VmRSS` and `VmHWM` of `pid`, KiB.
fn rss_kib(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn concurrency(kind: TargetKind) {
    let s = start_server();
    let proto = kind.as_str();
    let work = s.dir.path().to_path_buf();
    let m = Mount::for_kind(&s, kind, "", &["--cache-size", &BLOCK_CACHE.to_string()]);
    let pid = m.daemon_pid().expect("daemon registered");
    let mnt = m.dir.clone();

    // Files the readers start with, written through the mount.
    let seeds: Vec<(String, Vec<u8>)> = (0..READERS)
        .map(|i| {
            (
                format!("seed{i:02}.bin"),
                pattern(32 * 1024 + i * 97_001, 900 + i as u64),
            )
        })
        .collect();
    for (n, d) in &seeds {
        std::fs::write(work.join(n), d).unwrap();
    }
    sh(&work, "cp seed*.bin mnt/");
    // name → sha1 of every complete file readers may read (writers add theirs).
    let ready: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(
        seeds
            .iter()
            .map(|(n, d)| (n.clone(), sha1_hex(d)))
            .collect(),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let ops = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    // What each writer's files must hold at the end: name → (size, sha1).
    let finals = Arc::new(Mutex::new(BTreeMap::<String, (u64, String)>::new()));
    let deadline_all = Instant::now() + LOAD_TIME;

    let timed = {
        let (ops, slowest, errors) = (ops.clone(), slowest.clone(), errors.clone());
        move |what: String, t0: Instant| {
            let e = t0.elapsed();
            ops.fetch_add(1, Ordering::Relaxed);
            let mut s = slowest.lock().unwrap();
            *s = (*s).max(e);
            if e > OP_TIMEOUT {
                errors.lock().unwrap().push(format!("{what} took {e:?}"));
            }
        }
    };

    let mut threads = vec![];
    for w in 0..WRITERS {
        let (mnt, stop, errors, ready, finals, timed) = (
            mnt.clone(),
            stop.clone(),
            errors.clone(),
            ready.clone(),
            finals.clone(),
            timed.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                // Sizes from 0 to ~1.5 MiB; every third file is rewritten in place.
                let name = format!("w{w:02}-{}.bin", n % 4);
                let data = pattern(
                    ((n * 7919 + w as u64 * 104_729) % (1536 * 1024)) as usize,
                    w as u64 * 10_000 + n,
                );
                let t0 = Instant::now();
                let r = std::fs::write(mnt.join(&name), &data);
                timed(format!("write {name}"), t0);
                if let Err(e) = r {
                    errors.lock().unwrap().push(format!("write {name}: {e}"));
                    continue;
                }
                let t0 = Instant::now();
                match std::fs::read(mnt.join(&name)) {
                    Ok(back) if back == data => {}
                    Ok(back) => errors.lock().unwrap().push(format!(
                        "{name}: read back {} bytes differ from the {} written",
                        back.len(),
                        data.len()
                    )),
                    Err(e) => errors
                        .lock()
                        .unwrap()
                        .push(format!("read back {name}: {e}")),
                }
                timed(format!("read back {name}"), t0);
                let sha = sha1_hex(&data);
                finals
                    .lock()
                    .unwrap()
                    .insert(name.clone(), (data.len() as u64, sha.clone()));
                if n % 4 == 3 {
                    // Hand a finished file to the readers under its own, final name.
                    let kept = format!("k{w:02}-{n}.bin");
                    let t0 = Instant::now();
                    let r = std::fs::rename(mnt.join(&name), mnt.join(&kept));
                    timed(format!("rename {name}"), t0);
                    match r {
                        Ok(()) => {
                            let mut f = finals.lock().unwrap();
                            let v = f.remove(&name).unwrap();
                            f.insert(kept.clone(), v);
                            ready.lock().unwrap().push((kept, sha));
                        }
                        Err(e) => errors.lock().unwrap().push(format!("rename {name}: {e}")),
                    }
                }
            }
        }));
    }
    for r in 0..READERS {
        let (mnt, stop, errors, ready, timed) = (
            mnt.clone(),
            stop.clone(),
            errors.clone(),
            ready.clone(),
            timed.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut i = r;
            while !stop.load(Ordering::SeqCst) {
                i += 7;
                let (name, sha) = {
                    let v = ready.lock().unwrap();
                    v[i % v.len()].clone()
                };
                let t0 = Instant::now();
                match std::fs::read(mnt.join(&name)) {
                    Ok(d) if sha1_hex(&d) == sha => {}
                    Ok(d) => errors.lock().unwrap().push(format!(
                        "{name}: read {} bytes with a different SHA-1",
                        d.len()
                    )),
                    Err(e) => errors.lock().unwrap().push(format!("read {name}: {e}")),
                }
                timed(format!("read {name}"), t0);
                if i % 5 == 0 {
                    let t0 = Instant::now();
                    if let Err(e) = std::fs::read_dir(&mnt).map(|d| d.count()) {
                        errors.lock().unwrap().push(format!("readdir: {e}"));
                    }
                    timed("readdir".to_string(), t0);
                }
            }
        }));
    }

    // Sample the daemon's memory while the load runs.
    let mut peak_rss = 0;
    let mut hwm = 0;
    while Instant::now() < deadline_all {
        if let Some((rss, h)) = rss_kib(pid) {
            peak_rss = peak_rss.max(rss);
            hwm = hwm.max(h);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    bounded(OP_TIMEOUT, move || {
        for t in threads {
            t.join().expect("worker");
        }
    });
    if let Some((rss, h)) = rss_kib(pid) {
        peak_rss = peak_rss.max(rss);
        hwm = hwm.max(h);
    }
    let errors = errors.lock().unwrap().clone();
    let n = ops.load(Ordering::Relaxed);
    println!(
        "{proto}: {WRITERS} writers + {READERS} readers for {LOAD_TIME:?}: {n} operations, \
         slowest {:?}; daemon peak VmRSS {} KiB ({:.1} MiB), VmHWM {} KiB ({:.1} MiB)",
        slowest.lock().unwrap(),
        peak_rss,
        peak_rss as f64 / 1024.0,
        hwm,
        hwm as f64 / 1024.0
    );
    assert!(
        errors.is_empty(),
        "{} errors: {:#?}",
        errors.len(),
        &errors[..errors.len().min(60)]
    );
    assert!(
        n > (WRITERS + READERS) as u64,
        "only {n} operations completed"
    );
    assert!(
        hwm < RSS_LIMIT_KIB,
        "daemon peak RSS {hwm} KiB is over {RSS_LIMIT_KIB} KiB"
    );
    // Everything the writers left is on the server, byte-identical.
    let finals = finals.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = server_files(&s, proto);
        let missing: Vec<_> = finals
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{proto}: not on the server as last written: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(m);
}

// ----- 3. bad input ---------------------------------------------------------------------

/// A request path substring and method of a call every small upload depends on: the one
/// that carries the file's bytes (Dyson: completes it; Virola: lists the message).
fn small_upload_call(kind: TargetKind) -> (&'static str, &'static str) {
    match kind {
        TargetKind::Box => ("/box/upload/2.0/files/content", "POST"),
        TargetKind::Cloudreve => ("/cloudreve/api/v4/file/content", "PUT"),
        TargetKind::Fluxer => ("/messages", "POST"),
        // The upload's own answer carries nothing Virola's client needs (it finds the
        // attachment in the message listing): spoil that listing.
        TargetKind::Virola => ("/rooms/", "GET"),
        TargetKind::Dyson => ("/files/upload/complete/", "POST"),
        TargetKind::Null | TargetKind::S3 => unreachable!("not a protocol"),
    }
}

/// Names each target refuses (beyond `/` and NUL, which no path can carry).
fn refused_names(kind: TargetKind) -> Vec<&'static str> {
    let mut v = vec!["back\\slash.txt"];
    match kind {
        // Box: no non-printable characters, no leading or trailing spaces.
        TargetKind::Box => v.extend(["tab\there.txt", " leading.txt", "trailing.txt "]),
        // Fluxer: no control characters.
        TargetKind::Fluxer => v.push("tab\there.txt"),
        _ => {}
    }
    v
}

/// Refused names, too-long names, a revoked token and garbage answers, on one mount.
fn bad_input(kind: TargetKind) {
    let s = start_server();
    let proto = kind.as_str();
    let work = s.dir.path().to_path_buf();
    let caps = s.target(kind).capabilities();
    let mut m = mount_kind(&s, kind, "", &work.join("cache"));
    let data = pattern(70_000, 3);
    std::fs::write(work.join("data.bin"), &data).unwrap();

    // Names the target refuses: EINVAL, nothing remote.
    for name in refused_names(kind) {
        let out = run_bounded(
            Command::new("cp")
                .arg("data.bin")
                .arg(format!("mnt/{name}"))
                .current_dir(&work),
            TOOL_TIMEOUT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{proto}: cp to {name:?} succeeded");
        assert!(
            err.contains("Invalid argument"),
            "{proto}: cp to {name:?}: {err}"
        );
        assert!(
            !server_files(&s, proto).contains_key(name),
            "{proto}: {name:?} reached the server"
        );
        // Refused before anything was staged: no local file that can never upload.
        assert!(!m.path(name).exists(), "{proto}: {name:?} exists locally");
        // Renaming to it or (where folders are remote) making a folder of it: EINVAL too.
        std::fs::write(m.path("to-rename.txt"), b"x").unwrap();
        let e = std::fs::rename(m.path("to-rename.txt"), m.path(name)).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EINVAL),
            "{proto}: mv to {name:?}"
        );
        assert!(m.path("to-rename.txt").exists());
        std::fs::remove_file(m.path("to-rename.txt")).unwrap();
        if caps.folders {
            let e = std::fs::create_dir(m.path(name)).unwrap_err();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EINVAL),
                "{proto}: mkdir {name:?}"
            );
        }
    }
    // Longer than 255 bytes: ENAMETOOLONG; exactly 255 (multi-byte) is fine.
    let long = "x".repeat(256);
    let out = sh_status(&work, &format!("cp data.bin mnt/{long}"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("File name too long"),
        "{proto}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let max = format!("{}{}", "é".repeat(126), "abc");
    assert_eq!(max.len(), 255);
    sh(&work, &format!("cp data.bin mnt/{max}"));
    wait_landed(&s, proto, &max, &data, Duration::from_secs(10));

    // A revoked token: EACCES, a log line that says so, never the token.
    sh(&work, "cp data.bin mnt/before-revoke.bin");
    s.control(json!({ "token": OTHER_TOKEN }));
    let revoked = pattern(50_000, 4);
    std::fs::write(work.join("revoked.bin"), &revoked).unwrap();
    let out = sh_status(&work, "cp revoked.bin mnt/revoked.bin");
    assert!(
        !out.status.success(),
        "{proto}: cp with a revoked token succeeded"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{proto}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    control_as(&s, OTHER_TOKEN, json!({ "token": TOKEN }));
    let log = daemon_log(&s);
    assert!(
        !log.contains(TOKEN),
        "{proto}: the token is in the daemon log"
    );
    assert!(
        !log.contains(OTHER_TOKEN),
        "{proto}: a token is in the daemon log"
    );
    let line = log
        .lines()
        .find(|l| l.contains("revoked.bin to t failed") && l.to_lowercase().contains("token"))
        .unwrap_or_else(|| panic!("{proto}: no log line says the token was refused:\n{log}"));
    eprintln!("{proto}: revoked token logged as: {line}");
    assert!(
        line.contains("upload of")
            && line.contains("to t failed")
            && line.contains("the token comes from"),
        "{proto}: the log line names the file, the target and where the token comes from: {line}"
    );
    assert_eq!(
        xattr(&m.path("revoked.bin"), "user.uploadfs.state").as_deref(),
        Some("failed")
    );

    // Garbage answers on the upload call: EIO, a log line naming the file and the cause,
    // the file kept locally in state failed.
    let garbage = pattern(60_000, 5);
    std::fs::write(work.join("garbage.bin"), &garbage).unwrap();
    let (path, method) = small_upload_call(kind);
    s.control(json!({"bad_answers": {
        "mode": "garbage_json", "count": 1000, "path_contains": path, "method": method
    }}));
    let out = sh_status(&work, "cp garbage.bin mnt/garbage.bin");
    s.control(json!({"bad_answers": {"mode": "html", "count": 0}}));
    assert!(
        !out.status.success(),
        "{proto}: cp with garbage answers succeeded"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Input/output error"),
        "{proto}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = daemon_log(&s);
    let line = log
        .lines()
        .find(|l| l.contains("garbage.bin") && l.contains("upload failed"))
        .unwrap_or_else(|| panic!("{proto}: no log line names garbage.bin:\n{log}"));
    eprintln!("{proto}: garbage answer logged as: {line}");
    let lower = line.to_lowercase();
    assert!(
        [
            "json",
            "answer",
            "response",
            "unexpected",
            "parse",
            "decode"
        ]
        .iter()
        .any(|w| lower.contains(w)),
        "{proto}: the log line does not say what was wrong: {line}"
    );
    assert_eq!(
        xattr(&m.path("garbage.bin"), "user.uploadfs.state").as_deref(),
        Some("failed")
    );
    sh(&work, "cmp garbage.bin mnt/garbage.bin");

    // The failed uploads are retried at the next mount and land exactly once.
    m.remount();
    wait_landed(&s, proto, "revoked.bin", &revoked, Duration::from_secs(30));
    wait_landed(&s, proto, "garbage.bin", &garbage, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(10);
    while xattr(&m.path("garbage.bin"), "user.uploadfs.state").as_deref() != Some("committed") {
        assert!(
            Instant::now() < deadline,
            "{proto}: garbage.bin never became committed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sh(
        &work,
        "cmp garbage.bin mnt/garbage.bin && cmp revoked.bin mnt/revoked.bin",
    );
    // Nothing is listed twice, and the refused names never reached the server.
    let files = server_files(&s, proto);
    for name in refused_names(kind) {
        assert!(
            !files.contains_key(name),
            "{proto}: {name:?} reached the server"
        );
    }
    drop(m);
}

// ----- full stage disk --------------------------------------------------------------------

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = run_bounded(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn stage_disk_full(kind: TargetKind) {
    let s = start_server();
    let proto = kind.as_str();
    let work = s.dir.path().to_path_buf();
    // Declared before the mount so the mount's guard (dropped first) releases it.
    let cache = Tmpfs::mount(&work.join("cache"), "8m");
    let m = mount_kind(&s, kind, "", &cache.0);

    // Committed before the disk fills.
    let done = pattern(MIB, 21);
    std::fs::write(work.join("done.bin"), &done).unwrap();
    sh(&work, "cp done.bin mnt/done.bin");
    // Staged and still open while the disk fills.
    let open = pattern(MIB + 5, 22);
    let f = std::fs::File::create(m.path("open.bin")).unwrap();
    {
        use std::io::Write;
        (&f).write_all(&open).unwrap();
    }
    // A write bigger than what is left: ENOSPC to the writer.
    std::fs::write(work.join("big.bin"), pattern(12 * MIB, 23)).unwrap();
    let out = sh_status(&work, "cp big.bin mnt/big.bin");
    assert!(
        !out.status.success(),
        "{proto}: cp onto a full stage disk succeeded"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left on device"),
        "{proto}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing of it is remote, ever.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !server_files(&s, proto).contains_key("big.bin"),
        "{proto}: a cut-short file was uploaded"
    );
    // Kept locally, marked as not uploadable on its own.
    assert_eq!(
        xattr(&m.path("big.bin"), "user.uploadfs.state").as_deref(),
        Some("incomplete")
    );
    // The open file still closes fine and lands; the committed one still reads back.
    bounded(TOOL_TIMEOUT, move || drop(f));
    wait_landed(&s, proto, "open.bin", &open, Duration::from_secs(20));
    std::fs::write(work.join("open.bin"), &open).unwrap();
    sh(
        &work,
        "cmp done.bin mnt/done.bin && cmp open.bin mnt/open.bin",
    );
    wait_landed(&s, proto, "done.bin", &done, Duration::from_secs(5));
    // Removing the failed file gives its space back: the next copy works.
    sh(&work, "rm -f mnt/big.bin");
    let after = pattern(2 * MIB, 24);
    std::fs::write(work.join("after.bin"), &after).unwrap();
    sh(&work, "cp after.bin mnt/after.bin");
    wait_landed(&s, proto, "after.bin", &after, Duration::from_secs(10));
    drop(m);
    drop(cache);
}

macro_rules! per_kind {
    ($($kind:ident => $faults:ident, $bad:ident;)*) => {$(
        #[test]
        fn $faults() {
            faults(TargetKind::$kind);
        }
        #[test]
        fn $bad() {
            bad_input(TargetKind::$kind);
        }
    )*};
}

per_kind! {
    Box => box_faults, box_bad_input;
    Cloudreve => cloudreve_faults, cloudreve_bad_input;
    Fluxer => fluxer_faults, fluxer_bad_input;
    Virola => virola_faults, virola_bad_input;
    Dyson => dyson_faults, dyson_bad_input;
}

#[test]
fn box_concurrency() {
    concurrency(TargetKind::Box);
}

#[test]
fn box_stage_disk_full() {
    stage_disk_full(TargetKind::Box);
}
