//! The reply path's frame reader: whatever Redis (or something pretending
//! to be it) sends, scanning it in pieces finds the same replies as at
//! once, never a frame longer than the bytes, and never panics, however
//! deep or long the announced aggregates.
#![no_main]

use auracache::protocol::{ReplyLimits, ReplyScanner};
use libfuzzer_sys::fuzz_target;

fn scan(data: &[u8], cuts: &[usize]) -> (Vec<(usize, bool)>, bool) {
    let mut scanner = ReplyScanner::new(ReplyLimits {
        max_nesting_depth: 64,
        max_bulk_bytes: 1 << 16,
    });
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        buf.extend_from_slice(&data[fed..cut.max(fed)]);
        fed = cut.max(fed);
        loop {
            match scanner.scan(&buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len > 0 && frame.len <= buf.len());
                    frames.push((frame.len, frame.push));
                    buf.drain(..frame.len);
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let cut = usize::from(split) * data.len() / 256;
    assert_eq!(scan(data, &[]), scan(data, &[cut]), "split at {cut}");
});
