//! The `/metrics` endpoint (HTTP, axum) over [`crate::metrics::Metrics`]:
//! a task feeds it the daemon's events as they happen; each scrape reads
//! the daemon's chains ([`Daemon::metrics_snapshot`]) and answers in
//! OpenMetrics when asked for it (Prometheus does), else in Prometheus'
//! text format 0.0.4.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::service::Daemon;

/// The content type of an OpenMetrics answer (what Prometheus asks for
/// first).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of a Prometheus text answer (to anyone else).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Feeds `metrics` every event of `daemon` for as long as it lives (a
/// lagging reader counts what it missed in the log and goes on).
pub fn follow(daemon: &Arc<Daemon>, metrics: Arc<Metrics>) {
    let Ok(mut events) = daemon.subscribe("") else {
        return;
    };
    let daemon = Arc::downgrade(daemon);
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match events.recv().await {
                Ok(e) => {
                    let Some(d) = daemon.upgrade() else { return };
                    let mechanism = d.mechanism_of(&e.chain, &e.vnf).await;
                    drop(d);
                    metrics.observe(&e, mechanism);
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!("metrics: {n} events missed (the daemon outran the reader)")
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    daemon: Arc<Daemon>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let scrape = move |headers: axum::http::HeaderMap| {
        let (daemon, metrics) = (daemon.clone(), metrics.clone());
        async move {
            let snapshot = daemon.metrics_snapshot().await;
            metrics.refresh(&snapshot, std::time::SystemTime::now());
            let openmetrics = (headers.get(axum::http::header::ACCEPT))
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            if openmetrics {
                (
                    [(axum::http::header::CONTENT_TYPE, OPENMETRICS)],
                    metrics.encode(),
                )
            } else {
                (
                    [(axum::http::header::CONTENT_TYPE, PROMETHEUS_TEXT)],
                    metrics.encode_prometheus(),
                )
            }
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(scrape));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
