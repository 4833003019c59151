//! The HTTP clients push delivery sends through: HTTP/2 by ALPN over TLS when the receiver
//! offers it (HTTP/1.1 keep-alive otherwise), and, for streams that opt in with
//! `http2_prior_knowledge`, HTTP/2 without negotiation (h2c) on `http://`.

use std::sync::Arc;
use std::time::Duration;

use crate::guard::{Guard, GuardedResolver};
use crate::streams::Stream;

/// Both push clients. Each keeps one pool of connections per receiver origin; over HTTP/2 that
/// is one connection, which all of a stream's SETs in flight share.
#[derive(Debug, Clone)]
pub struct Clients {
    /// ALPN decides: `h2` if the receiver's TLS offers it, HTTP/1.1 otherwise (and on `http://`).
    negotiated: reqwest::Client,
    /// HTTP/2 from the first byte on `http://` (RFC 9113 §3.3), for receivers known to speak it.
    prior_knowledge: reqwest::Client,
}

impl Clients {
    pub fn new(guard: Arc<Guard>, timeout: Duration) -> Clients {
        Clients {
            negotiated: build(guard.clone(), timeout, false),
            prior_knowledge: build(guard, timeout, true),
        }
    }

    /// The client for `stream`. Prior knowledge applies to `http://` only: over TLS, ALPN
    /// already says whether the receiver speaks HTTP/2, and forcing it on a receiver that did
    /// not offer it would only break delivery.
    pub fn for_stream(&self, stream: &Stream) -> &reqwest::Client {
        let plain_http = stream.delivery.endpoint_url.as_deref().is_some_and(|u| {
            u.get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
        });
        if stream.http2_prior_knowledge && plain_http {
            &self.prior_knowledge
        } else {
            &self.negotiated
        }
    }
}

/// The guarded client with negotiated HTTP versions, for other outbound calls that need the
/// same protections (the upstream receiver's management client).
pub fn guarded(guard: Arc<Guard>, timeout: Duration) -> reqwest::Client {
    build(guard, timeout, false)
}

/// One push client: guarded resolver, no proxy, no redirects, a timeout per attempt.
fn build(guard: Arc<Guard>, timeout: Duration, prior_knowledge: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver(guard)))
        // A proxy would resolve and connect on our behalf, out of the guard's sight.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("ssf-hub/", env!("CARGO_PKG_VERSION")));
    let builder = if prior_knowledge {
        builder.http2_prior_knowledge()
    } else {
        builder
    };
    builder.build().unwrap_or_default()
}

/// The protocol a push went over, as `ssf_hub_push_http_version_total` labels it.
pub fn version_label(v: reqwest::Version) -> &'static str {
    match v {
        reqwest::Version::HTTP_2 => "HTTP/2",
        reqwest::Version::HTTP_11 => "HTTP/1.1",
        _ => "other",
    }
}
