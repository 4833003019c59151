//! The hub's own signing keys over time: one chain per algorithm (ES256, RS256), kept in
//! `<data_dir>/keys/`. A rotated-in key is published in the JWKS at once but signs only from its
//! activation time on, so no SET is ever signed with a key receivers cannot fetch yet; a
//! rotated-out key stays published for a grace period so SETs already signed keep verifying.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::sign::{SetSigner, SignAlg, SignError};

/// Bookkeeping for one key; the private key itself is `<kid>.pem` beside the keyring file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyMeta {
    kid: String,
    alg: String,
    created_at: u64,
    /// Unix seconds from which this key signs.
    activate_at: u64,
    /// Unix seconds at which a newer key took over (set when one does).
    #[serde(default)]
    retired_at: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyringFile {
    keys: Vec<KeyMeta>,
}

#[derive(Debug)]
struct Loaded {
    meta: KeyMeta,
    signer: Arc<SetSigner>,
}

/// Timing of rotations.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Delay between publishing a new key and signing with it: at least the longest JWKS cache
    /// lifetime receivers are expected to use.
    pub activation_delay_secs: u64,
    /// How long a retired key stays published: at least the longest a SET may wait for delivery.
    pub retired_grace_secs: u64,
}

#[derive(Debug)]
pub struct Keyring {
    dir: PathBuf,
    timing: Timing,
    keys: RwLock<Vec<Loaded>>,
}

impl Keyring {
    /// Opens the keyring in `dir`, creating an active key for each algorithm that has none. A
    /// `legacy_key` (the single `signing-key.pem` of earlier versions) is imported first.
    pub fn open(
        dir: &Path,
        legacy_key: Option<(&Path, SignAlg)>,
        timing: Timing,
    ) -> Result<Keyring, SignError> {
        crate::storage::create_private_dir(dir)?;
        let ring = Keyring {
            dir: dir.to_path_buf(),
            timing,
            keys: RwLock::new(Vec::new()),
        };
        let file: KeyringFile = match std::fs::read(ring.file()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| SignError::Io(std::io::Error::other(format!("keyring.json: {e}"))))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeyringFile::default(),
            Err(e) => return Err(e.into()),
        };
        {
            let mut keys = ring.keys.write().unwrap_or_else(|p| p.into_inner());
            for meta in file.keys {
                let alg = SignAlg::parse(&meta.alg)?;
                let pem = std::fs::read(ring.dir.join(format!("{}.pem", meta.kid)))?;
                check_strength(&pem, alg, &meta.kid)?;
                let signer = SetSigner::from_pem(&pem, alg, Some(meta.kid.clone()))?;
                keys.push(Loaded {
                    meta,
                    signer: Arc::new(signer),
                });
            }
        }
        if let Some((path, alg)) = legacy_key {
            if path.exists() && ring.active(alg).is_none() {
                let pem = std::fs::read(path)?;
                check_strength(&pem, alg, &path.display().to_string())?;
                ring.add(SetSigner::from_pem(&pem, alg, None)?, &pem, 0)?;
            }
        }
        for alg in [SignAlg::ES256, SignAlg::RS256] {
            if ring.active(alg).is_none() {
                let (signer, pem) = SetSigner::generate(alg)?;
                ring.add(signer, &pem, 0)?;
            }
        }
        Ok(ring)
    }

    fn file(&self) -> PathBuf {
        self.dir.join("keyring.json")
    }

    fn add(&self, signer: SetSigner, pem: &[u8], activate_at: u64) -> Result<String, SignError> {
        let kid = signer.kid().to_owned();
        let pem_path = self.dir.join(format!("{kid}.pem"));
        if !pem_path.exists() {
            crate::sign::write_private(&pem_path, pem)?;
        }
        let meta = KeyMeta {
            kid: kid.clone(),
            alg: signer.alg().name().to_owned(),
            created_at: crate::unix_now(),
            activate_at,
            retired_at: None,
        };
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.push(Loaded {
            meta,
            signer: Arc::new(signer),
        });
        self.save(&keys)?;
        Ok(kid)
    }

    fn save(&self, keys: &[Loaded]) -> Result<(), SignError> {
        let file = KeyringFile {
            keys: keys.iter().map(|k| k.meta.clone()).collect(),
        };
        let tmp = self.dir.join("keyring.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&file)
                .map_err(|e| SignError::Io(std::io::Error::other(e)))?,
        )?;
        // Rename is atomic: a crash leaves the old or the new keyring, never half of one.
        std::fs::rename(tmp, self.file())?;
        Ok(())
    }

    /// The key that signs `alg` now: the newest one whose activation time has come.
    pub fn active(&self, alg: SignAlg) -> Option<Arc<SetSigner>> {
        let now = crate::unix_now();
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .filter(|k| k.signer.alg() == alg && k.meta.activate_at <= now)
            .max_by_key(|k| (k.meta.activate_at, k.meta.created_at))
            .map(|k| k.signer.clone())
    }

    /// Publishes a new `alg` key now; it signs from `activation_delay_secs` on, when the key it
    /// replaces starts its grace period. Returns the new `kid` and its activation time.
    pub fn rotate(&self, alg: SignAlg) -> Result<(String, u64), SignError> {
        let (signer, pem) = SetSigner::generate(alg)?;
        let activate_at = crate::unix_now() + self.timing.activation_delay_secs;
        {
            let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
            for k in keys
                .iter_mut()
                .filter(|k| k.signer.alg() == alg && k.meta.retired_at.is_none())
            {
                k.meta.retired_at = Some(activate_at);
            }
        }
        let kid = self.add(signer, &pem, activate_at)?;
        tracing::info!(%kid, alg = alg.name(), activate_at, "signing key rotated in");
        Ok((kid, activate_at))
    }

    /// The published JWKS: every key not past its grace period, pending ones included.
    pub fn jwks(&self) -> Value {
        let now = crate::unix_now();
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let published: Vec<Value> = keys
            .iter()
            .filter(|k| {
                k.meta
                    .retired_at
                    .is_none_or(|r| r + self.timing.retired_grace_secs > now)
            })
            .map(|k| k.signer.public_jwk())
            .collect();
        json!({ "keys": published })
    }
}

/// Smallest RSA modulus the hub signs with: the CAEP interoperability profile requires RS256
/// with keys of at least 2048 bits, and receivers following it refuse shorter ones.
pub const MIN_RSA_BITS: u32 = 2048;

/// Refuses a stored RSA key shorter than [`MIN_RSA_BITS`] (an imported or hand-placed key; the
/// hub never generates one), so the hub does not start signing SETs that receivers reject.
fn check_strength(pem: &[u8], alg: SignAlg, name: &str) -> Result<(), SignError> {
    if alg != SignAlg::RS256 {
        return Ok(());
    }
    let bits = openssl::pkey::PKey::private_key_from_pem(pem)
        .map_err(|e| SignError::Key("RS256", e.to_string()))?
        .bits();
    if bits < MIN_RSA_BITS {
        return Err(SignError::Key(
            "RS256",
            format!("{name}: a {bits}-bit RSA key is too short; at least {MIN_RSA_BITS} bits are required"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_rsa_keys_are_refused_on_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = openssl::rsa::Rsa::generate(1024).expect("rsa");
        let pem = openssl::pkey::PKey::from_rsa(short)
            .expect("pkey")
            .private_key_to_pem_pkcs8()
            .expect("pem");
        let legacy = dir.path().join("signing-key.pem");
        std::fs::write(&legacy, &pem).expect("write");
        let timing = Timing {
            activation_delay_secs: 0,
            retired_grace_secs: 0,
        };
        let err = Keyring::open(
            &dir.path().join("keys"),
            Some((&legacy, SignAlg::RS256)),
            timing,
        )
        .expect_err("1024-bit key refused");
        assert!(err.to_string().contains("1024-bit"), "{err}");
        let ring = Keyring::open(&dir.path().join("keys2"), None, timing).expect("fresh");
        let n = ring.active(SignAlg::RS256).expect("rs256").public_jwk()["n"]
            .as_str()
            .expect("n")
            .len();
        assert!(
            n * 6 >= 2048,
            "a generated RS256 key has at least 2048 bits"
        );
    }

    #[test]
    fn a_rotated_key_is_published_before_it_signs_and_the_old_one_lingers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let timing = Timing {
            activation_delay_secs: 3600,
            retired_grace_secs: 86400,
        };
        let ring = Keyring::open(dir.path(), None, timing).expect("open");
        let old = ring
            .active(SignAlg::ES256)
            .expect("active")
            .kid()
            .to_owned();
        let (new, _) = ring.rotate(SignAlg::ES256).expect("rotate");
        let kids: Vec<String> = ring.jwks()["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect();
        assert!(kids.contains(&old) && kids.contains(&new), "both published");
        assert_eq!(
            ring.active(SignAlg::ES256).expect("active").kid(),
            old,
            "new key not active yet"
        );
        assert_eq!(kids.len(), 3, "ES256 old + new, RS256");
        // Reopening keeps all of it.
        drop(ring);
        let ring = Keyring::open(dir.path(), None, timing).expect("reopen");
        assert_eq!(ring.active(SignAlg::ES256).expect("active").kid(), old);
        assert_eq!(ring.jwks()["keys"].as_array().expect("keys").len(), 3);

        let now_ring = Keyring::open(
            dir.path(),
            None,
            Timing {
                activation_delay_secs: 0,
                retired_grace_secs: 0,
            },
        )
        .expect("reopen");
        let (newer, _) = now_ring.rotate(SignAlg::RS256).expect("rotate");
        assert_eq!(
            now_ring.active(SignAlg::RS256).expect("active").kid(),
            newer
        );
    }
}
