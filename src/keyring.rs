//! The hub's own signing keys over time: one chain per algorithm (ES256, RS256), kept in
//! `<data_dir>/keys/`. A rotated-in key is published in the JWKS at once but signs only from its
//! activation time on, so no SET is ever signed with a key receivers cannot fetch yet; a
//! rotated-out key stays published for a grace period so SETs already signed keep verifying.
//! With several replicas (Kafka mode) the keyring lives in the shared tables instead, each
//! private key encrypted with the key-encryption key from config, so every replica signs with
//! and publishes the same keys.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::sign::{SetSigner, SignAlg, SignError};
use crate::storage::{Op, Tables};

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
    /// Shared keyrings: the private key as stored (a JWE), kept to rewrite the row's metadata.
    sealed: Option<String>,
}

/// One key as a shared keyring stores it: one row per key, so that rotations on two replicas
/// at once both survive.
#[derive(Debug, Serialize, Deserialize)]
struct KeyRow {
    #[serde(flatten)]
    meta: KeyMeta,
    /// The PEM private key, encrypted: compact JWE, `dir` + `A256GCM` under the key-encryption
    /// key from config, the `kid` in its protected header (so a row cannot be swapped for
    /// another key's).
    private_jwe: String,
}

/// Where the keys live.
enum Store {
    /// `<data_dir>/keys/`: `keyring.json` and one `<kid>.pem` per key (one machine).
    Files(PathBuf),
    /// The shared tables (Kafka mode), private keys encrypted with the key-encryption key.
    Shared {
        tables: Arc<dyn Tables>,
        kek: [u8; 32],
    },
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Files(dir) => f.debug_tuple("Files").field(dir).finish(),
            Store::Shared { .. } => f.write_str("Shared"),
        }
    }
}

/// The table of a shared keyring: kid → [`KeyRow`].
const KEYS_TABLE: &str = "signing_keys";

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
    store: Store,
    timing: Timing,
    keys: RwLock<Vec<Loaded>>,
}

fn io(e: impl std::fmt::Display) -> SignError {
    SignError::Io(std::io::Error::other(e.to_string()))
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
            store: Store::Files(dir.to_path_buf()),
            timing,
            keys: RwLock::new(Vec::new()),
        };
        ring.reload()?;
        if let Some((path, alg)) = legacy_key {
            if path.exists() && ring.active(alg).is_none() {
                let pem = std::fs::read(path)?;
                check_strength(&pem, alg, &path.display().to_string())?;
                ring.add(SetSigner::from_pem(&pem, alg, None)?, &pem, 0)?;
            }
        }
        ring.ensure_active()?;
        Ok(ring)
    }

    /// Opens the keyring every replica shares (Kafka mode): keys in `tables`, private keys
    /// encrypted with `kek`; creates an active key for each algorithm that has none.
    pub fn open_shared(
        tables: Arc<dyn Tables>,
        kek: [u8; 32],
        timing: Timing,
    ) -> Result<Keyring, SignError> {
        let ring = Keyring {
            store: Store::Shared { tables, kek },
            timing,
            keys: RwLock::new(Vec::new()),
        };
        ring.reload()?;
        ring.ensure_active()?;
        Ok(ring)
    }

    fn ensure_active(&self) -> Result<(), SignError> {
        for alg in [SignAlg::ES256, SignAlg::RS256] {
            if self.active(alg).is_none() {
                let (signer, pem) = SetSigner::generate(alg)?;
                self.add(signer, &pem, 0)?;
            }
        }
        Ok(())
    }

    /// Reads the stored keys again: new ones are loaded, known ones get their stored schedule
    /// (another replica rotated). Keys are never removed here.
    pub fn reload(&self) -> Result<(), SignError> {
        let stored = self.stored()?;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        for (meta, sealed, pem) in stored {
            if let Some(k) = keys.iter_mut().find(|k| k.meta.kid == meta.kid) {
                k.meta = meta;
                continue;
            }
            let alg = SignAlg::parse(&meta.alg)?;
            let pem = match pem {
                Some(pem) => pem,
                None => match &sealed {
                    Some(jwe) => self.unseal(&meta.kid, jwe)?,
                    None => continue,
                },
            };
            check_strength(&pem, alg, &meta.kid)?;
            let signer = SetSigner::from_pem(&pem, alg, Some(meta.kid.clone()))?;
            keys.push(Loaded {
                meta,
                signer: Arc::new(signer),
                sealed,
            });
        }
        Ok(())
    }

    /// Every stored key: its metadata, and its private key sealed (shared) or as PEM (files).
    #[allow(clippy::type_complexity)]
    fn stored(&self) -> Result<Vec<(KeyMeta, Option<String>, Option<Vec<u8>>)>, SignError> {
        match &self.store {
            Store::Files(dir) => {
                let file: KeyringFile = match std::fs::read(dir.join("keyring.json")) {
                    Ok(bytes) => serde_json::from_slice(&bytes)
                        .map_err(|e| io(format!("keyring.json: {e}")))?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeyringFile::default(),
                    Err(e) => return Err(e.into()),
                };
                let mut out = Vec::with_capacity(file.keys.len());
                for meta in file.keys {
                    let pem = std::fs::read(dir.join(format!("{}.pem", meta.kid)))?;
                    out.push((meta, None, Some(pem)));
                }
                Ok(out)
            }
            Store::Shared { tables, .. } => {
                let rows = tables.prefix(KEYS_TABLE, b"").map_err(io)?;
                rows.into_iter()
                    .map(|(_, v)| {
                        let row: KeyRow = serde_json::from_slice(&v)
                            .map_err(|e| io(format!("a stored signing key: {e}")))?;
                        Ok((row.meta, Some(row.private_jwe), None))
                    })
                    .collect()
            }
        }
    }

    fn seal(&self, kid: &str, pem: &[u8]) -> Result<Option<String>, SignError> {
        let Store::Shared { kek, .. } = &self.store else {
            return Ok(None);
        };
        let mut header = josekit::jwe::JweHeader::new();
        header.set_content_encryption("A256GCM");
        header.set_key_id(kid);
        let encrypter = josekit::jwe::Dir.encrypter_from_bytes(kek).map_err(io)?;
        Ok(Some(
            josekit::jwe::serialize_compact(pem, &header, &encrypter).map_err(io)?,
        ))
    }

    fn unseal(&self, kid: &str, jwe: &str) -> Result<Vec<u8>, SignError> {
        let Store::Shared { kek, .. } = &self.store else {
            return Err(io("no key-encryption key"));
        };
        let decrypter = josekit::jwe::Dir.decrypter_from_bytes(kek).map_err(io)?;
        let (pem, header) = josekit::jwe::deserialize_compact(jwe, &decrypter).map_err(|_| {
            io(format!(
                "signing key {kid} cannot be decrypted: log.kafka.key_encryption_key differs \
                 from the one the key was stored with"
            ))
        })?;
        if header.key_id() != Some(kid) {
            return Err(io(format!(
                "signing key {kid}: the stored row holds another key"
            )));
        }
        Ok(pem)
    }

    fn add(&self, signer: SetSigner, pem: &[u8], activate_at: u64) -> Result<String, SignError> {
        let kid = signer.kid().to_owned();
        if let Store::Files(dir) = &self.store {
            let pem_path = dir.join(format!("{kid}.pem"));
            if !pem_path.exists() {
                crate::sign::write_private(&pem_path, pem)?;
            }
        }
        let meta = KeyMeta {
            kid: kid.clone(),
            alg: signer.alg().name().to_owned(),
            created_at: crate::unix_now(),
            activate_at,
            retired_at: None,
        };
        let sealed = self.seal(&kid, pem)?;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.push(Loaded {
            meta,
            signer: Arc::new(signer),
            sealed,
        });
        self.save(&keys)?;
        Ok(kid)
    }

    fn save(&self, keys: &[Loaded]) -> Result<(), SignError> {
        match &self.store {
            Store::Files(dir) => {
                let file = KeyringFile {
                    keys: keys.iter().map(|k| k.meta.clone()).collect(),
                };
                let tmp = dir.join("keyring.json.tmp");
                std::fs::write(&tmp, serde_json::to_vec_pretty(&file).map_err(io)?)?;
                // Rename is atomic: a crash leaves the old or the new keyring, never half of one.
                std::fs::rename(tmp, dir.join("keyring.json"))?;
            }
            Store::Shared { tables, .. } => {
                let mut ops = Vec::with_capacity(keys.len());
                for k in keys {
                    let Some(sealed) = &k.sealed else { continue };
                    let row = KeyRow {
                        meta: k.meta.clone(),
                        private_jwe: sealed.clone(),
                    };
                    ops.push(Op::put(
                        KEYS_TABLE,
                        k.meta.kid.as_bytes().to_vec(),
                        serde_json::to_vec(&row).map_err(io)?,
                    ));
                }
                tables.write(ops).map_err(io)?;
                tables.sync().map_err(io)?;
            }
        }
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
