//! The simulator's memory of every request it received and what it answered.
//!
//! Tests assert on what actually crossed the wire: that the key never reached storage,
//! that an identifier was encoded as one path segment, that no API call was spent on a
//! stored file, how long a client waited after a 429.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::request::Parts;

use super::{Fault, lock};

/// Which of the two listeners received a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The API host, which answers with redirects.
    Api,
    /// The storage host behind the pre-signed URLs.
    Storage,
}

/// One request as the simulator received it, and the answer it gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The listener that received it.
    pub endpoint: Endpoint,
    /// The request method, e.g. `GET`.
    pub method: String,
    /// Path and query exactly as they appeared in the request line, still encoded.
    pub target: String,
    /// Every header, names in lower case as HTTP/1 parsing leaves them; repeated names
    /// are grouped at the position of their first appearance.
    pub headers: Vec<(String, String)>,
    /// The status answered, or `None` when the connection was reset before any answer.
    pub status: Option<u16>,
    /// The scripted fault that shaped the answer, if one did.
    pub fault: Option<Fault>,
    /// Tokio time from the simulator's start to the request's arrival.
    pub at: Duration,
}

impl Received {
    /// Builds the record of a request from its head and the answer given.
    pub(super) fn new(
        endpoint: Endpoint,
        parts: &Parts,
        status: Option<u16>,
        fault: Option<Fault>,
        at: Duration,
    ) -> Received {
        let target = match parts.uri.path_and_query() {
            Some(target) => target.as_str().to_owned(),
            None => parts.uri.to_string(),
        };
        let headers = parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let method = parts.method.to_string();
        Received { endpoint, method, target, headers, status, fault, at }
    }

    /// The first value of header `name`, compared without regard to case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Every request received, in arrival order.
#[derive(Debug, Default)]
pub(super) struct Journal(Mutex<Vec<Received>>);

impl Journal {
    pub(super) fn push(&self, received: Received) {
        lock(&self.0).push(received);
    }

    pub(super) fn snapshot(&self) -> Vec<Received> {
        lock(&self.0).clone()
    }

    pub(super) fn count(&self, matches: impl Fn(&Received) -> bool) -> usize {
        lock(&self.0).iter().filter(|received| matches(received)).count()
    }
}
