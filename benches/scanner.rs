//! Throughput of the frame scanners, the first thing every byte meets.
//!
//! `cargo bench --bench scanner` measures; under `cargo test` (no `--bench`
//! argument) it runs each case once as a smoke test.

use std::hint::black_box;
use std::time::{Duration, Instant};

use auracache::protocol::{Command, ReplyLimits, ReplyScanner, RequestLimits, RequestScanner, encode_array};
use bytes::{Bytes, BytesMut};

fn request_limits() -> RequestLimits {
    RequestLimits {
        max_bulk_bytes: 512 * 1024 * 1024,
        max_multibulk_len: 1024 * 1024,
        max_inline_bytes: 64 * 1024,
    }
}

fn reply_limits() -> ReplyLimits {
    ReplyLimits {
        max_nesting_depth: 1024,
        max_bulk_bytes: 512 * 1024 * 1024,
    }
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let args: Vec<Bytes> = args.iter().map(|arg| Bytes::copy_from_slice(arg)).collect();
    let mut out = BytesMut::new();
    encode_array(&mut out, &args);
    out.to_vec()
}

/// Scans every request in `wire`, as a session does after one read.
fn scan_requests(wire: &[u8]) -> usize {
    let mut scanner = RequestScanner::new(request_limits());
    let mut offset = 0;
    let mut frames = 0;
    while let Some(frame) = scanner.scan(&wire[offset..]).expect("valid") {
        offset += frame.len();
        frames += 1;
    }
    frames
}

/// Feeds one large request in 16 KiB reads, as it arrives from a socket.
fn scan_fragmented(wire: &[u8]) -> usize {
    let mut scanner = RequestScanner::new(request_limits());
    let mut end = 0;
    loop {
        end = (end + 16 * 1024).min(wire.len());
        if let Some(frame) = scanner.scan(&wire[..end]).expect("valid") {
            return frame.len();
        }
    }
}

fn scan_replies(wire: &[u8]) -> usize {
    let mut scanner = ReplyScanner::new(reply_limits());
    let mut offset = 0;
    let mut frames = 0;
    while let Some(frame) = scanner.scan(&wire[offset..]).expect("valid") {
        offset += frame.len;
        frames += 1;
        scanner = ReplyScanner::new(reply_limits());
    }
    frames
}

fn measure(name: &str, bytes: usize, measuring: bool, mut run: impl FnMut() -> usize) {
    let budget = if measuring {
        Duration::from_secs(2)
    } else {
        Duration::ZERO
    };
    let started = Instant::now();
    let mut iterations = 0u64;
    loop {
        black_box(run());
        iterations += 1;
        if started.elapsed() >= budget {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mib_per_second = (bytes as f64 * iterations as f64) / seconds / (1024.0 * 1024.0);
    println!("{name:<40} {mib_per_second:>10.0} MiB/s  ({iterations} runs)");
}

/// Scans `wire` and reads every command's arguments; their count.
fn decode_requests(wire: &[u8]) -> usize {
    let mut scanner = RequestScanner::new(request_limits());
    let wire = Bytes::copy_from_slice(wire);
    let (mut at, mut args) = (0, 0);
    while let Ok(Some(frame)) = scanner.scan(&wire[at..]) {
        let len = frame.len();
        let mut command = Command::decode(frame, wire.slice(at..at + len)).expect("a command");
        command.decode_args().expect("its arguments");
        args += command.args().len();
        at += len;
    }
    black_box(args)
}

fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");

    let mut pipeline = Vec::new();
    for i in 0..10_000 {
        let key = format!("key:{i:06}");
        pipeline.extend_from_slice(&encode(&[b"SET", key.as_bytes(), &[b'v'; 100]]));
    }
    assert_eq!(scan_requests(&pipeline), 10_000);
    measure("requests: 10k SET, 100-byte values", pipeline.len(), measuring, || {
        scan_requests(&pipeline)
    });

    // Scanned, then each command's arguments read (what the proxy does for
    // the commands it looks inside: MGET, HGET, SET under compression...).
    measure("requests: 10k SET, arguments read", pipeline.len(), measuring, || {
        decode_requests(&pipeline)
    });

    let large = encode(&[b"SET", b"big", &vec![b'x'; 8 * 1024 * 1024]]);
    measure("request: one 8 MiB SET in 16 KiB reads", large.len(), measuring, || {
        scan_fragmented(&large)
    });

    let mut replies = Vec::new();
    for i in 0..10_000 {
        let value = format!("value-{i}");
        replies.extend_from_slice(format!("${}\r\n{value}\r\n", value.len()).as_bytes());
        replies.extend_from_slice(b"*3\r\n:1\r\n%1\r\n+a\r\n,1.5\r\n_\r\n");
    }
    assert_eq!(scan_replies(&replies), 20_000);
    measure("replies: 20k mixed RESP3", replies.len(), measuring, || {
        scan_replies(&replies)
    });
}
