//! The secrets key: loading or making the key file, sealing and opening
//! values (AES-256-GCM, a random nonce per value, the name as associated
//! data).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::SecretsError;

/// Bytes of an AES-256 key.
pub const KEY_LEN: usize = 32;

/// The file the key is made in when none is configured.
pub const DEFAULT_KEY_FILE: &str = "secrets.key";

/// One secrets key and its id (derived from the key, safe to show).
pub struct SecretsKey {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretsKey({})", self.id)
    }
}

/// A sealed value: the nonce and the ciphertext with its tag.
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl SecretsKey {
    pub fn from_bytes(raw: &[u8; KEY_LEN]) -> Result<SecretsKey, SecretsError> {
        let unbound = UnboundKey::new(&AES_256_GCM, raw)
            .map_err(|_| SecretsError::Crypto("cannot use the key".into()))?;
        // The id is a hash of the key under a fixed label: it tells keys
        // apart without saying anything usable about them.
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"hodei secrets key id\0");
        ctx.update(raw);
        let id = ctx.finish().as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(SecretsKey {
            key: LessSafeKey::new(unbound),
            id,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `value` for the secret `name` under a fresh random nonce.
    pub fn seal(&self, name: &str, value: &[u8]) -> Result<Sealed, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretsError::Crypto("no randomness for a nonce".into()))?;
        let mut ciphertext = value.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut ciphertext,
            )
            .map_err(|_| SecretsError::Crypto("cannot encrypt".into()))?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens what [`seal`](Self::seal) made for `name`; fails when the key,
    /// the name or a byte differs.
    pub fn open(&self, name: &str, sealed: &Sealed) -> Result<Vec<u8>, SecretsError> {
        let bad = || {
            SecretsError::Crypto(format!(
                "secret {name} does not decrypt with key {}: wrong key or damaged record",
                self.id
            ))
        };
        let nonce = Nonce::try_assume_unique_for_key(&sealed.nonce).map_err(|_| bad())?;
        let mut buf = sealed.ciphertext.clone();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buf)
            .map_err(|_| bad())?;
        Ok(plain.to_vec())
    }
}

/// Reads a key file: 32 bytes, base64-encoded (surrounding white space
/// ignored) or raw.
pub fn read_key_file(path: &Path) -> Result<SecretsKey, SecretsError> {
    let bad = |message: String| SecretsError::KeyFile {
        path: path.display().to_string(),
        message,
    };
    let data = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    warn_if_readable_by_others(path);
    let decoded = std::str::from_utf8(&data)
        .ok()
        .and_then(|text| STANDARD.decode(text.trim()).ok());
    let raw = match decoded {
        Some(raw) => raw,
        None if data.len() == KEY_LEN => data,
        None => {
            return Err(bad(
                "neither base64 text nor 32 raw bytes (make one with `openssl rand -base64 32`)"
                    .into(),
            ));
        }
    };
    let raw: [u8; KEY_LEN] = raw.as_slice().try_into().map_err(|_| {
        bad(format!(
            "the key is {} bytes; it must be {KEY_LEN} (`openssl rand -base64 32`)",
            raw.len()
        ))
    })?;
    SecretsKey::from_bytes(&raw)
}

/// The configured key file, or `data_dir/secrets.key`, made (mode 0600,
/// synced) with a random key when it does not exist yet.
pub fn load_or_create(
    configured: Option<&Path>,
    data_dir: &Path,
) -> Result<(SecretsKey, PathBuf), SecretsError> {
    if let Some(path) = configured {
        return Ok((read_key_file(path)?, path.to_path_buf()));
    }
    let path = data_dir.join(DEFAULT_KEY_FILE);
    if path.exists() {
        return Ok((read_key_file(&path)?, path));
    }
    let bad = |message: String| SecretsError::KeyFile {
        path: path.display().to_string(),
        message,
    };
    let mut raw = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| bad("no randomness for a key".into()))?;
    std::fs::create_dir_all(data_dir).map_err(|e| bad(e.to_string()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(|e| bad(e.to_string()))?;
    file.write_all(format!("{}\n", STANDARD.encode(raw)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| bad(e.to_string()))?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| bad(e.to_string()))?;
    tracing::info!(path = %path.display(), "made a new secrets key");
    Ok((SecretsKey::from_bytes(&raw)?, path))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the secrets key file is readable by others than its owner; chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_name() {
        let key = SecretsKey::from_bytes(&[7; KEY_LEN]).unwrap();
        let other = SecretsKey::from_bytes(&[8; KEY_LEN]).unwrap();
        assert_ne!(key.id(), other.id());
        let a = key.seal("TOKEN", b"value-1").unwrap();
        let b = key.seal("TOKEN", b"value-1").unwrap();
        assert_ne!(a.nonce, b.nonce, "a fresh nonce per value");
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a.ciphertext.windows(7).any(|w| w == b"value-1"));
        assert_eq!(key.open("TOKEN", &a).unwrap(), b"value-1");
        assert!(key.open("OTHER", &a).is_err(), "the name is bound");
        assert!(other.open("TOKEN", &a).is_err());
        let mut damaged = Sealed {
            nonce: a.nonce.clone(),
            ciphertext: a.ciphertext.clone(),
        };
        damaged.ciphertext[0] ^= 1;
        assert!(key.open("TOKEN", &damaged).is_err());
    }

    #[test]
    fn a_key_file_is_made_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (key, path) = load_or_create(None, dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, _) = load_or_create(None, dir.path()).unwrap();
        assert_eq!(key.id(), again.id());
        let sealed = key.seal("A", b"abcd").unwrap();
        assert_eq!(again.open("A", &sealed).unwrap(), b"abcd");
    }

    #[test]
    fn bad_key_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "c2hvcnQ=\n").unwrap();
        let err = read_key_file(&path).unwrap_err().to_string();
        assert!(err.contains("5 bytes") && err.contains("32"), "{err}");
        std::fs::write(&path, [1u8; 32]).unwrap();
        assert!(read_key_file(&path).is_ok(), "32 raw bytes");
        let missing = read_key_file(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
