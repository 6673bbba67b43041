//! Runs one listener: an axum app whose single fallback handler answers and records.
//!
//! Routing is done by hand in `api` and `storage` rather than by axum's router, because
//! the identifier must be decoded from the raw path (an encoded `/` stays inside it) and
//! every request, matched or not, must be recorded with the answer it got.

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::debug;

use super::conn::{ConnControl, Cut, SimListener};
use super::{Endpoint, Fault, Received, Shared, api, storage};

/// What a handler decided: the response, the fault that shaped it, and whether the
/// connection must break while sending it.
pub(super) struct Answer {
    pub(super) response: Response,
    pub(super) fault: Option<Fault>,
    pub(super) cut: Option<Cut>,
}

impl Answer {
    /// Records `fault` as the cause of this answer.
    pub(super) fn with_fault(self, fault: Fault) -> Answer {
        Answer { fault: Some(fault), ..self }
    }

    /// Breaks the connection as `cut` says while the response is sent.
    pub(super) fn with_cut(self, cut: Option<Cut>) -> Answer {
        Answer { cut, ..self }
    }

    /// The status the client will see, or `None` if the connection resets first.
    fn status(&self) -> Option<u16> {
        (self.cut != Some(Cut::Reset)).then(|| self.response.status().as_u16())
    }
}

impl From<Response> for Answer {
    fn from(response: Response) -> Answer {
        Answer { response, fault: None, cut: None }
    }
}

/// The state each listener's handler gets: the shared simulator and its own side.
#[derive(Clone)]
struct Side {
    shared: Arc<Shared>,
    endpoint: Endpoint,
}

/// Serves `endpoint` on `tcp` until `stop` turns true or its sender is dropped. The
/// returned receiver completes once the listening socket is closed.
pub(super) fn spawn(
    endpoint: Endpoint,
    tcp: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> oneshot::Receiver<()> {
    let (listener, closed) = SimListener::new(tcp);
    let app = Router::new().fallback(entry).with_state(Side { shared, endpoint });
    let service = app.into_make_service_with_connect_info::<ConnControl>();
    // An error here means the handle was dropped without `shutdown`: stop all the same.
    let signal = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    tokio::spawn(async move {
        // Serving ends only after the signal and never with an error.
        let _ = axum::serve(listener, service).with_graceful_shutdown(signal).await;
    });
    closed
}

/// Answers one request on either listener and records it.
async fn entry(
    State(side): State<Side>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    request: Request,
) -> Response {
    let at = side.shared.clock.elapsed();
    // Neither listener reads request bodies; a GET has none worth keeping.
    let (parts, _body) = request.into_parts();
    let answer = match side.endpoint {
        Endpoint::Api => api::answer(&side.shared, &parts),
        Endpoint::Storage => storage::answer(&side.shared, &parts),
    };
    let status = answer.status();
    debug!(endpoint = ?side.endpoint, path = parts.uri.path(), ?status, "simulator answered");
    let received = Received::new(side.endpoint, &parts, status, answer.fault.clone(), at);
    side.shared.journal.push(received);
    if let Some(cut) = answer.cut {
        conn.arm(cut);
    }
    answer.response
}
