//! Data keys and the sealed formats (see the crate docs for the nonce scheme).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::{KeyError, SEAL_MAGIC, SEAL_OVERHEAD};

pub const NONCE_BYTES: usize = 12;
pub const TAG_BYTES: usize = 16;

/// A data key's name: 128 random bits, written in every unit it seals.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    pub const BYTES: usize = 16;

    pub fn random() -> Result<KeyId, KeyError> {
        let mut id = [0u8; 16];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| KeyError::Random)?;
        Ok(KeyId(id))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<KeyId> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(KeyId(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dk-{}", self.hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where a data key's nonces come from: the sealing process's incarnation (raised durably at
/// every start, before any seal) and a 64-bit counter within it that starts at a random offset.
/// Shared by every data key of the process: each key sees a strictly increasing subsequence of
/// one count, so no two of its seals in one incarnation share a nonce; the random start is what
/// keeps a rolled-back or copied data directory, which repeats an incarnation, off the nonces
/// the first process used (see the crate docs).
#[derive(Debug)]
pub struct NonceSource {
    incarnation: u32,
    /// Where the counter starts (random per process).
    start: u64,
    /// Seals so far in this process (the counter is `start + used`, mod 2^64).
    used: AtomicU64,
}

impl NonceSource {
    /// `incarnation` must never have been used to seal under any key this source will seal with
    /// (the keyring raises it durably at start).
    pub fn new(incarnation: u32) -> Result<Arc<NonceSource>, KeyError> {
        let mut start = [0u8; 8];
        SystemRandom::new()
            .fill(&mut start)
            .map_err(|_| KeyError::Random)?;
        Ok(Arc::new(NonceSource {
            incarnation,
            start: u64::from_le_bytes(start),
            used: AtomicU64::new(0),
        }))
    }

    /// A source for a keyring that never seals (encryption off).
    pub fn unused() -> Arc<NonceSource> {
        Arc::new(NonceSource {
            incarnation: 0,
            start: 0,
            used: AtomicU64::new(u64::MAX),
        })
    }

    fn next(&self, key: KeyId) -> Result<[u8; NONCE_BYTES], KeyError> {
        let used = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_add(1))
            .map_err(|_| KeyError::NoncesExhausted(key))?;
        let mut nonce = [0u8; NONCE_BYTES];
        nonce[..4].copy_from_slice(&self.incarnation.to_be_bytes());
        nonce[4..].copy_from_slice(&self.start.wrapping_add(used).to_be_bytes());
        Ok(nonce)
    }
}

/// The nonce and tag of a unit sealed in place ([`DataKey::seal_detached`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detached {
    pub nonce: [u8; NONCE_BYTES],
    pub tag: [u8; TAG_BYTES],
}

/// The parts of a sealed box, borrowed from its bytes ([`Sealed::parse`]).
#[derive(Debug)]
pub struct Sealed<'a> {
    pub key: KeyId,
    header: &'a [u8],
    nonce: [u8; NONCE_BYTES],
    ciphertext_and_tag: &'a [u8],
}

const HEADER_BYTES: usize = 1 + KeyId::BYTES + NONCE_BYTES;

impl<'a> Sealed<'a> {
    /// Whether `bytes` start like a sealed box (the magic byte). A plaintext unit of a format
    /// whose first byte can never be [`SEAL_MAGIC`] is told apart by this alone.
    pub fn is_sealed(bytes: &[u8]) -> bool {
        bytes.first() == Some(&SEAL_MAGIC)
    }

    /// Splits a sealed box into its parts; checks only its shape (the tag is checked by open).
    pub fn parse(bytes: &'a [u8]) -> Result<Sealed<'a>, KeyError> {
        if bytes.len() < SEAL_OVERHEAD {
            return Err(KeyError::Malformed(format!(
                "{} bytes, shorter than a sealed box's {SEAL_OVERHEAD}",
                bytes.len()
            )));
        }
        if bytes[0] != SEAL_MAGIC {
            return Err(KeyError::Malformed(format!(
                "first byte {:#04x} is not a sealed box's",
                bytes[0]
            )));
        }
        let mut key = [0u8; KeyId::BYTES];
        key.copy_from_slice(&bytes[1..1 + KeyId::BYTES]);
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&bytes[1 + KeyId::BYTES..HEADER_BYTES]);
        Ok(Sealed {
            key: KeyId(key),
            header: &bytes[..HEADER_BYTES],
            nonce,
            ciphertext_and_tag: &bytes[HEADER_BYTES..],
        })
    }
}

/// One data key, ready to seal (with its process's nonces) and open.
pub struct DataKey {
    id: KeyId,
    key: LessSafeKey,
    nonces: Arc<NonceSource>,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey").field("id", &self.id).finish()
    }
}

impl DataKey {
    /// A new random key: its id and secret bytes (to wrap), and the key itself.
    pub fn generate(nonces: Arc<NonceSource>) -> Result<(DataKey, Zeroizing<[u8; 32]>), KeyError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(secret.as_mut())
            .map_err(|_| KeyError::Random)?;
        let id = KeyId::random()?;
        Ok((DataKey::from_secret(id, &secret, nonces)?, secret))
    }

    /// The key `id` from its secret bytes (unwrapped).
    pub fn from_secret(
        id: KeyId,
        secret: &[u8; 32],
        nonces: Arc<NonceSource>,
    ) -> Result<DataKey, KeyError> {
        let unbound = UnboundKey::new(&AES_256_GCM, secret)
            .map_err(|_| KeyError::Malformed("data key of the wrong length".into()))?;
        Ok(DataKey {
            id,
            key: LessSafeKey::new(unbound),
            nonces,
        })
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Seals `plaintext` into a sealed box, authenticating `context` with it.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let nonce = self.nonces.next(self.id)?;
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.push(SEAL_MAGIC);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let aad = aad(&out[..HEADER_BYTES], context);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut out[HEADER_BYTES..],
            )
            .map_err(|_| KeyError::Malformed("unit too long to seal".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a sealed box this key sealed (`sealed.key` must be this key's id), checking
    /// `context` as its authenticated data. Returns the plaintext.
    pub fn open(&self, context: &[u8], sealed: &Sealed<'_>) -> Result<Vec<u8>, KeyError> {
        if sealed.key != self.id {
            return Err(self.open_error(context));
        }
        let aad = aad(sealed.header, context);
        let mut buf = sealed.ciphertext_and_tag.to_vec();
        let plain_len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(sealed.nonce),
                Aad::from(&aad),
                &mut buf,
            )
            .map_err(|_| self.open_error(context))?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }

    /// Seals `data` in place (same length), authenticating `context`; returns the nonce and tag
    /// to keep beside it.
    pub fn seal_detached(&self, context: &[u8], data: &mut [u8]) -> Result<Detached, KeyError> {
        let nonce = self.nonces.next(self.id)?;
        let aad = aad(&self.id.0, context);
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), data)
            .map_err(|_| KeyError::Malformed("unit too long to seal".into()))?;
        let mut tag_bytes = [0u8; TAG_BYTES];
        tag_bytes.copy_from_slice(tag.as_ref());
        Ok(Detached {
            nonce,
            tag: tag_bytes,
        })
    }

    /// Opens in place what [`DataKey::seal_detached`] sealed with `detached` and `context`.
    pub fn open_detached(
        &self,
        context: &[u8],
        detached: &Detached,
        data: &mut [u8],
    ) -> Result<(), KeyError> {
        let aad = aad(&self.id.0, context);
        self.key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(detached.nonce),
                Aad::from(&aad),
                Tag::from(detached.tag),
                data,
                0..,
            )
            .map(|_| ())
            .map_err(|_| self.open_error(context))
    }

    fn open_error(&self, context: &[u8]) -> KeyError {
        KeyError::Open {
            key: self.id,
            context: String::from_utf8_lossy(context).chars().take(80).collect(),
        }
    }
}

/// Authenticated data: the unit's header, then the caller's context, length-prefixed so no two
/// (header, context) pairs give the same bytes.
fn aad(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + context.len() + 8);
    aad.extend_from_slice(&(header.len() as u32).to_le_bytes());
    aad.extend_from_slice(header);
    aad.extend_from_slice(&(context.len() as u32).to_le_bytes());
    aad.extend_from_slice(context);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(incarnation: u32) -> DataKey {
        DataKey::generate(NonceSource::new(incarnation).unwrap())
            .unwrap()
            .0
    }

    #[test]
    fn a_box_opens_only_with_its_key_and_context() {
        let k = key(1);
        let sealed = k.seal(b"ctx", b"secret page").unwrap();
        assert_eq!(sealed.len(), b"secret page".len() + SEAL_OVERHEAD);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let parsed = Sealed::parse(&sealed).unwrap();
        assert_eq!(parsed.key, k.id());
        assert_eq!(k.open(b"ctx", &parsed).unwrap(), b"secret page");
        assert!(matches!(
            k.open(b"other", &parsed),
            Err(KeyError::Open { .. })
        ));
        assert!(key(1).open(b"ctx", &parsed).is_err());
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 1;
            let opened = Sealed::parse(&flipped).and_then(|p| k.open(b"ctx", &p));
            assert!(opened.is_err(), "a flipped bit at {i} still opened");
        }
    }

    #[test]
    fn detached_units_round_trip_and_refuse_another_context() {
        let k = key(7);
        let mut page = vec![0x5a; 4096];
        let d = k.seal_detached(b"page 3 lsn 9", &mut page).unwrap();
        assert_ne!(page, vec![0x5a; 4096]);
        let mut copy = page.clone();
        assert!(k.open_detached(b"page 4 lsn 9", &d, &mut copy).is_err());
        k.open_detached(b"page 3 lsn 9", &d, &mut page).unwrap();
        assert_eq!(page, vec![0x5a; 4096]);
    }

    #[test]
    fn nonces_are_incarnation_then_counter_and_never_repeat() {
        let source = NonceSource::new(3).unwrap();
        let id = KeyId([0; 16]);
        let a = source.next(id).unwrap();
        let b = source.next(id).unwrap();
        assert_eq!(&a[..4], &3u32.to_be_bytes());
        assert_ne!(a, b);
        // The counter runs on from a random start, through 2^64 back to below it...
        let count = |n: &[u8; NONCE_BYTES]| u64::from_be_bytes(n[4..].try_into().unwrap());
        assert_eq!(count(&b), count(&a).wrapping_add(1));
        // ...and a second process of the same incarnation (a rolled-back directory) starts
        // elsewhere.
        let again = NonceSource::new(3).unwrap();
        assert_ne!(again.next(id).unwrap(), a);
        source.used.store(u64::MAX, Ordering::Relaxed);
        assert!(matches!(source.next(id), Err(KeyError::NoncesExhausted(_))));
        assert!(NonceSource::unused().next(id).is_err(), "never seals");
    }
}
