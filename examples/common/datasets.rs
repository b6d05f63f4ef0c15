//! Realistic values, generated deterministically: shared by the
//! compression report and the mixed-workload report (`#[path]` modules).

#![allow(dead_code)]

/// A small deterministic generator (xorshift), so every run builds the
/// same data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "order",
    "payment",
    "shipped",
    "delayed",
    "customer",
    "requested",
    "refund",
    "because",
    "the",
    "item",
    "was",
    "damaged",
    "on",
    "arrival",
    "please",
    "contact",
    "support",
    "with",
    "your",
    "reference",
    "number",
    "invoice",
    "pending",
    "approved",
    "warehouse",
    "region",
    "north",
    "south",
    "priority",
    "standard",
    "express",
];

/// `least` to `least + spread - 1` words.
pub fn sentence(rng: &mut Rng, least: u64, spread: u64) -> String {
    let words = least + rng.below(spread);
    (0..words).map(|_| rng.pick(WORDS)).collect::<Vec<_>>().join(" ")
}

pub fn timestamp(rng: &mut Rng) -> String {
    format!(
        "2026-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        1 + rng.below(12),
        1 + rng.below(28),
        rng.below(24),
        rng.below(60),
        rng.below(60),
        rng.below(1000)
    )
}

/// One JSON report of about `size` bytes.
pub fn json_report(rng: &mut Rng, size: usize) -> String {
    let mut out = format!(
        "{{\"report_id\":\"rpt-{:08x}\",\"generated_at\":\"{}\",\"records\":[",
        rng.next() as u32,
        timestamp(rng)
    );
    while out.len() < size {
        out.push_str(&format!(
            "{{\"id\":{},\"customer_id\":\"cus_{:06}\",\"status\":\"{}\",\"amount\":{}.{:02},\"currency\":\"{}\",\"created_at\":\"{}\",\"tags\":[\"{}\",\"{}\"],\"note\":\"{}\"}},",
            rng.below(10_000_000),
            rng.below(1_000_000),
            rng.pick(&["paid", "pending", "refunded", "failed"]),
            rng.below(5000),
            rng.below(100),
            rng.pick(&["EUR", "USD", "GBP"]),
            timestamp(rng),
            rng.pick(WORDS),
            rng.pick(WORDS),
            sentence(rng, 4, 10)
        ));
    }
    out.push_str("{}]}");
    out
}

/// Log lines making up about `size` bytes.
pub fn log_batch(rng: &mut Rng, size: usize) -> String {
    let mut out = String::new();
    while out.len() < size {
        if rng.below(2) == 0 {
            out.push_str(&format!(
                "10.{}.{}.{} - - [{}] \"{} /api/v1/{}/{} HTTP/1.1\" {} {} {:.3}ms\n",
                rng.below(256),
                rng.below(256),
                rng.below(256),
                timestamp(rng),
                rng.pick(&["GET", "POST", "PUT", "DELETE"]),
                rng.pick(&["orders", "users", "payments", "reports"]),
                rng.below(100_000),
                rng.pick(&["200", "200", "201", "404", "500"]),
                rng.below(20_000),
                rng.below(500_000) as f64 / 1000.0
            ));
        } else {
            out.push_str(&format!(
                "{} {} [{}] request_id={:016x} {}\n",
                timestamp(rng),
                rng.pick(&["INFO", "INFO", "WARN", "ERROR", "DEBUG"]),
                rng.pick(&["billing", "checkout", "auth", "inventory"]),
                rng.next(),
                sentence(rng, 6, 12)
            ));
        }
    }
    out
}

/// Metric series of about `size` bytes.
pub fn analytics(rng: &mut Rng, size: usize) -> String {
    let mut out = String::from("{\"series\":[");
    while out.len() < size {
        let mut base = rng.below(1000) as i64;
        let points: Vec<String> = (0..60)
            .map(|_| {
                base += rng.below(21) as i64 - 10;
                base.to_string()
            })
            .collect();
        out.push_str(&format!(
            "{{\"metric\":\"{}\",\"labels\":{{\"region\":\"{}\",\"service\":\"{}\"}},\"start\":\"{}\",\"step_s\":60,\"values\":[{}]}},",
            rng.pick(&["requests_total", "latency_p99_ms", "errors_total", "cpu_percent", "queue_depth"]),
            rng.pick(&["eu-west-1", "us-east-1", "ap-south-1"]),
            rng.pick(&["api", "worker", "db", "cache"]),
            timestamp(rng),
            points.join(",")
        ));
    }
    out.push_str("{}]}");
    out
}
