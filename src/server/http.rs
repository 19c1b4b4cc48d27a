//! The HTTP port: `/livez`, `/readyz` and `/metrics` (hyper, HTTP/1.1).

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::server::node::Node;
use crate::store::Store;

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

/// What the probes report; the node fills in its readiness once its backend is connected.
pub struct Health {
    metrics: Arc<Metrics>,
    state: OnceLock<Box<dyn Fn() -> Readiness + Send + Sync>>,
}

/// A node's readiness as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Serving.
    Ready,
    /// Still connecting to its backend (start-up).
    Starting,
    /// Draining (SIGTERM).
    Draining,
    /// The backend or its live path is down.
    BackendDown,
}

impl Health {
    /// Probes for a node that is still starting.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Health> {
        Arc::new(Health {
            metrics,
            state: OnceLock::new(),
        })
    }

    /// Hands readiness over to the running node.
    pub fn set_node<S: Store>(&self, node: Arc<Node<S>>) {
        let _ = self.state.set(Box::new(move || {
            if node.draining.is_cancelled() {
                Readiness::Draining
            } else if node.ready() {
                Readiness::Ready
            } else {
                Readiness::BackendDown
            }
        }));
    }

    fn readiness(&self) -> Readiness {
        self.state.get().map_or(Readiness::Starting, |f| f())
    }
}

fn route(health: &Health, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/livez" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            let (status, text) = match health.readiness() {
                Readiness::Ready => (StatusCode::OK, "ready\n"),
                Readiness::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
                Readiness::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
                Readiness::BackendDown => {
                    (StatusCode::SERVICE_UNAVAILABLE, "backend unavailable\n")
                }
            };
            respond(status, "text/plain", text)
        }
        "/metrics" => {
            // Read when scraped: the gauges cannot lag behind what /readyz would answer.
            let readiness = health.readiness();
            let ops = &health.metrics.ops;
            ops.ready.set(i64::from(readiness == Readiness::Ready));
            ops.draining
                .set(i64::from(readiness == Readiness::Draining));
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                health.metrics.render(),
            )
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serves HTTP until `stop` is cancelled (after the drain, so probes see it).
pub async fn serve(health: Arc<Health>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let health = health.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = route(&health, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}
