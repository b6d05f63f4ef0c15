//! The envelope decoder: any stored bytes decode or are refused without
//! panicking or allocating past the limit; and what the proxy stores for
//! any value (compressed, escaped or raw) decodes back to exactly it.
#![no_main]

use std::sync::OnceLock;

use auracache::codec::{Compression, envelope};
use auracache::config::{CompressionAlgorithm, Config};
use libfuzzer_sys::fuzz_target;

const LIMIT: u64 = 1 << 20;

fn stages() -> &'static [Compression] {
    static STAGES: OnceLock<Vec<Compression>> = OnceLock::new();
    STAGES.get_or_init(|| {
        [CompressionAlgorithm::Zstd, CompressionAlgorithm::Gzip, CompressionAlgorithm::Zlib]
            .into_iter()
            .map(|algorithm| {
                let mut config = Config::default();
                config.compression.enabled = true;
                config.compression.threshold = 0;
                config.compression.min_savings = 0.0;
                config.compression.algorithm = algorithm;
                config.compression.level = 1;
                config.limits.max_value_bytes = LIMIT;
                Compression::new(&config)
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    // Anything Redis may hold.
    if let Ok(Some(value)) = envelope::decode(data, LIMIT) {
        assert!(value.len() as u64 <= LIMIT);
    }
    // What the proxy stores reads back as written.
    let Some((&pick, value)) = data.split_first() else {
        return;
    };
    let stage = &stages()[usize::from(pick) % 3];
    let key = b"doc:1";
    let stored = stage.encode(key, value).map(|bytes| bytes.to_vec());
    match stored {
        Some(stored) => {
            let back = stage.decode(key, &stored).expect("what the proxy stored decodes");
            assert_eq!(back.as_deref(), Some(value), "an envelope of the value");
        }
        None => {
            // Stored as it is: it must not look like an envelope.
            assert_eq!(stage.decode(key, value).expect("raw values decode"), None);
        }
    }
    assert_eq!(envelope::decode(&envelope::escape(value), LIMIT).unwrap().as_deref(), Some(value));
});
