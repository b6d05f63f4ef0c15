//! The key rewriter: any command a client sends is either refused or
//! rewritten so that every key it changed (patterns aside) maps back to
//! the client's name, without panicking.
#![no_main]

use std::sync::OnceLock;

use auracache::config::Config;
use auracache::keys::versions::{Mapped, Versioning};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "GET", "SET", "MGET", "MSET", "DEL", "RENAME", "COPY", "EVAL", "EVALSHA", "FCALL", "SCAN", "KEYS",
    "SORT", "OBJECT", "XREAD", "ZUNIONSTORE", "LMOVE", "BLPOP", "MIGRATE", "GEORADIUS", "BITOP", "HSET",
    "EXISTS", "SUBSCRIBE", "CLIENT", "MEMORY", "PUBSUB", "WATCH", "SINTERCARD", "LMPOP",
];

fn versions() -> &'static Versioning {
    static VERSIONS: OnceLock<Versioning> = OnceLock::new();
    VERSIONS.get_or_init(|| {
        let mut config = Config::default();
        let app = config.namespaces.entry("app".into()).or_default();
        app.version = Some(2);
        app.fallback_versions = vec![1];
        Versioning::from_config(&config).expect("a versioned namespace")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mut args = vec![Bytes::from_static(NAMES[usize::from(pick) % NAMES.len()].as_bytes())];
    // Arguments separated by NUL; one starting with 'a' is put in the namespace.
    for arg in rest.split(|byte| *byte == 0).take(16) {
        let arg = match arg.first() {
            Some(b'a') => [b"app:".as_slice(), &arg[1..]].concat(),
            _ => arg.to_vec(),
        };
        args.push(Bytes::from(arg));
    }
    let versions = versions();
    let Ok(rewritten) = versions.rewrite(&args, pick & 0x80 != 0, 0) else {
        return;
    };
    if let Some(new) = rewritten.args {
        assert_eq!(new.len(), args.len(), "arguments kept in number");
        for (old, new) in args.iter().zip(&new) {
            // (A glob pattern, as KEYS or SCAN MATCH take, becomes one for
            // every version: not a key to map back.)
            let pattern = [old, new].iter().any(|arg| arg.iter().any(|byte| b"*?[".contains(byte)));
            if old != new && !pattern {
                assert_eq!(versions.client_key(new), Mapped::Visible(old), "{old:?} -> {new:?}");
            }
        }
    }
});
