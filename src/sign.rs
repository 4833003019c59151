//! Signing keys and SET encoding: key generation (`ssf-hub keygen`, the hub's own key kept in
//! the data directory), public JWKs with RFC 7638 thumbprint `kid`s, and compact SETs with
//! `typ: secevent+jwt`. Knows JOSE; does not know where SETs go.

use std::io::Write as _;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use josekit::jwk::KeyPair;
use josekit::jws::{self, JwsSigner};
use serde_json::{json, Map, Value};

use crate::set::SET_TYP;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("unsupported signing algorithm {0:?}: use ES256 or RS256")]
    Alg(String),
    #[error("the key does not fit {0}: {1}")]
    Key(&'static str, String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Algorithms the hub signs with: ES256, and RS256 for the CAEP interoperability profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignAlg {
    ES256,
    RS256,
}

impl SignAlg {
    pub fn parse(name: &str) -> Result<SignAlg, SignError> {
        match name {
            "ES256" => Ok(SignAlg::ES256),
            "RS256" => Ok(SignAlg::RS256),
            other => Err(SignError::Alg(other.to_owned())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SignAlg::ES256 => "ES256",
            SignAlg::RS256 => "RS256",
        }
    }
}

/// A private key ready to sign SETs, with its public half as a JWK.
pub struct SetSigner {
    alg: SignAlg,
    kid: String,
    signer: Box<dyn JwsSigner>,
    public_jwk: Map<String, Value>,
}

impl std::fmt::Debug for SetSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SetSigner")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SetSigner {
    /// Generates a new key; returns the signer and its private key as PKCS#8 PEM.
    pub fn generate(alg: SignAlg) -> Result<(SetSigner, Vec<u8>), SignError> {
        let pem = match alg {
            SignAlg::ES256 => jws::ES256
                .generate_key_pair()
                .map_err(|e| SignError::Key("ES256", e.to_string()))?
                .to_pem_private_key(),
            SignAlg::RS256 => jws::RS256
                .generate_key_pair(2048)
                .map_err(|e| SignError::Key("RS256", e.to_string()))?
                .to_pem_private_key(),
        };
        Ok((SetSigner::from_pem(&pem, alg, None)?, pem))
    }

    /// Loads a PEM private key. The `kid` defaults to the key's RFC 7638 thumbprint.
    pub fn from_pem(pem: &[u8], alg: SignAlg, kid: Option<String>) -> Result<SetSigner, SignError> {
        let err = |e: josekit::JoseError| SignError::Key(alg.name(), e.to_string());
        let (signer, jwk): (Box<dyn JwsSigner>, _) = match alg {
            SignAlg::ES256 => (
                Box::new(jws::ES256.signer_from_pem(pem).map_err(err)?),
                jws::ES256
                    .key_pair_from_pem(pem)
                    .map_err(err)?
                    .to_jwk_public_key(),
            ),
            SignAlg::RS256 => (
                Box::new(jws::RS256.signer_from_pem(pem).map_err(err)?),
                jws::RS256
                    .key_pair_from_pem(pem)
                    .map_err(err)?
                    .to_jwk_public_key(),
            ),
        };
        let mut public_jwk: Map<String, Value> = jwk.as_ref().clone();
        let kid = kid.unwrap_or_else(|| thumbprint(&public_jwk));
        public_jwk.insert("kid".into(), Value::from(kid.clone()));
        public_jwk.insert("alg".into(), Value::from(alg.name()));
        public_jwk.insert("use".into(), Value::from("sig"));
        Ok(SetSigner {
            alg,
            kid,
            signer,
            public_jwk,
        })
    }

    /// Loads the key at `path`, or generates one there (mode 0600) if there is none yet.
    pub fn load_or_generate(path: &Path, alg: SignAlg) -> Result<SetSigner, SignError> {
        if path.exists() {
            return SetSigner::from_pem(&std::fs::read(path)?, alg, None);
        }
        let (signer, pem) = SetSigner::generate(alg)?;
        write_private(path, &pem)?;
        Ok(signer)
    }

    pub fn alg(&self) -> SignAlg {
        self.alg
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK with `kid`, `alg` and `use`.
    pub fn public_jwk(&self) -> Value {
        Value::Object(self.public_jwk.clone())
    }

    /// A JWKS holding just this key.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.public_jwk()] })
    }

    /// Signs `claims` (a JSON object) as a compact SET with header
    /// `{alg, kid, typ: secevent+jwt}`.
    pub fn sign(&self, claims: &(impl serde::Serialize + ?Sized)) -> Result<String, SignError> {
        let header = json!({ "alg": self.alg.name(), "kid": self.kid, "typ": SET_TYP });
        sign_compact(self.signer.as_ref(), &header, claims)
    }
}

/// Signs arbitrary header and claims. Separate from [`SetSigner::sign`] so tests can build
/// deliberately wrong headers with a real key.
pub fn sign_compact(
    signer: &dyn JwsSigner,
    header: &Value,
    claims: &(impl serde::Serialize + ?Sized),
) -> Result<String, SignError> {
    let payload = serde_json::to_vec(claims).map_err(|e| SignError::Sign(e.to_string()))?;
    let mut out = String::with_capacity(512);
    URL_SAFE_NO_PAD.encode_string(header.to_string(), &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut out);
    let signature = signer
        .sign(out.as_bytes())
        .map_err(|e| SignError::Sign(e.to_string()))?;
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut out);
    Ok(out)
}

impl SetSigner {
    /// The underlying josekit signer.
    pub fn jws_signer(&self) -> &dyn JwsSigner {
        self.signer.as_ref()
    }
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url) over the required public members.
pub fn thumbprint(jwk: &Map<String, Value>) -> String {
    let members: &[&str] = match jwk.get("kty").and_then(Value::as_str) {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("RSA") => &["e", "kty", "n"],
        Some("OKP") => &["crv", "kty", "x"],
        _ => &["kty"],
    };
    // Members in lexicographic order, no whitespace: serde_json writes exactly that for a
    // sequence of pairs built in order.
    let mut canonical = String::from("{");
    for (i, m) in members.iter().enumerate() {
        if i > 0 {
            canonical.push(',');
        }
        let v = jwk.get(*m).cloned().unwrap_or(Value::Null);
        canonical.push_str(&format!("{}:{}", Value::from(*m), v));
    }
    canonical.push('}');
    URL_SAFE_NO_PAD.encode(openssl::sha::sha256(canonical.as_bytes()))
}

/// Writes private key material readable by the owner only (0600, in a 0700 directory if it
/// has to create one).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::storage::create_private_dir(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk: Map<String, Value> = serde_json::from_str(r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#).expect("jwk");
        assert_eq!(
            thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn generated_keys_sign_sets_that_verify() {
        for alg in [SignAlg::ES256, SignAlg::RS256] {
            let (signer, pem) = SetSigner::generate(alg).expect("generate");
            let again = SetSigner::from_pem(&pem, alg, None).expect("reload");
            assert_eq!(signer.kid(), again.kid(), "kid is stable across reloads");
            let claims = json!({"iss": "x"}).as_object().cloned().unwrap_or_default();
            let set = signer.sign(&claims).expect("sign");
            let jwk = josekit::jwk::Jwk::from_map(
                signer.public_jwk().as_object().cloned().unwrap_or_default(),
            )
            .expect("jwk");
            let verifier = crate::keys::Alg::parse(alg.name())
                .and_then(|a| a.verifier(&jwk))
                .expect("verifier");
            let (input, sig) = set.rsplit_once('.').expect("compact");
            let sig = URL_SAFE_NO_PAD.decode(sig).expect("b64");
            verifier.verify(input.as_bytes(), &sig).expect("verifies");
        }
    }
}
