//! The proxy's own answers for operators. Today: the `# Cache` section of
//! `INFO`, in Redis's INFO format so existing parsers read it.

use std::fmt::Write;

use crate::stats::Stats;

/// The `INFO cache` section: `# Cache` then `field:value` lines, CRLF-ended.
pub fn info_cache(stats: &Stats) -> String {
    let fields: [(&str, u64); 8] = [
        ("clients_connected", stats.clients() as u64),
        ("clients_total", stats.clients_total()),
        ("clients_rejected", stats.clients_rejected()),
        ("upstream_connections_pooled", stats.upstream_pooled() as u64),
        ("upstream_connections_dedicated", stats.upstream_dedicated() as u64),
        ("upstream_connections_tracking", stats.upstream_tracking() as u64),
        ("upstream_errors", stats.upstream_errors()),
        ("protocol_errors", stats.protocol_errors()),
    ];
    let mut text = String::from("# Cache\r\n");
    for (name, value) in fields {
        let _ = write!(text, "{name}:{value}\r\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ConnectionKind;

    #[test]
    fn info_cache_reads_like_redis_info() {
        let stats = Stats::default();
        stats.connection_opened(ConnectionKind::Pooled);
        let text = info_cache(&stats);
        assert!(text.starts_with("# Cache\r\n"));
        assert!(text.contains("upstream_connections_pooled:1\r\n"));
        for line in text.split("\r\n").skip(1).filter(|line| !line.is_empty()) {
            let (name, value) = line.split_once(':').expect("field:value");
            assert!(!name.is_empty() && value.parse::<u64>().is_ok(), "{line}");
        }
    }
}
