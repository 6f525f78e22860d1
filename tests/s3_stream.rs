//! Parts streamed from the first write (S3, a real SeaweedFS from tests/common/s3.rs): a
//! sequential writer's parts go up as multipart parts while it is still writing, nothing
//! is visible before `close()`, and `close()` completes the upload. A writer that goes
//! back over bytes already sent falls back to the stage: the file lands once, with what
//! was written last, and no multipart upload is left behind.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use common::pattern;
use common::remote::Remote;

const MIB: usize = 1 << 20;

/// The S3 bucket behind a remote.
fn s3(r: &Remote) -> &common::remote::S3Remote {
    match r {
        Remote::S3(s) => s,
        Remote::Serve { .. } => unreachable!("an S3 bucket"),
    }
}

/// Wait until a multipart upload with at least one stored part exists; its part count.
fn wait_for_parts(r: &Remote, timeout: Duration) -> usize {
    let s3 = s3(r);
    let client = s3.target.client();
    let deadline = Instant::now() + timeout;
    loop {
        let pending = s3
            .rt
            .block_on(client.list_multipart_uploads(""))
            .expect("list uploads");
        for p in &pending {
            let parts = s3
                .rt
                .block_on(client.list_parts(&p.key, &p.upload_id))
                .expect("list parts");
            if !parts.is_empty() {
                return parts.len();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no part went up while the file was written ({} multipart uploads open)",
            pending.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn parts_go_up_while_the_file_is_written() {
    let r = Remote::s3("stream");
    let m = r.mount("", &[]);
    // Three 8 MiB parts and a tail; the writer keeps the file open between its writes.
    let data = pattern(24 * MIB + 12_345, 7);
    let mut f = std::fs::File::create(m.path("big.bin")).unwrap();
    f.write_all(&data[..17 * MIB]).unwrap();
    let parts = wait_for_parts(&r, Duration::from_secs(60));
    assert!(parts >= 1, "parts stored before close: {parts}");
    assert!(
        r.find("big.bin").is_none(),
        "nothing is visible before close()"
    );
    f.write_all(&data[17 * MIB..]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    r.assert_stored("big.bin", &data);
    assert_eq!(
        s3(&r).pending_uploads(),
        0,
        "the multipart upload completed"
    );
    // A file under one part is one PutObject at close: no multipart upload at all.
    let small = pattern(100_000, 3);
    std::fs::write(m.path("small.bin"), &small).unwrap();
    r.assert_stored("small.bin", &small);
    assert_eq!(s3(&r).pending_uploads(), 0);
}

#[test]
fn a_writer_that_goes_back_is_uploaded_from_the_stage() {
    let r = Remote::s3("seekback");
    let m = r.mount("", &[]);
    let mut data = pattern(18 * MIB + 5, 9);
    let mut f = std::fs::File::create(m.path("edited.bin")).unwrap();
    f.write_all(&data).unwrap();
    wait_for_parts(&r, Duration::from_secs(60));
    // Rewrite bytes the upload already sent: the streamed upload is given up.
    f.seek(SeekFrom::Start(10)).unwrap();
    f.write_all(b"rewritten").unwrap();
    data[10..19].copy_from_slice(b"rewritten");
    drop(f);
    r.assert_stored("edited.bin", &data);
    let keys: Vec<String> = s3(&r).objects().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, vec!["edited.bin".to_string()], "landed once");
    assert_eq!(
        s3(&r).pending_uploads(),
        0,
        "the given-up upload was aborted"
    );
}
