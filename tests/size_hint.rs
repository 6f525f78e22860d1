//! The size hint, through a real mount for every target kind: a writer that announces the
//! final size before writing (`ftruncate`, `posix_fallocate`) gets its upload started at
//! once, so parts reach the server while it still writes — where the protocol allows it
//! (Virola takes one request and Dyson needs the whole file's MD5 first: nothing is sent
//! before close there). Nothing is visible remotely before `close()`, and a writer that
//! does something else than announced (rewrites bytes already sent, ends shorter or
//! longer, removes the file) still gets exactly its data, or nothing, on the server.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::mount::{bounded, run_bounded, Mount};
use common::{pattern, TestServer};
use uploadfs::config::TargetKind;

/// Longest a single step through the mount may take.
const STEP: Duration = Duration::from_secs(90);

type Job = Box<dyn FnOnce(&mut Option<File>) + Send>;

/// A thread that keeps one file open across steps, so the test can look at the server
/// between writes; every step is bounded in time.
struct Writer {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<std::thread::Result<()>>,
}

impl Writer {
    fn new() -> Writer {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let mut file = None;
            for job in rx {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut file)));
                if tx.send(r).is_err() {
                    break;
                }
            }
        });
        Writer { jobs, done }
    }

    fn run(&self, job: impl FnOnce(&mut Option<File>) + Send + 'static) {
        self.jobs.send(Box::new(job)).expect("writer thread");
        match self.done.recv_timeout(STEP) {
            Ok(Ok(())) => {}
            Ok(Err(p)) => std::panic::resume_unwind(p),
            Err(_) => panic!("a step through the mount took longer than {STEP:?}"),
        }
    }

    fn create(&self, path: PathBuf) {
        self.run(move |f| *f = Some(File::create(path).expect("create")));
    }

    fn set_len(&self, len: u64) {
        self.run(move |f| f.as_ref().unwrap().set_len(len).expect("ftruncate"));
    }

    fn fallocate(&self, len: u64) {
        self.run(move |f| {
            let fd = f.as_ref().unwrap().as_raw_fd();
            let r = unsafe { libc::posix_fallocate(fd, 0, len as libc::off_t) };
            assert_eq!(r, 0, "posix_fallocate: errno {r}");
        });
    }

    /// `fallocate(FALLOC_FL_KEEP_SIZE)`: space reserved, size unchanged.
    fn reserve(&self, len: u64) {
        self.run(move |f| {
            let fd = f.as_ref().unwrap().as_raw_fd();
            let r =
                unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, len as libc::off_t) };
            assert_eq!(
                r,
                0,
                "fallocate(KEEP_SIZE): {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(
                f.as_ref().unwrap().metadata().unwrap().len(),
                0,
                "KEEP_SIZE kept the size"
            );
        });
    }

    fn write(&self, data: &[u8], range: std::ops::Range<usize>) {
        let chunk = data[range.clone()].to_vec();
        self.run(move |f| {
            let file = f.as_ref().unwrap();
            // 1 MiB writes, in order, like cp.
            for (i, c) in chunk.chunks(1 << 20).enumerate() {
                file.write_all_at(c, (range.start + (i << 20)) as u64)
                    .expect("write");
            }
        });
    }

    /// `close()`; panics if it reports an error.
    fn close(&self) {
        self.run(|f| {
            let file = f.take().unwrap();
            let fd = file.as_raw_fd();
            std::mem::forget(file);
            assert_eq!(
                unsafe { libc::close(fd) },
                0,
                "close() failed: {}",
                std::io::Error::last_os_error()
            );
        });
    }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scenario(kind: TargetKind) {
    // Small Cloudreve chunks keep the multi-part files small.
    let s = TestServer::small_chunks();
    let proto = kind.as_str();
    let caps = s.target(kind).capabilities();
    let part = s.part_size(kind);
    let size = (3 * part + 7).max((8 << 20) + 7);
    let early = caps.early_start;
    let work = s.dir.path().to_path_buf();
    let m = Mount::for_kind(&s, kind, "", &[]);
    let received = || s.bytes_received();
    let visible = |name: &str| s.stored(proto).contains_key(name);
    // Parts go up before close where the protocol allows, and nothing does elsewhere.
    let sent_early = |before: u64| {
        if early {
            wait_until(
                &format!("{proto}: a part reached the server before close"),
                || received() >= before + part as u64,
            );
        } else {
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(received(), before, "{proto}: bytes sent before close");
        }
    };

    // 1. Announced and written in order: the common case.
    let data = pattern(size, 1);
    let before = received();
    let w = Writer::new();
    w.create(m.path("hinted.bin"));
    w.set_len(size as u64);
    w.write(&data, 0..2 * part);
    sent_early(before);
    w.write(&data, 2 * part..size);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!visible("hinted.bin"), "{proto}: visible before close");
    w.close();
    s.assert_stored(proto, "hinted.bin", &data);
    assert!(
        received() - before < (size + part) as u64,
        "{proto}: the data went up more than once ({} bytes for {size})",
        received() - before
    );
    let p = m.path("hinted.bin");
    let back = bounded(STEP, move || std::fs::read(p).unwrap());
    assert!(back == data, "{proto}: read back through the mount differs");

    // 2. Bytes already sent are rewritten before close: the file lands as written.
    let mut data = pattern(size, 2);
    let before = received();
    let w = Writer::new();
    w.create(m.path("rewritten.bin"));
    w.set_len(size as u64);
    w.write(&data, 0..size);
    sent_early(before);
    data[10..17].copy_from_slice(b"changed");
    w.write(&data, 10..17);
    w.close();
    s.assert_stored(proto, "rewritten.bin", &data);

    // 3. Shorter than announced (truncated back before close), 4. longer than announced.
    for (name, len, seed) in [("short.bin", size - 1000, 3), ("long.bin", size + 1000, 4)] {
        let data = pattern(len, seed);
        let w = Writer::new();
        w.create(m.path(name));
        w.set_len(size as u64);
        w.write(&data, 0..len);
        if len < size {
            w.set_len(len as u64);
        }
        w.close();
        s.assert_stored(proto, name, &data);
    }

    // 5. Removed while it is written: nothing lands, no session is left open.
    let data = pattern(size, 5);
    let before = received();
    let w = Writer::new();
    w.create(m.path("gone.bin"));
    w.set_len(size as u64);
    w.write(&data, 0..2 * part);
    sent_early(before);
    let p = m.path("gone.bin");
    bounded(STEP, move || std::fs::remove_file(p).unwrap());
    w.write(&data, 2 * part..size);
    w.close();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!visible("gone.bin"), "{proto}: a removed file landed");
    if matches!(kind, TargetKind::Box | TargetKind::Cloudreve) {
        wait_until(&format!("{proto}: the given-up session is aborted"), || {
            s.state()["protocols"][proto]["open_sessions"].as_u64() == Some(0)
        });
    }

    // 6. Announced with posix_fallocate.
    let data = pattern(size, 6);
    let before = received();
    let w = Writer::new();
    w.create(m.path("fallocated.bin"));
    w.fallocate(size as u64);
    w.write(&data, 0..2 * part);
    sent_early(before);
    w.write(&data, 2 * part..size);
    w.close();
    s.assert_stored(proto, "fallocated.bin", &data);

    // 7. Space reserved without a size change (FALLOC_FL_KEEP_SIZE) succeeds but is no
    // size hint (rsync reserves one byte less than it writes): nothing goes up before close.
    let data = pattern(size, 7);
    let before = received();
    let w = Writer::new();
    w.create(m.path("reserved.bin"));
    w.reserve(size as u64);
    w.write(&data, 0..2 * part);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        received(),
        before,
        "{proto}: a reservation started an upload"
    );
    w.write(&data, 2 * part..size);
    w.close();
    s.assert_stored(proto, "reserved.bin", &data);

    // 8. `rsync --preallocate` (which reserves with KEEP_SIZE) exits 0 without complaint
    // and sends the file once.
    let data = pattern(size, 8);
    let src = work.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("synced.bin"), &data).unwrap();
    let announced = |log: &str| log.matches("size announced before writing").count();
    let log_before = announced(&m.log());
    let out = run_bounded(
        std::process::Command::new("rsync")
            .args(["--preallocate", "--inplace"])
            .arg(src.join("synced.bin"))
            .arg(m.path("synced.bin")),
        STEP,
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{proto}: rsync --preallocate: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    s.assert_stored(proto, "synced.bin", &data);
    let log_after = announced(&m.log());
    assert_eq!(
        log_after, log_before,
        "{proto}: rsync --preallocate started an early upload"
    );

    // Nothing else landed (the given-up attempts left no copies).
    let names: Vec<String> = s.stored(proto).into_keys().collect();
    for n in &names {
        assert!(
            [
                "hinted.bin",
                "rewritten.bin",
                "short.bin",
                "long.bin",
                "fallocated.bin",
                "reserved.bin",
                "synced.bin",
            ]
            .contains(&n.as_str()),
            "{proto}: unexpected file {n} on the server: {names:?}"
        );
    }
    drop(m);
}

common::per_kind!(scenario;
    size_hint_box => Box,
    size_hint_cloudreve => Cloudreve,
    size_hint_fluxer => Fluxer,
    size_hint_virola => Virola,
    size_hint_dyson => Dyson,
);
