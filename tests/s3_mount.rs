//! S3 through the mount, beyond the shared scenario (tests/mount_scenarios.rs runs that one
//! on S3 too): write-back mode killed with SIGKILL in the middle of a multipart upload,
//! then recovery on the next mount — every closed file lands once, byte-identical, the
//! journaled upload resumes from the parts the server holds, no multipart upload is left
//! behind, and a file still open at the kill is not uploaded. Checked through our S3
//! client's listing, as any S3 program sees the bucket. Needs /dev/fuse and root or
//! fusermount3, and SeaweedFS (tests/common/s3.rs).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::mount::{sh, Mount};
use common::remote::Remote;
use common::{pattern, sha1_hex};

const MIB: usize = 1024 * 1024;

#[test]
fn write_back_sigkill_then_remount_lands_each_closed_file_once() {
    let r = Remote::s3("wbkill");
    let Remote::S3(s3) = &r else {
        unreachable!("an S3 remote")
    };
    let work = r.work().to_path_buf();
    let cfg = r.config("", 5);
    let mut m = Mount::with_config(&work, "t", &cfg, &["--write-back"]);
    let src = work.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut want = BTreeMap::new();
    // 160 MiB is a multipart upload of twenty 8 MiB parts: still running at the kill.
    let big = pattern(160 * MIB, 10);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    want.insert("big.bin".to_string(), big);
    for i in 0..8 {
        let data = pattern(2 * MIB, 20 + i);
        std::fs::write(src.join(format!("m{i}.bin")), &data).unwrap();
        want.insert(format!("m{i}.bin"), data);
    }
    sh(&work, "cp src/big.bin mnt/ && cp src/m*.bin mnt/");
    // A writer that never closes (held open by this process until after the kill).
    let mut holder = std::fs::File::create(m.dir.join("open.bin")).unwrap();
    std::io::Write::write_all(&mut holder, b"data").unwrap();
    m.wait_pending("a part of big.bin", Duration::from_secs(60), |st| {
        st.get("/big.bin")
            .is_some_and(|f| f["parts_done"].as_u64().unwrap_or(0) >= 1)
    });
    m.kill();
    drop(holder);
    let at_kill = r.stored();
    assert!(
        !at_kill.contains_key("big.bin"),
        "big.bin landed before the kill; the test proves nothing"
    );
    // Remount on the dead mountpoint: recovery runs behind it.
    m.mount();
    assert_eq!(m.state_of("open.bin").as_deref(), Some("incomplete"));
    let digests: BTreeMap<String, (u64, String)> = want
        .iter()
        .map(|(n, d)| (n.clone(), (d.len() as u64, sha1_hex(d))))
        .collect();
    r.wait_stored(&digests, Duration::from_secs(180));
    m.wait_pending("recovery to finish", Duration::from_secs(60), |st| {
        st.values()
            .all(|f| f["state"] != "queued" && f["state"] != "uploading")
    });
    m.unmount();
    let files = r.stored();
    assert!(
        !files.contains_key("open.bin"),
        "a never-closed file was uploaded"
    );
    assert_eq!(files.len(), want.len(), "{files:?}");
    assert_eq!(
        s3.pending_uploads(),
        0,
        "a multipart upload was left behind"
    );
    let log = m.log();
    assert!(
        log.contains("resuming a journaled multipart upload"),
        "the journaled upload of big.bin was not resumed"
    );
}
