//! A data key as it is stored: wrapped by a KEK, with the names needed to unwrap it.
//!
//! ```text
//! wrapped = "SFWK" | version u8 (1) | key id [16] | scope_len u16 | scope
//!         | kek_id_len u8 | kek id | blob_len u16 | blob
//! ```
//! little-endian; `scope` is the volume name (empty: the node's own files). Decoding checks every
//! length against what is left, so any bytes decode to a key or to an error, never a panic.

use std::sync::Arc;

use crate::data_key::{DataKey, KeyId, NonceSource};
use crate::kek::{Kek, KekId};
use crate::KeyError;

const MAGIC: &[u8; 4] = b"SFWK";
const VERSION: u8 = 1;
const SCOPE_MAX: usize = 255;
const BLOB_MAX: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub key: KeyId,
    /// The volume whose data it seals; empty for the node's own files.
    pub scope: String,
    pub kek: KekId,
    pub blob: Vec<u8>,
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
        let blob = kek.wrap(key.id(), &secret)?;
        Ok((
            WrappedKey {
                key: key.id(),
                scope: scope.to_owned(),
                kek: kek.id().clone(),
                blob,
            },
            key,
        ))
    }

    /// Unwraps it with `kek`: a clear error if it was wrapped by another KEK.
    pub fn unwrap(&self, kek: &Kek, nonces: Arc<NonceSource>) -> Result<DataKey, KeyError> {
        if &self.kek != kek.id() {
            return Err(KeyError::WrongKek {
                key: self.key,
                wrapped_by: self.kek.clone(),
                have: kek.id().clone(),
            });
        }
        let secret = kek.unwrap(self.key, &self.blob)?;
        DataKey::from_secret(self.key, &secret, nonces)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.scope.len() + self.blob.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.key.0);
        out.extend_from_slice(&(self.scope.len() as u16).to_le_bytes());
        out.extend_from_slice(self.scope.as_bytes());
        out.push(self.kek.as_str().len() as u8);
        out.extend_from_slice(self.kek.as_str().as_bytes());
        out.extend_from_slice(&(self.blob.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.blob);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<WrappedKey, KeyError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(KeyError::Malformed("not a wrapped data key".into()));
        }
        let version = r.take(1)?[0];
        if version != VERSION {
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
    }
}
