//! The driver's own contract, against an in-memory session.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::remote::{ByteCounter, Digests, Seal};

/// Bytes that arrive on demand; open-ended or announced, like the stage of a file still
/// being written.
struct Feed {
    data: Vec<u8>,
    arrived: Mutex<usize>,
    more: std::sync::Condvar,
    seal: Option<Arc<Seal>>,
}

impl Feed {
    fn new(data: Vec<u8>, seal: Option<Arc<Seal>>) -> Arc<Self> {
        let all = if seal.is_some() { 0 } else { data.len() };
        Arc::new(Self {
            data,
            arrived: Mutex::new(all),
            more: std::sync::Condvar::new(),
            seal,
        })
    }
    fn arrive(&self, upto: usize) {
        *self.arrived.lock().unwrap() = upto;
        self.more.notify_all();
    }
    fn done(&self) -> bool {
        self.seal
            .as_ref()
            .is_none_or(|s| s.is_sealed() || s.is_cancelled())
    }
}

impl PartSource for Feed {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let start = (offset as usize).min(self.data.len());
        let end = (start + len).min(*self.arrived.lock().unwrap());
        Ok(Bytes::copy_from_slice(&self.data[start..end.max(start)]))
    }
    fn wait_ready(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let end = ((offset + len) as usize).min(self.data.len());
        let mut arrived = self.arrived.lock().unwrap();
        while *arrived < end && !self.done() {
            arrived = self
                .more
                .wait_timeout(arrived, Duration::from_millis(10))
                .unwrap()
                .0;
        }
        Ok(())
    }
    fn seal(&self) -> Option<Arc<Seal>> {
        self.seal.clone()
    }
}

/// What the fake server saw.
#[derive(Default)]
struct Log {
    parts: Mutex<Vec<(u64, u64, u64)>>,
    completed: Mutex<Option<Vec<u64>>>,
    aborted: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    opened: AtomicUsize,
    attempts: AtomicU64,
}

struct Fake<'a> {
    log: &'a Log,
    layout: Layout,
    /// Part index that fails for good.
    fail_part: Option<u64>,
    /// Part index whose first attempt is retried.
    flaky_part: Option<u64>,
    /// Parts the server already holds.
    done: Vec<u64>,
    /// Parts wait this long, to see how many are in flight.
    delay: Duration,
}

impl Fake<'_> {
    fn new(log: &Log, layout: Layout) -> Fake<'_> {
        Fake {
            log,
            layout,
            fail_part: None,
            flaky_part: None,
            done: Vec::new(),
            delay: Duration::from_millis(5),
        }
    }
}

/// The session: the log and how parts behave.
struct FakeSession<'a> {
    log: &'a Log,
    fail_part: Option<u64>,
    flaky_part: Option<u64>,
    delay: Duration,
}

#[async_trait]
impl<'a> PartProtocol for Fake<'a> {
    type Session = FakeSession<'a>;
    async fn open(&self, _req: &UploadRequest, _round: u32) -> Result<Open<FakeSession<'a>>> {
        self.log.opened.fetch_add(1, Ordering::SeqCst);
        Ok(Open::Session(Opened {
            session: FakeSession {
                log: self.log,
                fail_part: self.fail_part,
                flaky_part: self.flaky_part,
                delay: self.delay,
            },
            id: "s1".to_string(),
            layout: self.layout.clone(),
            done: self.done.iter().map(|i| (*i, *i)).collect(),
        }))
    }
}

#[async_trait]
impl PartSession for FakeSession<'_> {
    type Receipt = u64;
    type Output = Vec<u64>;
    async fn put_part(&self, part: &Part, attempt: u32) -> Attempt<u64> {
        let log = self.log;
        log.attempts.fetch_add(1, Ordering::SeqCst);
        let now = log.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        log.most_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        log.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.fail_part == Some(part.index) {
            return Attempt::Fail(TargetError::protocol("refused"));
        }
        if self.flaky_part == Some(part.index) && attempt == 1 {
            return Attempt::again("flaky");
        }
        assert_eq!(part.bytes().map(|b| b.len() as u64), Some(part.len));
        log.parts
            .lock()
            .unwrap()
            .push((part.index, part.offset, part.len));
        Attempt::Done(part.index)
    }
    async fn complete(&self, receipts: Vec<(u64, u64)>, _sealed: &Sealed) -> Result<Vec<u64>> {
        let order: Vec<u64> = receipts.iter().map(|(_, r)| *r).collect();
        *self.log.completed.lock().unwrap() = Some(order.clone());
        Ok(order)
    }
    async fn abort(&self) {
        self.log.aborted.fetch_add(1, Ordering::SeqCst);
    }
}

fn layout(plan: PartPlan, flow: Flow) -> Layout {
    Layout {
        label: "fake",
        plan,
        flow,
        part_sha1: false,
        streamed: false,
        last_part_completes: false,
    }
}

fn request(src: Arc<dyn PartSource>, size: u64) -> UploadRequest {
    UploadRequest {
        parent: None,
        name: "f".to_string(),
        size,
        digests: Digests::default(),
        mtime_ms: 0,
        replaces: None,
        resume_session: None,
        source: src,
        observer: Arc::new(ByteCounter::default()),
    }
}

const POLICY: RetryPolicy = RetryPolicy {
    budget: Duration::from_secs(5),
    health: None,
};

#[tokio::test]
async fn in_order_protocols_get_one_part_at_a_time_in_order() {
    let log = Log::default();
    let fake = Fake::new(&log, layout(PartPlan::fixed(10), Flow::InOrder));
    let src = Feed::new(vec![1; 95], None);
    let out = drive(POLICY, &fake, &request(src, 95)).await.unwrap();
    assert_eq!(out, (0..10).collect::<Vec<_>>());
    let parts = log.parts.lock().unwrap().clone();
    assert_eq!(
        parts.iter().map(|p| p.0).collect::<Vec<_>>(),
        out,
        "sent in order"
    );
    assert_eq!(parts[9], (9, 90, 5), "the last part is short");
    assert_eq!(log.most_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn parallel_protocols_stay_within_their_bound_and_complete_in_order() {
    let log = Log::default();
    let mut fake = Fake::new(&log, layout(PartPlan::fixed(10), Flow::Parallel(3)));
    fake.delay = Duration::from_millis(30);
    fake.flaky_part = Some(4);
    let src = Feed::new(vec![1; 200], None);
    let out = drive(POLICY, &fake, &request(src, 200)).await.unwrap();
    assert_eq!(out, (0..20).collect::<Vec<_>>(), "receipts in part order");
    assert_eq!(log.most_in_flight.load(Ordering::SeqCst), 3);
    assert_eq!(
        log.attempts.load(Ordering::SeqCst),
        21,
        "only the flaky part again"
    );
    assert_eq!(log.aborted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_failed_part_aborts_the_session() {
    let log = Log::default();
    let mut fake = Fake::new(&log, layout(PartPlan::fixed(10), Flow::Parallel(2)));
    fake.fail_part = Some(3);
    let src = Feed::new(vec![1; 100], None);
    let e = drive(POLICY, &fake, &request(src, 100)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol);
    assert_eq!(log.aborted.load(Ordering::SeqCst), 1);
    assert!(log.completed.lock().unwrap().is_none());
}

#[tokio::test]
async fn a_cancelled_seal_aborts_at_once() {
    let log = Log::default();
    let fake = Fake::new(&log, layout(PartPlan::fixed(10), Flow::Parallel(2)));
    let seal = Seal::new();
    let src = Feed::new(vec![1; 100], Some(seal.clone()));
    src.arrive(30);
    let req = request(src.clone(), 100);
    let run = drive(POLICY, &fake, &req);
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seal.cancel();
    };
    let (r, ()) = tokio::join!(run, cancel);
    assert_eq!(r.unwrap_err().kind, ErrorKind::Cancelled);
    assert_eq!(log.aborted.load(Ordering::SeqCst), 1);
    assert_eq!(
        log.parts.lock().unwrap().len(),
        3,
        "what had arrived went up"
    );
    assert!(log.completed.lock().unwrap().is_none());
}

#[tokio::test]
async fn an_unknown_size_is_resolved_at_the_seal() {
    // The seal lands before, between and after the parts are read.
    for pause in [0u64, 3, 50] {
        for total in [0usize, 25, 30] {
            let log = Log::default();
            let fake = Fake::new(&log, layout(PartPlan::fixed(10), Flow::Parallel(2)));
            let seal = Seal::open_ended();
            let src = Feed::new(vec![1; total], Some(seal.clone()));
            // The request's size means nothing for an open-ended seal.
            let req = request(src.clone(), 0);
            let writer = async {
                src.arrive(total.min(20));
                tokio::time::sleep(Duration::from_millis(pause)).await;
                src.arrive(total);
                seal.seal_sized(total as u64, Digests::default());
            };
            let (r, ()) = tokio::join!(drive(POLICY, &fake, &req), writer);
            let want: Vec<u64> = (0..(total as u64).div_ceil(10)).collect();
            let got = r.unwrap_or_else(|e| panic!("{total} bytes, sealed after {pause} ms: {e}"));
            assert_eq!(got, want, "{total} bytes");
            let sent: u64 = log.parts.lock().unwrap().iter().map(|p| p.2).sum();
            assert_eq!(
                sent, total as u64,
                "no empty or missing part for {total} bytes"
            );
        }
    }
}

#[tokio::test]
async fn a_sealed_size_that_disagrees_with_the_data_fails() {
    let log = Log::default();
    let fake = Fake::new(&log, layout(PartPlan::fixed(10), Flow::InOrder));
    let seal = Seal::open_ended();
    let src = Feed::new(vec![1; 25], Some(seal.clone()));
    src.arrive(25);
    seal.seal_sized(40, Digests::default());
    let e = drive(POLICY, &fake, &request(src, 0)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::LocalIo);
    assert_eq!(log.aborted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn growing_parts_follow_the_plan() {
    let log = Log::default();
    let plan = PartPlan::growing(4, 2, 16, 100);
    let fake = Fake::new(&log, layout(plan, Flow::InOrder));
    let src = Feed::new(vec![1; 60], None);
    drive(POLICY, &fake, &request(src, 60)).await.unwrap();
    let lens: Vec<u64> = log.parts.lock().unwrap().iter().map(|p| p.2).collect();
    assert_eq!(lens, vec![4, 4, 8, 8, 16, 16, 4]);
    assert_eq!(plan.count(60), 7);
    assert_eq!(plan.offset(6), 56);
}

#[test]
fn the_s3_plan_covers_five_tib_in_ten_thousand_parts() {
    const MIB: u64 = 1 << 20;
    let plan = PartPlan::growing(8 * MIB, 1000, 5 << 30, 10_000);
    assert!(plan.count(5 << 40) <= 10_000);
    assert_eq!(plan.part_size(0), 8 * MIB);
    assert_eq!(plan.part_size(999), 8 * MIB);
    assert_eq!(plan.part_size(1000), 16 * MIB);
    assert_eq!(plan.offset(1000), 1000 * 8 * MIB);
    for i in [0, 1, 999, 1000, 5000, 9999] {
        assert_eq!(plan.offset(i + 1) - plan.offset(i), plan.part_size(i));
    }
}

#[tokio::test]
async fn a_resumed_session_sends_only_the_missing_parts() {
    let log = Log::default();
    let mut fake = Fake::new(&log, layout(PartPlan::fixed(10), Flow::Parallel(4)));
    fake.done = vec![0, 2, 3];
    let src = Feed::new(vec![1; 50], None);
    let out = drive(POLICY, &fake, &request(src, 50)).await.unwrap();
    assert_eq!(out, vec![0, 1, 2, 3, 4], "done receipts merged in order");
    let mut sent: Vec<u64> = log.parts.lock().unwrap().iter().map(|p| p.0).collect();
    sent.sort();
    assert_eq!(sent, vec![1, 4]);
}

#[tokio::test]
async fn too_many_parts_is_too_large() {
    let log = Log::default();
    let plan = PartPlan::growing(10, u64::MAX, 10, 3);
    let fake = Fake::new(&log, layout(plan, Flow::InOrder));
    let src = Feed::new(vec![1; 35], None);
    let e = drive(POLICY, &fake, &request(src, 35)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge);
}
