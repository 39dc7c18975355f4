//! The key-encryption key: where it comes from, its id, and wrapping data keys under it.
//!
//! `--key-command CMD` is the hook for a KMS: sixfold runs `sh -c CMD sixfold-key OP` with OP one
//! of `id` (print the KEK's id: 1 to 64 characters of `[A-Za-z0-9._:-]`), `wrap` (read a data key
//! as 64 hex digits on stdin, print its wrapped form as hex) and `unwrap` (the reverse). The
//! command must fail (non-zero exit) rather than print a wrong key; sixfold checks the id it gets
//! back and never logs what crosses the pipe.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::data_key::{KeyId, NONCE_BYTES};
use crate::KeyError;

/// The environment variable a key-encryption key can be given in (64 hex digits).
pub const KEY_ENV: &str = "SIXFOLD_KEY";

/// Longest wrapped data key a key command may return, in bytes.
const WRAPPED_MAX: usize = 4096;
/// How long a key command may take: a KMS that does not answer is an error, not a node that
/// waits forever (the first seal of a new volume waits for it).
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A KEK's name as written in wrapped keys: `kek-` and 16 hex digits of a keyed hash for local
/// keys, what the command says for KMS keys.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KekId(String);

impl KekId {
    /// Checks a KEK id read from disk, the object store or a key command.
    pub fn parse(text: &str) -> Result<KekId, KeyError> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
        if ok {
            Ok(KekId(text.to_owned()))
        } else {
            Err(KeyError::Kek(format!(
                "{:?} is not a key-encryption key id (1 to 64 of A-Z a-z 0-9 . _ : -)",
                text.chars().take(80).collect::<String>()
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the operator's KEK comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KekSource {
    /// A file of 64 hex digits, readable by its owner only.
    File(PathBuf),
    /// 64 hex digits (from [`KEY_ENV`]).
    Hex(String),
    /// A command that wraps and unwraps (module docs).
    Command(String),
}

/// The key-encryption key.
pub struct Kek {
    id: KekId,
    inner: Inner,
}

enum Inner {
    Local(Box<LessSafeKey>),
    Command(String),
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek").field("id", &self.id).finish()
    }
}

impl Kek {
    pub fn load(source: &KekSource) -> Result<Kek, KeyError> {
        match source {
            KekSource::File(path) => Kek::from_hex(&read_key_file(path)?)
                .map_err(|e| KeyError::Kek(format!("{}: {e}", path.display()))),
            KekSource::Hex(text) => {
                Kek::from_hex(text).map_err(|e| KeyError::Kek(format!("{KEY_ENV}: {e}")))
            }
            KekSource::Command(command) => {
                let out = run_command(command, "id", None)?;
                let id = KekId::parse(out.trim()).map_err(|e| KeyError::Command {
                    command: command.clone(),
                    reason: format!("`id` printed no key id: {e}"),
                })?;
                Ok(Kek {
                    id,
                    inner: Inner::Command(command.clone()),
                })
            }
        }
    }

    /// A local KEK from 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Kek, String> {
        let mut secret = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), secret.as_mut())
            .map_err(|_| "a key-encryption key is 64 hex digits (256 bits)".to_string())?;
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret.as_ref()),
            b"sixfold key-encryption key id v1",
        );
        let id = KekId(format!("kek-{}", hex::encode(&tag.as_ref()[..8])));
        let unbound = UnboundKey::new(&AES_256_GCM, secret.as_ref())
            .map_err(|_| "a key-encryption key is 256 bits".to_string())?;
        Ok(Kek {
            id,
            inner: Inner::Local(Box::new(LessSafeKey::new(unbound))),
        })
    }

    /// 64 new random hex digits: a fresh KEK (`sixfold up`, `sixfold key new`).
    pub fn generate_hex() -> Result<Zeroizing<String>, KeyError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(secret.as_mut())
            .map_err(|_| KeyError::Random)?;
        Ok(Zeroizing::new(hex::encode(secret.as_ref())))
    }

    pub fn id(&self) -> &KekId {
        &self.id
    }

    /// Wraps data key `key` (its secret bytes) under this KEK; the key id is bound to the result.
    pub fn wrap(&self, key: KeyId, secret: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        match &self.inner {
            Inner::Local(kek) => {
                let mut nonce = [0u8; NONCE_BYTES];
                SystemRandom::new()
                    .fill(&mut nonce)
                    .map_err(|_| KeyError::Random)?;
                let mut out = nonce.to_vec();
                out.extend_from_slice(secret);
                let tag = kek
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(wrap_aad(key)),
                        &mut out[NONCE_BYTES..],
                    )
                    .map_err(|_| KeyError::Kek("wrapping failed".into()))?;
                out.extend_from_slice(tag.as_ref());
                Ok(out)
            }
            Inner::Command(command) => {
                let input = Zeroizing::new(hex::encode(secret));
                let out = run_command(command, "wrap", Some(&input))?;
                let wrapped = hex::decode(out.trim()).map_err(|_| KeyError::Command {
                    command: command.clone(),
                    reason: "`wrap` printed no hex".into(),
                })?;
                if wrapped.is_empty() || wrapped.len() > WRAPPED_MAX {
                    return Err(KeyError::Command {
                        command: command.clone(),
                        reason: format!(
                            "`wrap` printed {} bytes (1 to {WRAPPED_MAX})",
                            wrapped.len()
                        ),
                    });
                }
                Ok(wrapped)
            }
        }
    }

    /// Unwraps what [`Kek::wrap`] made for `key`.
    pub fn unwrap(&self, key: KeyId, wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let unwrap_error = || KeyError::Unwrap {
            key,
            kek: self.id.clone(),
        };
        match &self.inner {
            Inner::Local(kek) => {
                if wrapped.len() != NONCE_BYTES + 32 + 16 {
                    return Err(unwrap_error());
                }
                let mut nonce = [0u8; NONCE_BYTES];
                nonce.copy_from_slice(&wrapped[..NONCE_BYTES]);
                let mut buf = Zeroizing::new(wrapped[NONCE_BYTES..].to_vec());
                let plain = kek
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(wrap_aad(key)),
                        buf.as_mut_slice(),
                    )
                    .map_err(|_| unwrap_error())?;
                let mut secret = Zeroizing::new([0u8; 32]);
                secret.copy_from_slice(plain);
                Ok(secret)
            }
            Inner::Command(command) => {
                let out =
                    Zeroizing::new(run_command(command, "unwrap", Some(&hex::encode(wrapped)))?);
                let mut secret = Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(out.trim(), secret.as_mut()).map_err(|_| {
                    KeyError::Command {
                        command: command.clone(),
                        reason: "`unwrap` printed no 64 hex digits".into(),
                    }
                })?;
                Ok(secret)
            }
        }
    }
}

fn wrap_aad(key: KeyId) -> [u8; 24] {
    let mut aad = [0u8; 24];
    aad[..8].copy_from_slice(b"sfdkey01");
    aad[8..].copy_from_slice(&key.0);
    aad
}

fn read_key_file(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| KeyError::Kek(format!("{}: {e}", path.display())))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Kek(format!(
            "{} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        )));
    }
    if meta.len() > 1024 {
        return Err(KeyError::Kek(format!(
            "{} is {} bytes; a key file holds 64 hex digits",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| KeyError::Kek(format!("{}: {e}", path.display())))
}

fn run_command(command: &str, op: &str, input: Option<&str>) -> Result<String, KeyError> {
    run_command_within(command, op, input, COMMAND_TIMEOUT)
}

fn run_command_within(
    command: &str,
    op: &str,
    input: Option<&str>,
    timeout: std::time::Duration,
) -> Result<String, KeyError> {
    use std::io::Read;
    let fail = |reason: String| KeyError::Command {
        command: command.to_owned(),
        reason,
    };
    let mut child = Command::new("sh")
        .args(["-c", command, "sixfold-key", op])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        if let Some(input) = input {
            // A command that exits without reading its input is judged by its exit status.
            let _ = stdin.write_all(input.as_bytes());
            let _ = stdin.write_all(b"\n");
        }
    }
    // What it prints is small (at most a few KiB, less than a pipe holds), so it can all be
    // read once it has exited; one that prints more blocks, times out and is killed.
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "`{op}` did not answer within {} s",
                    timeout.as_secs_f64()
                )));
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(e) => return Err(fail(format!("`{op}`: {e}"))),
        }
    };
    let limit = (2 * WRAPPED_MAX + 3) as u64;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(out) = child.stdout.take() {
        let _ = out.take(limit).read_to_end(&mut stdout);
    }
    if let Some(err) = child.stderr.take() {
        let _ = err.take(4096).read_to_end(&mut stderr);
    }
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr);
        return Err(fail(format!(
            "`{op}` exited with {status}: {}",
            stderr.trim().chars().take(300).collect::<String>()
        )));
    }
    if stdout.len() > 2 * WRAPPED_MAX + 2 {
        return Err(fail(format!("`{op}` printed {} bytes", stdout.len())));
    }
    String::from_utf8(stdout).map_err(|_| fail(format!("`{op}` printed no text")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn local_wrap_round_trips_and_is_bound_to_key_id_and_kek() {
        let kek = Kek::from_hex(HEX).unwrap();
        assert!(kek.id().as_str().starts_with("kek-"));
        assert_eq!(Kek::from_hex(HEX).unwrap().id(), kek.id());
        let id = KeyId([7; 16]);
        let secret = [9u8; 32];
        let wrapped = kek.wrap(id, &secret).unwrap();
        assert_eq!(*kek.unwrap(id, &wrapped).unwrap(), secret);
        assert!(matches!(
            kek.unwrap(KeyId([8; 16]), &wrapped),
            Err(KeyError::Unwrap { .. })
        ));
        let other = Kek::from_hex(&Kek::generate_hex().unwrap()).unwrap();
        assert_ne!(other.id(), kek.id());
        assert!(other.unwrap(id, &wrapped).is_err());
    }

    #[test]
    fn bad_key_material_is_refused_with_a_reason() {
        assert!(Kek::from_hex("abcd").is_err());
        assert!(Kek::from_hex(&"zz".repeat(32)).is_err());
        let dir = std::env::temp_dir().join(format!("sixfold-kek-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kek");
        std::fs::write(&path, HEX).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Kek::load(&KekSource::File(path.clone())).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Kek::load(&KekSource::File(path)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_command_wraps_and_unwraps() {
        // A toy "KMS": wrapping is the identity on hex. Real ones call out to a service.
        let command = r#"case "$1" in id) echo kms-test:1;; *) cat;; esac"#;
        let kek = Kek::load(&KekSource::Command(command.into())).unwrap();
        assert_eq!(kek.id().as_str(), "kms-test:1");
        let id = KeyId([1; 16]);
        let wrapped = kek.wrap(id, &[5u8; 32]).unwrap();
        assert_eq!(*kek.unwrap(id, &wrapped).unwrap(), [5u8; 32]);
        let failing = Kek::load(&KekSource::Command("echo nope >&2; exit 3".into()));
        let err = failing.unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        // A KMS that does not answer is an error after the timeout, not a wait forever.
        let started = std::time::Instant::now();
        let err = run_command_within(
            "sleep 10",
            "id",
            None,
            std::time::Duration::from_millis(200),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("did not answer"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
