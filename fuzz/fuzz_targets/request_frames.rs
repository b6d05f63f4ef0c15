//! The request frame reader: whatever the bytes, scanning them as they
//! arrive in two pieces finds the same frames (and the same error) as
//! scanning them at once, and every multibulk frame it accepts decodes into
//! exactly the arguments it announced.
#![no_main]

use auracache::protocol::{Command, RequestFrame, RequestLimits, RequestScanner};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

const LIMITS: RequestLimits = RequestLimits {
    max_bulk_bytes: 1 << 16,
    max_multibulk_len: 1 << 10,
    max_inline_bytes: 1 << 12,
};

/// Frames (their lengths) and whether scanning ended in an error, feeding
/// `data` in pieces that end at `cuts`.
fn scan(data: &[u8], cuts: &[usize]) -> (Vec<usize>, bool) {
    let mut scanner = RequestScanner::new(LIMITS);
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        buf.extend_from_slice(&data[fed..cut.max(fed)]);
        fed = cut.max(fed);
        loop {
            match scanner.scan(&buf) {
                Ok(Some(frame)) => {
                    let len = frame.len();
                    assert!(len > 0 && len <= buf.len(), "a frame of {len} in {}", buf.len());
                    if let RequestFrame::Multibulk { argc, .. } = frame {
                        let wire = Bytes::copy_from_slice(&buf[..len]);
                        let mut command = Command::decode(frame, wire).expect("an accepted frame decodes");
                        command.decode_args().expect("its arguments decode");
                        assert_eq!(command.args().len(), argc);
                        assert_eq!(command.name(), &command.args()[0][..]);
                    }
                    frames.push(len);
                    buf.drain(..len);
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
    let whole = scan(data, &[]);
    let pieces = scan(data, &[cut]);
    assert_eq!(whole, pieces, "split at {cut}");
});
