//! identifai-fetch downloads evidence files from the IdentifAI API v2 in bulk.
//!
//! A run flows one way through small stages, each in its own module:
//!
//! ```text
//! manifest -> rate (limiter) -> api (resolve) -> fetch -> store -> report
//! ```
//!
//! - [`manifest`] streams the CSV and turns each line into a valid or invalid row.
//! - [`rate`] holds the `--rate` spec, the limiter shared by every API call and
//!   the pause that a 429 imposes on all of them.
//! - [`api`] resolves a row into a signed storage URL (a [`api::Lease`]).
//! - [`retry`] is the one place that decides what happens after a failure.
//! - [`fetch`] streams a lease's body into the store while hashing it.
//! - [`store`] is the content-addressed object store.
//! - [`report`] writes one line per manifest row, in manifest order.
//! - [`run`] wires the stages together and owns concurrency.
//! - [`simulator`] is a real HTTP server that behaves like the vendor's API;
//!   [`demo`] runs the demo manifest against it.
//! - [`cli`] holds the command line that `main.rs` parses.

pub mod api;
pub mod cli;
pub mod demo;
pub mod disk;
pub mod fetch;
pub mod job;
pub mod journal;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod plan;
pub mod progress;
pub mod rate;
pub mod report;
pub mod retry;
pub mod run;
pub mod settings;
pub mod shutdown;
pub mod simulator;
pub mod status;
pub mod store;
pub mod verify;
pub mod view;
