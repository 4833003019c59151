//! What the targets share: the fixed source key the SET seeds are signed with.

#![allow(dead_code)]

/// A P-256 key used only by the fuzz targets and the seeds in tests/fuzz/corpus/set_verify/:
/// never a real credential.
pub const SOURCE_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgDt0BfaCPW5l+PPzj
HYSQ+wHjgIExtTxn2DkW2DBxOq6hRANCAAR0++OFnvxApou1KLywxnneYBJLmGnp
agNz5yeFA2mXmXRHcI3Q1F3Ni+6oef5QRLGMppi47pKFWXzBxTwV6pgt
-----END PRIVATE KEY-----
";
pub const SOURCE_KID: &str = "fuzz-key-1";
pub const ISS: &str = "https://idp.example.test";
pub const AUD: &str = "https://hub.example.test";
