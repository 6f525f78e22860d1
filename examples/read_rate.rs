//! The target's own rate of small ranged reads with no mount in the way: what the mount's
//! cold random reads can reach at most, since each read the cache misses becomes one such
//! request. `scripts/bench.sh` runs it beside `fio` on the same file.
//!
//! `read_rate CONFIG TARGET:PATH BLOCK READERS SECONDS` reads BLOCK-byte ranges at random
//! BLOCK-aligned offsets of the file, READERS requests in flight, for SECONDS, through the
//! same target code the mount uses, and prints the number of reads done.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A xorshift64 step: offsets only need to be spread, not unpredictable.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, src, block, readers, seconds] = args.as_slice() else {
        bail!("usage: read_rate CONFIG TARGET:PATH BLOCK READERS SECONDS");
    };
    let block: u64 = block.parse().context("BLOCK")?;
    let readers: u64 = readers.parse().context("READERS")?;
    let seconds: u64 = seconds.parse().context("SECONDS")?;
    let (tname, path) = src
        .split_once(':')
        .context("give the remote file as TARGET:PATH")?;
    let open = uploadfs::open::open_target(tname, Some(&PathBuf::from(config)), false).await?;
    let file = uploadfs::put::find_remote(open.target.as_ref(), path).await?;
    let blocks = file.size / block;
    if blocks == 0 {
        bail!("{src} is smaller than one block");
    }
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..readers {
        let (target, file, done) = (open.target.clone(), file.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (i + 1);
            while Instant::now() < end {
                let off = (next(&mut state) % blocks) * block;
                let got = target.read_range(&file, off, block).await?;
                if got.len() as u64 != block {
                    bail!("read at {off}: {} bytes, expected {block}", got.len());
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!("{}", done.load(Ordering::Relaxed));
    Ok(())
}
