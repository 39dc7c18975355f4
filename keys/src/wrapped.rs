//! A data key as it is stored: wrapped by a KEK, with the names needed to unwrap it.
//!
//! ```text
//! wrapped = "SFWK" | version u8 (1 or 2) | key id [16] | scope_len u16 | scope
//!         | kek_id_len u8 | kek id | blob_len u16 | blob | check [16] (version 2 only)
//! ```
//! little-endian; `scope` is the volume name (empty: the node's own files). Decoding checks every
//! length against what is left, so any bytes decode to a key or to an error, never a panic.
//!
//! `check` (the key-check value) is the first 16 bytes of HMAC-SHA256 under the data key of
//! "sixfold key check" and the key id. Unwrapping compares it with the key it got back, so a
//! key command (a KMS) that answers with a wrong key is an error at once, before anything is
//! sealed with that key (data sealed with a wrong key would be unreadable once the KMS answers
//! right again). A local KEK's wrapping is authenticated already; the check costs nothing there.
//! The value says nothing of the key (HMAC is a pseudo-random function). Keys of version 1
//! (written before the check) still unwrap, unchecked.

use std::sync::Arc;

use crate::data_key::{DataKey, KeyId, NonceSource};
use crate::kek::{Kek, KekId};
use crate::KeyError;

const MAGIC: &[u8; 4] = b"SFWK";
/// Versions: 1 without the key-check value, 2 with it (written since).
const VERSION_UNCHECKED: u8 = 1;
const VERSION: u8 = 2;
const CHECK_BYTES: usize = 16;
const SCOPE_MAX: usize = 255;
const BLOB_MAX: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub key: KeyId,
    /// The volume whose data it seals; empty for the node's own files.
    pub scope: String,
    pub kek: KekId,
    pub blob: Vec<u8>,
    /// The key-check value (None in keys of version 1).
    pub check: Option<[u8; CHECK_BYTES]>,
}

/// The key-check value of data key `key` whose secret is `secret`.
fn check_value(key: KeyId, secret: &[u8; 32]) -> [u8; CHECK_BYTES] {
    let mac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut message = b"sixfold key check".to_vec();
    message.extend_from_slice(&key.0);
    let tag = ring::hmac::sign(&mac, &message);
    let mut check = [0u8; CHECK_BYTES];
    check.copy_from_slice(&tag.as_ref()[..CHECK_BYTES]);
    check
}

impl WrappedKey {
    /// Makes a new data key for `scope` and wraps it under `kek`.
    pub fn generate(
        kek: &Kek,
        scope: &str,
        nonces: Arc<NonceSource>,
    ) -> Result<(WrappedKey, DataKey), KeyError> {
        if scope.len() > SCOPE_MAX {
            return Err(KeyError::Malformed(format!(
                "scope of {} bytes",
                scope.len()
            )));
        }
        let (key, secret) = DataKey::generate(nonces)?;
        let wrapped = WrappedKey::wrap(key.id(), scope, kek, &secret)?;
        Ok((wrapped, key))
    }

    /// Data key `key` (its secret bytes) of `scope`, wrapped under `kek` with its key-check
    /// value, and unwrapped and checked once right away: a key command whose `unwrap` does not
    /// give back what its `wrap` took is refused before the key seals anything.
    fn wrap(key: KeyId, scope: &str, kek: &Kek, secret: &[u8; 32]) -> Result<WrappedKey, KeyError> {
        let wrapped = WrappedKey {
            key,
            scope: scope.to_owned(),
            kek: kek.id().clone(),
            blob: kek.wrap(key, secret)?,
            check: Some(check_value(key, secret)),
        };
        wrapped.secret(kek)?;
        Ok(wrapped)
    }

    /// The data key's secret, unwrapped with `kek` and checked against the key-check value: a
    /// clear error if it was wrapped by another KEK, or if the KEK answers with a wrong key.
    fn secret(&self, kek: &Kek) -> Result<zeroize::Zeroizing<[u8; 32]>, KeyError> {
        if &self.kek != kek.id() {
            return Err(KeyError::WrongKek {
                key: self.key,
                wrapped_by: self.kek.clone(),
                have: kek.id().clone(),
            });
        }
        let secret = kek.unwrap(self.key, &self.blob)?;
        self.verify(&secret, kek)?;
        Ok(secret)
    }

    /// Unwraps it with `kek`: a clear error if it was wrapped by another KEK.
    pub fn unwrap(&self, kek: &Kek, nonces: Arc<NonceSource>) -> Result<DataKey, KeyError> {
        let secret = self.secret(kek)?;
        DataKey::from_secret(self.key, &secret, nonces)
    }

    /// The same data key wrapped under `to` instead of `from` (changing the KEK): unwrapped
    /// and checked with `from`, wrapped with `to`, and unwrapped and checked again with `to`
    /// before it is returned. The key id, scope and key-check value stay.
    pub fn rewrap(&self, from: &Kek, to: &Kek) -> Result<WrappedKey, KeyError> {
        let secret = self.secret(from)?;
        WrappedKey::wrap(self.key, &self.scope, to, &secret)
    }

    /// Compares `secret` with the key-check value, in constant time.
    fn verify(&self, secret: &[u8; 32], kek: &Kek) -> Result<(), KeyError> {
        let Some(expected) = self.check else {
            return Ok(());
        };
        let got = check_value(self.key, secret);
        let differ = expected
            .iter()
            .zip(got.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differ != 0 {
            return Err(KeyError::WrongKey {
                key: self.key,
                kek: kek.id().clone(),
            });
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.scope.len() + self.blob.len());
        out.extend_from_slice(MAGIC);
        out.push(if self.check.is_some() {
            VERSION
        } else {
            VERSION_UNCHECKED
        });
        out.extend_from_slice(&self.key.0);
        out.extend_from_slice(&(self.scope.len() as u16).to_le_bytes());
        out.extend_from_slice(self.scope.as_bytes());
        out.push(self.kek.as_str().len() as u8);
        out.extend_from_slice(self.kek.as_str().as_bytes());
        out.extend_from_slice(&(self.blob.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.blob);
        if let Some(check) = &self.check {
            out.extend_from_slice(check);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<WrappedKey, KeyError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(KeyError::Malformed("not a wrapped data key".into()));
        }
        let version = r.take(1)?[0];
        if version != VERSION && version != VERSION_UNCHECKED {
            return Err(KeyError::Malformed(format!(
                "wrapped data key version {version}"
            )));
        }
        let mut key = [0u8; KeyId::BYTES];
        key.copy_from_slice(r.take(KeyId::BYTES)?);
        let scope_len = u16::from_le_bytes([r.take(1)?[0], r.take(1)?[0]]) as usize;
        if scope_len > SCOPE_MAX {
            return Err(KeyError::Malformed(format!("scope of {scope_len} bytes")));
        }
        let scope = std::str::from_utf8(r.take(scope_len)?)
            .map_err(|_| KeyError::Malformed("scope is not UTF-8".into()))?
            .to_owned();
        let kek_len = r.take(1)?[0] as usize;
        let kek = std::str::from_utf8(r.take(kek_len)?)
            .map_err(|_| KeyError::Malformed("key-encryption key id is not UTF-8".into()))?;
        let kek = KekId::parse(kek)?;
        let blob_len = u16::from_le_bytes([r.take(1)?[0], r.take(1)?[0]]) as usize;
        if blob_len == 0 || blob_len > BLOB_MAX {
            return Err(KeyError::Malformed(format!(
                "wrapped key of {blob_len} bytes"
            )));
        }
        let blob = r.take(blob_len)?.to_vec();
        let check = if version == VERSION {
            let mut check = [0u8; CHECK_BYTES];
            check.copy_from_slice(r.take(CHECK_BYTES)?);
            Some(check)
        } else {
            None
        };
        if !r.0.is_empty() {
            return Err(KeyError::Malformed(format!(
                "{} bytes after the wrapped key",
                r.0.len()
            )));
        }
        Ok(WrappedKey {
            key: KeyId(key),
            scope,
            kek,
            blob,
            check,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KeyError> {
        if self.0.len() < n {
            return Err(KeyError::Malformed("wrapped data key is cut short".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_keys_round_trip_and_name_the_wrong_kek() {
        let kek = Kek::from_hex(&Kek::generate_hex().unwrap()).unwrap();
        let nonces = NonceSource::new(1).unwrap();
        let (wrapped, key) = WrappedKey::generate(&kek, "vol", Arc::clone(&nonces)).unwrap();
        let bytes = wrapped.encode();
        let decoded = WrappedKey::decode(&bytes).unwrap();
        assert_eq!(decoded, wrapped);
        let again = decoded.unwrap(&kek, Arc::clone(&nonces)).unwrap();
        let sealed = key.seal(b"c", b"hello").unwrap();
        let parsed = crate::Sealed::parse(&sealed).unwrap();
        assert_eq!(again.open(b"c", &parsed).unwrap(), b"hello");

        let other = Kek::from_hex(&Kek::generate_hex().unwrap()).unwrap();
        let err = decoded.unwrap(&other, nonces).unwrap_err();
        assert!(matches!(err, KeyError::WrongKek { .. }), "{err}");
        assert!(err.to_string().contains(kek.id().as_str()));

        for cut in 0..bytes.len() {
            assert!(WrappedKey::decode(&bytes[..cut]).is_err());
        }
        // A key written before the key-check value (version 1) still unwraps.
        let old = WrappedKey {
            check: None,
            ..wrapped.clone()
        };
        let old_bytes = old.encode();
        assert_eq!(old_bytes[4], 1);
        let decoded = WrappedKey::decode(&old_bytes).unwrap();
        assert!(decoded.unwrap(&kek, NonceSource::new(1).unwrap()).is_ok());
    }

    /// Changing the KEK: a key rewrapped under the new KEK unwraps under it to the same key,
    /// and no longer under the old one; a key of another KEK is not rewrapped.
    #[test]
    fn a_key_rewrapped_under_a_new_kek_is_the_same_key() {
        let old = Kek::from_hex(&Kek::generate_hex().unwrap()).unwrap();
        let new = Kek::from_hex(&Kek::generate_hex().unwrap()).unwrap();
        let nonces = NonceSource::new(1).unwrap();
        let (wrapped, key) = WrappedKey::generate(&old, "vol", Arc::clone(&nonces)).unwrap();
        let sealed = key.seal(b"c", b"hello").unwrap();
        let rewrapped = wrapped.rewrap(&old, &new).unwrap();
        assert_eq!(
            (rewrapped.key, &rewrapped.scope),
            (wrapped.key, &wrapped.scope)
        );
        assert_eq!(&rewrapped.kek, new.id());
        let again = rewrapped.unwrap(&new, Arc::clone(&nonces)).unwrap();
        let parsed = crate::Sealed::parse(&sealed).unwrap();
        assert_eq!(again.open(b"c", &parsed).unwrap(), b"hello");
        assert!(matches!(
            rewrapped.unwrap(&old, Arc::clone(&nonces)),
            Err(KeyError::WrongKek { .. })
        ));
        assert!(matches!(
            rewrapped.rewrap(&old, &new),
            Err(KeyError::WrongKek { .. })
        ));
    }

    /// A key command (a KMS) that answers `unwrap` with another key than the one it wrapped:
    /// refused when the key is made, and when it is unwrapped later (the key-check value),
    /// naming the key and the KEK; never a key that seals data nobody can open afterwards.
    #[test]
    fn a_kms_that_returns_a_wrong_key_is_caught() {
        // Wraps as the identity on hex, but `unwrap` changes every digit once the state file
        // exists: a KMS with the wrong key version, a buggy proxy.
        let dir = std::env::temp_dir().join(format!("sixfold-kcv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let broken = dir.join("broken");
        let command = format!(
            r#"case "$1" in id) echo kms-test:1;; wrap) cat;; unwrap) read k; if [ -e {b} ]; then echo "$k" | tr '0-9a-f' '1-9a-f0'; else echo "$k"; fi;; esac"#,
            b = broken.display()
        );
        let kek = Kek::load(&crate::KekSource::Command(command)).unwrap();
        let nonces = NonceSource::new(1).unwrap();
        let (wrapped, _) = WrappedKey::generate(&kek, "vol", Arc::clone(&nonces)).unwrap();
        assert!(wrapped.unwrap(&kek, Arc::clone(&nonces)).is_ok());
        std::fs::write(&broken, b"").unwrap();
        let err = wrapped.unwrap(&kek, Arc::clone(&nonces)).unwrap_err();
        assert!(matches!(err, KeyError::WrongKey { .. }), "{err}");
        assert!(err.to_string().contains("kms-test:1"), "{err}");
        let err = WrappedKey::generate(&kek, "vol", nonces).unwrap_err();
        assert!(matches!(err, KeyError::WrongKey { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
