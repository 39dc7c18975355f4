//! The node's Prometheus endpoint (`sixfold node --metrics-listen ADDR`): `GET /metrics`
//! answers the node's metrics in the Prometheus text format, for a Prometheus server to scrape.
//! Among them, for every PG this node drives the repair of (one node per PG, so each PG is
//! counted once across the cluster), its state: healthy (6 of its 6 stable members answer),
//! degraded (5), at_risk (4: one more loss stalls writes) or unavailable (under 4), and the
//! replacements under way. Nothing else is served; every answer closes nothing the node needs.

use std::convert::Infallible;
use std::fmt::Write;

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::store::Store;

/// Serves `/metrics` on `listener` forever (the caller aborts the task on shutdown).
pub async fn serve(store: Store, listener: TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, "metrics endpoint serving /metrics");
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let store = store.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let store = store.clone();
                async move { Ok::<_, Infallible>(answer(&store, &request)) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!("metrics connection ended: {e}");
            }
        });
    }
}

fn answer(store: &Store, request: &Request<Incoming>) -> Response<Full<bytes::Bytes>> {
    let (status, body) = if request.uri().path() == "/metrics" {
        (StatusCode::OK, render(store))
    } else {
        (
            StatusCode::NOT_FOUND,
            "only /metrics is served here\n".to_string(),
        )
    };
    let mut response = Response::new(Full::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// The node's metrics in the Prometheus text format.
pub fn render(store: &Store) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let node = format!("node=\"{}\"", store.node_id());
    let snapshot = store.status();
    let (_, _, archived_bytes) = store.backup_totals();
    let totals: [(&str, &str, u64); 9] = [
        (
            "sixfold_node_segments",
            "Segments this node holds.",
            snapshot.segments.len() as u64,
        ),
        (
            "sixfold_node_hot_log_bytes",
            "Bytes of hot log on disk.",
            snapshot.log_bytes,
        ),
        (
            "sixfold_node_hot_log_written_bytes",
            "Bytes written to the hot log since the node started.",
            snapshot.log_written_bytes,
        ),
        (
            "sixfold_node_page_store_bytes",
            "Bytes the page stores occupy on disk.",
            snapshot.page_store_bytes,
        ),
        (
            "sixfold_node_gap_fill_bytes",
            "Record bytes fetched from peers since start.",
            snapshot.gap_fill_bytes,
        ),
        (
            "sixfold_node_hydrated_bytes",
            "Page bytes copied from peers since start.",
            snapshot.hydrated_bytes,
        ),
        (
            "sixfold_node_corrupt_found",
            "Damaged data found since start.",
            snapshot.corrupt_found,
        ),
        (
            "sixfold_node_appends_held_milliseconds",
            "Writer appends held since start.",
            snapshot.appends_held_ms,
        ),
        (
            "sixfold_node_archived_bytes",
            "Bytes uploaded to the backup store since start.",
            archived_bytes,
        ),
    ];
    for (name, help, value) in totals {
        metric(name, help, &[(node.clone(), value)]);
    }
    let driven = store.driven_pgs();
    let states = ["healthy", "degraded", "at_risk", "unavailable"];
    let mut state_samples = Vec::new();
    let mut answering = Vec::new();
    let mut repairs = Vec::new();
    for (key, view) in &driven {
        let labels = format!("volume=\"{}\",pg=\"{}\"", key.volume, key.pg.0);
        for state in states {
            state_samples.push((
                format!("{labels},state=\"{state}\""),
                u64::from(view.state() == state),
            ));
        }
        answering.push((labels.clone(), view.answering as u64));
        repairs.push((labels, view.changes as u64));
    }
    metric(
        "sixfold_pg_state",
        "1 for the state of each PG this node drives: healthy (6 of 6 stable segments answer), \
         degraded (5), at_risk (4: one more loss stalls writes), unavailable (under 4).",
        &state_samples,
    );
    metric(
        "sixfold_pg_segments_answering",
        "Of a PG's six stable segments, how many answer (PGs this node drives).",
        &answering,
    );
    metric(
        "sixfold_pg_repairs",
        "Replacements under way in a PG (repair, drain), for the PGs this node drives.",
        &repairs,
    );
    out
}
