//! Protocol types: the SET envelope vocabulary, the CAEP/RISC/SSF event catalogue, and RFC 9493
//! subjects. Plain data and pure functions only; no I/O, no keys, no HTTP.

pub mod events;
pub mod subject;

pub use events::{Event, EventKind};
pub use subject::{Subject, SubjectError};

/// JOSE `typ` the hub emits and expects (RFC 8417 §2.3, SSF §4.1.1).
pub const SET_TYP: &str = "secevent+jwt";
/// Media type of a pushed SET body (RFC 8935 §2.1).
pub const SET_MEDIA_TYPE: &str = "application/secevent+jwt";

/// Push delivery method URI (RFC 8935).
pub const DELIVERY_PUSH: &str = "urn:ietf:rfc:8935";
/// Poll delivery method URI (RFC 8936).
pub const DELIVERY_POLL: &str = "urn:ietf:rfc:8936";

/// Event-type URI prefixes, in the 1.0 spelling.
pub const CAEP_PREFIX: &str = "https://schemas.openid.net/secevent/caep/event-type/";
pub const RISC_PREFIX: &str = "https://schemas.openid.net/secevent/risc/event-type/";
pub const SSF_PREFIX: &str = "https://schemas.openid.net/secevent/ssf/event-type/";
