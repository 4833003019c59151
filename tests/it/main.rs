//! One integration-test binary: every test talks to a real hub over loopback HTTP.

// Test helpers are shared across modules of this one binary; crate-level API lints do not apply.
#![allow(unreachable_pub, missing_debug_implementations, clippy::unwrap_used)]

mod auth;
mod cli;
mod connectors;
#[cfg(feature = "kafka")]
mod deploy;
mod durability;
mod feed;
mod hostile;
mod http2;
mod ingest;
mod integrity;
mod interop;
mod jwks;
#[cfg(feature = "kafka")]
mod kafka;
mod keys_refresh;
mod modules;
mod push;
#[cfg(feature = "kafka")]
mod replicas;
mod retention;
mod revocation;
mod schemas;
mod snapshot_stream;
mod storage_conformance;
mod streams_hardening;
mod support;
mod transmitter;
mod transport;
mod upstream;
mod window;
