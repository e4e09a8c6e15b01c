//! Metrics: consumes a run's live [`Progress`]; produces, on each scrape
//! of `GET /metrics`, the Prometheus (OpenMetrics) text exposition: rows by
//! outcome, chunk durations, the current chunk size, the throttle's state
//! and what holds it, the recent rate and the ETA, labelled with the run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::ops::run::{Phase, Progress};

/// The content type of the exposition.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` on `addr` until the returned task is aborted. Returns
/// the address bound (port 0 picks a free one).
pub async fn serve(
    addr: SocketAddr,
    progress: Arc<Progress>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .with_state(progress);
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "The metrics endpoint stopped.");
        }
    });
    Ok((bound, task))
}

async fn scrape(State(progress): State<Arc<Progress>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&progress))
}

/// The exposition of `progress`, as text.
pub fn render(progress: &Progress) -> String {
    let (run_id, name) = progress.run();
    let mut root = Registry::default();
    let registry = root.sub_registry_with_labels(
        [("run".into(), run_id.into()), ("name".into(), name.into())].into_iter(),
    );
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

    let rows = Family::<Vec<(String, String)>, Counter>::default();
    for (outcome, n) in [
        ("processed", load(&progress.done_rows)),
        ("updated", load(&progress.updated_rows)),
        ("unchanged", load(&progress.unchanged_rows)),
        ("skipped", load(&progress.skipped_rows)),
        ("failed", load(&progress.failed_rows)),
        ("conflicts", load(&progress.conflicts)),
        ("busy", load(&progress.busy_rows)),
    ] {
        rows.get_or_create(&vec![("outcome".into(), outcome.into())])
            .inc_by(n);
    }
    registry.register(
        "refill_rows",
        "Rows by outcome (processed counts from the start of the run; the others from this process's start)",
        rows,
    );
    let gauge = |v: u64| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    registry.register(
        "refill_rows_in_scope",
        "Rows the run covers",
        gauge(load(&progress.total_rows)),
    );
    let chunks = Counter::<u64>::default();
    chunks.inc_by(load(&progress.chunks_done));
    registry.register("refill_chunks_done", "Chunks finished", chunks);
    registry.register(
        "refill_chunk_duration_seconds",
        "Time of each chunk: read, transform and write",
        progress.chunk_seconds.clone(),
    );
    registry.register(
        "refill_chunk_rows",
        "Rows of the next chunk",
        gauge(load(&progress.chunk_rows)),
    );
    let status = progress.status();
    let state = Family::<Vec<(String, String)>, Gauge>::default();
    for phase in [
        Phase::Running,
        Phase::Throttled,
        Phase::Pausing,
        Phase::Paused,
        Phase::Stopping,
    ] {
        let current = phase == status.phase;
        // A word from a fixed set, so series do not multiply; the full
        // reason is in the logs and `refill status`.
        let reason = if current {
            status.cause.unwrap_or_default().to_string()
        } else {
            String::new()
        };
        state
            .get_or_create(&vec![
                ("state".into(), phase.as_str().into()),
                ("reason".into(), reason),
            ])
            .set(i64::from(current));
    }
    registry.register(
        "refill_throttle_state",
        "1 for the state the run is in (running, throttled, pausing, paused, stopping), with what holds it (rate, probe, replica-lag, write-latency, gentle, a health indicator such as vacuum or active-backends, window, paused, state-store, starting, stop)",
        state,
    );
    let float = |v: f64| {
        let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        g.set(v);
        g
    };
    registry.register(
        "refill_rows_per_second",
        "Rows per second over the last ten seconds",
        float(progress.rate().unwrap_or(0.0)),
    );
    registry.register(
        "refill_eta_seconds",
        "Time the remaining rows take at the recent rate (-1: unknown)",
        float(progress.eta().map_or(-1.0, |d| d.as_secs_f64())),
    );
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &root);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::run::Status;

    #[test]
    fn the_exposition_names_the_run_and_the_throttle_reason() {
        let p = Progress::default();
        p.set_run("20261122-000000-abcd", "quotes");
        p.done_rows.store(1500, Ordering::Relaxed);
        p.updated_rows.store(1200, Ordering::Relaxed);
        p.chunk_seconds.observe(0.3);
        p.set_status(Status {
            phase: Phase::Throttled,
            cause: Some("probe"),
            reason: Some("probe returned 3, over probe_max 1".into()),
        });
        let text = render(&p);
        let labels = "run=\"20261122-000000-abcd\",name=\"quotes\"";
        for line in [
            format!("refill_rows_total{{{labels},outcome=\"processed\"}} 1500"),
            format!("refill_rows_total{{{labels},outcome=\"updated\"}} 1200"),
            format!("refill_chunk_duration_seconds_count{{{labels}}} 1"),
            format!("refill_throttle_state{{{labels},state=\"throttled\",reason=\"probe\"}} 1"),
            format!("refill_throttle_state{{{labels},state=\"running\",reason=\"\"}} 0"),
        ] {
            assert!(text.contains(&line), "no `{line}` in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
