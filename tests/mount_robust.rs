//! "Never lose an upload", through a real mount: the `uploadfs` binary mounts a FUSE
//! filesystem against `uploadfs serve` on loopback and ordinary tools write through it
//! while the server misbehaves or the load is heavy. Scenarios are written once and run per
//! target kind.
//!
//! - Faults: 100 files of mixed sizes (a few above the protocol's part size) copied in
//!   parallel while the server fails 10 %, then 30 %, of part uploads and downloads (503,
//!   429, connections dropped before or after the work). Every `cp` must succeed, every
//!   file must land once and byte-identical, and a poller sampling the server's
//!   introspection throughout proves no partial or foreign object is ever listed.
//! - Concurrency: 16 writers and 16 readers on one mount for a bounded time; every
//!   operation completes within a timeout and the daemon's memory stays bounded (its peak
//!   RSS is printed).
//!
//! Bad input (refused names, a full stage disk, a revoked token, garbage answers) is in
//! `mount_bad_input`, oversized files (EFBIG) in `mount_scenarios`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mount::{bounded, run_bounded, sh, Mount, TOOL_TIMEOUT};
use common::{pattern, sha1_hex, TestServer, TOKEN};
use uploadfs::config::TargetKind;

const MIB: usize = 1024 * 1024;
/// Files per fault phase.
const FILES_PER_PHASE: usize = 100;
/// Parallel `cp` processes in a fault phase.
const COPIERS: usize = 4;

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
        // `stored` fails on a name listed twice.
        let got = s.stored(proto);
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
    let s = TestServer::small_chunks();
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
    let m = Mount::for_kind(&s, kind, "", &[]);
    let poller = Poller::start(&s, proto, expected);
    let mut landed = vec![];
    for (rate, src, files) in [(0.1, "src1", &p1), (0.3, "src2", &p2)] {
        s.set_fail_rate(rate);
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
    s.set_fail_rate(0.0);
    let samples = poller.finish();
    let injected = s.counter("faults_injected");
    eprintln!("{proto}: {samples} introspection samples, {injected} faults injected");
    assert!(injected > 0, "no fault was injected");
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
    let s = TestServer::small_chunks();
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
    s.wait_stored(proto, &finals, Duration::from_secs(20));
    drop(m);
}

common::per_kind!(faults;
    box_faults => Box,
    cloudreve_faults => Cloudreve,
    fluxer_faults => Fluxer,
    virola_faults => Virola,
    dyson_faults => Dyson,
);

common::per_kind!(concurrency; box_concurrency => Box);
