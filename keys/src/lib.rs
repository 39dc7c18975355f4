//! Encryption at rest: the key hierarchy and the sealed format every encrypted byte on a node's
//! disk and in the object store uses. Pure apart from OS randomness and, for `--key-command`, a
//! child process; no files (the node's keyring keeps the wrapped keys, `sixfold-node::keyring`).
//!
//! # Keys
//!
//! - The **key-encryption key** (KEK, [`Kek`]) is the operator's: 256 bits in a file
//!   (`--key-file`, 64 hex digits, mode 0600 or stricter), in an environment variable
//!   (`SIXFOLD_KEY`, 64 hex digits), or held by a KMS behind `--key-command` (a command that wraps
//!   and unwraps, so the KEK itself never reaches sixfold). It is never written anywhere by
//!   sixfold. Its [`KekId`] (a keyed hash of it, or what the command reports) names it in every
//!   wrapped key, so a wrong key is told apart from damage.
//! - A **data key** ([`DataKey`]) is random, 256 bits, made by a node for one scope (one volume,
//!   or the node's own files) the first time it seals something of that scope. It is stored only
//!   wrapped by the KEK ([`WrappedKey`]), next to what it seals: in the node's `keys/` directory,
//!   and in the object store before the first archived object sealed with it. Each data key has a
//!   random 128-bit [`KeyId`] that every sealed unit names.
//!
//! # Sealed units
//!
//! AES-256-GCM. A sealed box ([`DataKey::seal`]) is
//! `SEAL_MAGIC u8 | key id [16] | nonce [12] | ciphertext | tag [16]`; the header bytes and the
//! caller's context (which file, which page and LSN) are authenticated data, so a unit moved to
//! another place, or re-labelled with another key id, fails to open instead of decoding.
//! Fixed-size units (page slots) keep the ciphertext in place and the nonce and tag beside it
//! ([`DataKey::seal_detached`]).
//!
//! # Nonces: why one never repeats under one key
//!
//! A nonce is `incarnation u32 | counter u64` (big-endian). Only the node that made a data key
//! ever seals with it (others only open what it sealed: peers' archived objects at restore). The
//! node's incarnation is a number in its keyring that it raises durably at every start before it
//! seals anything ([`NonceSource`]); the counter counts seals within one incarnation in memory,
//! from a random 64-bit start, mod 2^64, and sealing fails after 2^64 seals. So two seals under
//! one key share a nonce only if they happen in the same incarnation with the same count, which
//! cannot be. Pages are rewritten in place many times: each rewrite is a new seal with a new
//! nonce, so the count of writes is unbounded by the 2^32 limit that random 96-bit nonces would
//! impose. Restores and clones create new volumes, sealed under data keys of their own (the
//! archived objects they read are opened with the archiving node's key, never sealed with it
//! again). Two processes on one data directory are kept out by the node's lock on it
//! (`DIR/lock`). `sixfold key rotate` starts new keys (and their nonces) altogether.
//!
//! A data directory rolled back to an older copy (a VM snapshot restored, a backup of the
//! directory put back) or copied to a second machine repeats incarnations: there the random
//! start is what keeps nonces apart. Two processes of one incarnation that seal `a` and `b`
//! times overlap with probability about `(a + b) / 2^64` (at most 2^-32 for up to 2^31 seals
//! each), where a counter from 0 would overlap for certain. Still never do either with a node's
//! directory (SEMANTICS 19): its data is stale as well, and the guarantee above is the
//! deterministic one only without it.
//!
//! Wrapping a data key under a local KEK uses a random nonce: a node wraps a handful of keys in
//! its life, far below the 2^32 wraps per KEK that random nonces allow.

mod data_key;
mod kek;
mod wrapped;

pub use data_key::{DataKey, Detached, KeyId, NonceSource, Sealed, NONCE_BYTES, TAG_BYTES};
pub use kek::{Kek, KekId, KekSource, KEY_ENV};
pub use wrapped::WrappedKey;

/// First byte of a sealed box.
pub const SEAL_MAGIC: u8 = 0xA5;
/// Bytes a sealed box adds to its plaintext: magic, key id, nonce, tag.
pub const SEAL_OVERHEAD: usize = 1 + KeyId::BYTES + NONCE_BYTES + TAG_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key-encryption key: {0}")]
    Kek(String),
    #[error("key command `{command}`: {reason}")]
    Command { command: String, reason: String },
    #[error(
        "data key {key} is wrapped by key-encryption key {wrapped_by}, but this process has {have}: \
         start it with the key-encryption key the data was written with (--key-file, SIXFOLD_KEY \
         or --key-command)"
    )]
    WrongKek {
        key: KeyId,
        wrapped_by: KekId,
        have: KekId,
    },
    #[error("data key {key} does not unwrap under key-encryption key {kek}: the key or its wrapping is damaged")]
    Unwrap { key: KeyId, kek: KekId },
    #[error(
        "key-encryption key {kek} unwrapped data key {key} to a key that fails its key check: the \
         key command (KMS) answered with a wrong key; nothing is sealed or opened with it"
    )]
    WrongKey { key: KeyId, kek: KekId },
    #[error("sealed data does not open with data key {key} ({context}): damaged, or moved from elsewhere")]
    Open { key: KeyId, context: String },
    #[error("malformed sealed data ({0})")]
    Malformed(String),
    #[error("data key {0} has sealed 2^64 units in this incarnation")]
    NoncesExhausted(KeyId),
    #[error("the system's random number generator failed")]
    Random,
}
