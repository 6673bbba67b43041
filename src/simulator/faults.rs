//! Scripted misbehaviour: per-identifier queues of faults, played one per request.
//!
//! A test lists, for a requested identifier, the faults it wants in the order it wants
//! them. Only the head of a queue is ever considered: the next request for that
//! identifier on the listener the head targets plays it and removes it, while requests
//! on the other listener pass untouched until the head suits them. Each listener's
//! handler decides which variants it plays, so a new fault is a new variant here and an
//! arm in one handler (the compiler points at both `match`es).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use super::lock;

/// One scripted deviation from normal behaviour. `Api*` faults are played by the API
/// listener after the request passed the key check and the rate limits (so it was
/// counted); `Storage*` faults by the storage listener after the URL's signature and
/// expiry checks passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The API answers this status once, with a JSON `message` body. A 429 sent this way
    /// carries no `Retry-After` and no `X-RateLimit-Reset`.
    ApiStatus(u16),
    /// The API answers `302` with this literal `Location` (e.g. `file:///etc/passwd`).
    /// A value that is not a valid header value is left out.
    ApiRedirect(String),
    /// Storage answers this status once, with an S3-style XML error body.
    StorageStatus(u16),
    /// Storage sends the full headers, promising the whole `Content-Length`, then only
    /// this many body bytes, then closes the connection.
    StorageTruncate(u64),
    /// Storage resets the connection before sending any byte of its answer.
    StorageReset,
    /// Storage sends the full headers and this many body bytes, then resets the
    /// connection (a TCP RST, as from a host that crashed or a middlebox that gave up)
    /// once the client has acknowledged those bytes. A count at or past the body's end
    /// sends the whole body.
    StorageResetAfter(u64),
    /// Storage answers `403` "Request has expired" once, even though the URL is fresh.
    StorageExpired,
    /// Storage sends the headers and this many body bytes, then nothing more while
    /// holding the connection open: a stalled transfer that only the client's timeout,
    /// or its stopping, ends.
    StorageStallAfter(u64),
    /// Storage sends the headers and this many body bytes, then nothing for this long,
    /// then the rest: a transfer that goes quiet and recovers, long enough for a client to
    /// make what it has durable, without holding a later request up for good.
    StoragePauseAfter(u64, Duration),
}

/// The faults still to be played, by requested identifier.
#[derive(Debug, Default)]
pub(super) struct FaultScript {
    queues: Mutex<HashMap<String, VecDeque<Fault>>>,
}

impl FaultScript {
    /// A script holding a copy of `script`.
    pub(super) fn new(script: &HashMap<String, Vec<Fault>>) -> FaultScript {
        let queues = script
            .iter()
            .map(|(identifier, faults)| (identifier.clone(), faults.iter().cloned().collect()))
            .collect();
        FaultScript { queues: Mutex::new(queues) }
    }

    /// Removes the head of `identifier`'s queue if `plan` knows how to play it, and
    /// returns it with the plan. A head that `plan` refuses stays for the other listener.
    pub(super) fn take<P>(
        &self,
        identifier: &str,
        plan: impl FnOnce(&Fault) -> Option<P>,
    ) -> Option<(Fault, P)> {
        let mut queues = lock(&self.queues);
        let queue = queues.get_mut(identifier)?;
        let planned = plan(queue.front()?)?;
        let fault = queue.pop_front()?;
        Some((fault, planned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_only(fault: &Fault) -> Option<()> {
        matches!(fault, Fault::ApiStatus(_)).then_some(())
    }

    fn storage_only(fault: &Fault) -> Option<()> {
        matches!(fault, Fault::StorageStatus(_)).then_some(())
    }

    #[test]
    fn only_the_head_plays_and_only_on_its_listener() {
        let script = HashMap::from([(
            "id".to_string(),
            vec![Fault::ApiStatus(503), Fault::StorageStatus(500), Fault::ApiStatus(400)],
        )]);
        let faults = FaultScript::new(&script);
        assert_eq!(faults.take("id", storage_only), None);
        assert_eq!(faults.take("id", api_only), Some((Fault::ApiStatus(503), ())));
        // The head now targets storage, so an API request passes without consuming it.
        assert_eq!(faults.take("id", api_only), None);
        assert_eq!(faults.take("id", storage_only), Some((Fault::StorageStatus(500), ())));
        assert_eq!(faults.take("id", api_only), Some((Fault::ApiStatus(400), ())));
        assert_eq!(faults.take("id", api_only), None);
        assert_eq!(faults.take("other", api_only), None);
    }
}
