//! The HTTP admin surface (issue #9), on `admin.listen` (loopback by
//! default, off when empty): `/health` (200 while the upstream and, when
//! L1 needs it, the tracking connection are up; 503 with the reason
//! otherwise) and `/metrics` (the proxy's counters and gauges in the
//! Prometheus / OpenMetrics text format, labelled by namespace and codec).
//! It reads the same counters as `INFO cache` and never takes a lock the
//! request path holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::protocol::Protocol;
use crate::session::Shared;
use crate::shutdown::Shutdown;

/// The OpenMetrics content type Prometheus asks for.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the admin endpoints on `listener` until shutdown.
pub fn start(listener: TcpListener, shared: Arc<Shared>, mut shutdown: Shutdown) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(shared);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.triggered().await })
            .await;
        if let Err(error) = served {
            tracing::error!("the HTTP admin listener failed: {error}");
        }
    });
}

/// 200 `{"status":"ok",...}` while the upstream answers (a pooled
/// connection is up) and L1's invalidations flow (when a strict namespace
/// needs them); 503 with the reason otherwise.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let db = shared.pools.target().db;
    let upstream = match shared.pools.get(db, Protocol::Resp2).connection(0).await {
        Ok(_) => Ok(()),
        Err(error) => Err(format!("upstream unavailable: {}", error.client_message())),
    };
    let needs_tracking = shared.l1.as_ref().is_some_and(|l1| l1.store.namespaces().any_strict());
    let tracking = match &shared.l1 {
        Some(l1) if needs_tracking && !l1.store.is_accepting() => {
            Err("tracking connection down: L1 serves no strict namespace until it is back".to_string())
        }
        _ => Ok(()),
    };
    let problems: Vec<String> = [&upstream, &tracking]
        .into_iter()
        .filter_map(|result| result.as_ref().err().cloned())
        .collect();
    let body = serde_json::json!({
        "status": if problems.is_empty() { "ok" } else { "unavailable" },
        "upstream": if upstream.is_ok() { "up" } else { "down" },
        "tracking": match (needs_tracking, tracking.is_ok()) {
            (false, _) => "not used",
            (true, true) => "up",
            (true, false) => "down",
        },
        "reasons": problems,
    });
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Labels of a metric: (name, value) pairs.
type Labels = Vec<(String, String)>;

/// Builds a registry of what the proxy counts now, for one scrape.
struct Scrape {
    registry: Registry,
}

impl Scrape {
    fn counter(&mut self, name: &str, help: &str, values: impl IntoIterator<Item = (Labels, u64)>) {
        let family = Family::<Labels, Counter>::default();
        for (labels, value) in values {
            family.get_or_create(&labels).inc_by(value);
        }
        self.registry.register(name, help, family);
    }

    fn gauge(&mut self, name: &str, help: &str, values: impl IntoIterator<Item = (Labels, u64)>) {
        let family = Family::<Labels, Gauge>::default();
        for (labels, value) in values {
            family
                .get_or_create(&labels)
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        self.registry.register(name, help, family);
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn none() -> Labels {
    Vec::new()
}

fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

/// `/metrics`: counters (`*_total`) and gauges, in OpenMetrics text.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut scrape = Scrape {
        registry: Registry::with_prefix("auracache"),
    };
    let stats = &shared.stats;
    scrape.gauge("clients", "Clients connected", [(none(), stats.clients() as u64)]);
    scrape.counter(
        "clients_accepted",
        "Clients accepted",
        [(none(), stats.clients_total())],
    );
    scrape.counter(
        "clients_rejected",
        "Clients refused over limits.max_clients",
        [(none(), stats.clients_rejected())],
    );
    scrape.gauge(
        "upstream_connections",
        "Connections to Redis, by kind",
        [
            (label("kind", "pooled"), stats.upstream_pooled() as u64),
            (label("kind", "dedicated"), stats.upstream_dedicated() as u64),
            (label("kind", "tracking"), stats.upstream_tracking() as u64),
        ],
    );
    scrape.counter(
        "upstream_errors",
        "Requests failed for want of Redis",
        [(none(), stats.upstream_errors())],
    );
    scrape.counter(
        "protocol_errors",
        "Clients cut off for malformed requests",
        [(none(), stats.protocol_errors())],
    );
    if let Some(l1) = &shared.l1 {
        let namespaces = l1.store.namespaces().all();
        let per = |pick: fn(&crate::cache::L1Stats) -> &AtomicU64| {
            namespaces
                .iter()
                .map(move |namespace| (label("namespace", namespace.name()), load(pick(&namespace.stats))))
                .collect::<Vec<_>>()
        };
        scrape.counter("l1_hits", "Reads answered from L1", per(|stats| &stats.hits));
        scrape.counter("l1_misses", "Reads L1 could not answer", per(|stats| &stats.misses));
        scrape.counter("l1_fills", "Replies stored in L1", per(|stats| &stats.fills));
        scrape.counter(
            "l1_evictions",
            "L1 entries evicted for room",
            per(|stats| &stats.evictions),
        );
        scrape.counter("l1_expirations", "L1 entries expired", per(|stats| &stats.expirations));
        scrape.counter(
            "l1_invalidations",
            "L1 invalidations (writes, Redis's messages)",
            per(|stats| &stats.invalidations),
        );
        scrape.gauge(
            "l1_entries",
            "Keys with replies in L1",
            namespaces
                .iter()
                .map(|namespace| (label("namespace", namespace.name()), load(&namespace.entries))),
        );
        scrape.gauge(
            "l1_bytes",
            "Bytes L1's entries cost",
            namespaces
                .iter()
                .map(|namespace| (label("namespace", namespace.name()), load(&namespace.bytes))),
        );
        scrape.gauge("l1_max_bytes", "L1's byte bound", [(none(), l1.store.capacity())]);
        let totals = l1.store.stats();
        scrape.counter(
            "preload_stored",
            "Entries the preloader stored or made to last",
            [(none(), load(&totals.preloads))],
        );
        scrape.counter(
            "preload_hits",
            "Preloaded entries hit at least once",
            [(none(), load(&totals.preload_hits))],
        );
        scrape.counter(
            "preload_waste",
            "Preloaded entries dropped unused",
            [(none(), load(&totals.preload_waste))],
        );
    }
    if let Some(compression) = &shared.compression {
        let all = compression.stats.snapshot();
        let per = |pick: fn(&crate::codec::CodecStats) -> &AtomicU64| {
            all.iter()
                .map(move |(codec, namespace, stats)| {
                    (
                        vec![
                            ("algorithm".to_string(), codec.name().to_string()),
                            ("namespace".to_string(), namespace.to_string()),
                        ],
                        load(pick(stats)),
                    )
                })
                .collect::<Vec<_>>()
        };
        scrape.counter(
            "compression_values",
            "Values stored compressed",
            per(|stats| &stats.compressed),
        );
        scrape.counter(
            "compression_bytes_in",
            "Bytes of the compressed values before compression",
            per(|stats| &stats.bytes_in),
        );
        scrape.counter(
            "compression_bytes_out",
            "Bytes of the compressed values as stored",
            per(|stats| &stats.bytes_out),
        );
        scrape.counter("compression_decoded", "Envelopes decoded", per(|stats| &stats.decoded));
    }
    if let Some(patterns) = &shared.patterns {
        let stats = patterns.stats();
        scrape.gauge(
            "pattern_keys_tracked",
            "Keys the pattern engine tracks",
            [(none(), load(&stats.tracked))],
        );
        scrape.counter(
            "pattern_events",
            "Reads handed to the pattern engine",
            [(none(), load(&stats.events))],
        );
        scrape.counter(
            "pattern_events_dropped",
            "Reads dropped (the engine's queue full)",
            [(none(), load(&stats.dropped))],
        );
    }
    if let Some(preload) = &shared.preload {
        let stats = preload.stats();
        scrape.counter("preload_runs", "Preloader runs", [(none(), preload.runs())]);
        scrape.counter(
            "preload_fetched",
            "Keys the preloader fetched into L1",
            [(none(), load(&stats.fetched))],
        );
        scrape.counter(
            "preload_absent",
            "Predicted keys absent in Redis",
            [(none(), load(&stats.absent))],
        );
    }
    let mut text = String::new();
    if encode(&mut text, &scrape.registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "metrics could not be encoded").into_response();
    }
    ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
}
