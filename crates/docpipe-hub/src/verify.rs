//! Checking a downloaded file against what its origin promised, before it enters the cache: the
//! hub's etag of an LFS file is the sha256 of its bytes and that of a small file its git blob
//! id; an object store gives a size (its etags are not hashes of the bytes in general).

use std::io::Read;
use std::path::Path;

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// What a file's bytes must hash or measure to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expected {
    /// The sha256 of the bytes (hex), the etag of an LFS file.
    Sha256(String),
    /// The git blob id (sha1 of `blob <size>\0` and the bytes, hex), the etag of a small file.
    GitBlob(String),
    /// Only the size is known.
    Size(u64),
}

impl Expected {
    /// What a hub etag promises: 64 hex digits are a sha256, 40 a git blob id; anything else
    /// (a mirror's own etags) only the size the hub gave.
    pub(crate) fn from_etag(etag: &str, size: u64) -> Expected {
        let hex = etag.chars().all(|c| c.is_ascii_hexdigit());
        match etag.len() {
            64 if hex => Expected::Sha256(etag.to_ascii_lowercase()),
            40 if hex => Expected::GitBlob(etag.to_ascii_lowercase()),
            _ => Expected::Size(size),
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Sha256(hex) => write!(f, "sha256 {hex}"),
            Expected::GitBlob(hex) => write!(f, "git blob {hex}"),
            Expected::Size(size) => write!(f, "size {size}"),
        }
    }
}

/// `Ok` when the file at `path` is what `expected` says, else what it is instead (in the same
/// terms, for the message).
pub(crate) fn check(path: &Path, expected: &Expected) -> std::io::Result<Result<(), Expected>> {
    let size = std::fs::metadata(path)?.len();
    let actual = match expected {
        Expected::Size(_) => Expected::Size(size),
        Expected::Sha256(_) => Expected::Sha256(hash_file::<Sha256>(path, &[])?),
        Expected::GitBlob(_) => Expected::GitBlob(hash_file::<Sha1>(
            path,
            format!("blob {size}\0").as_bytes(),
        )?),
    };
    Ok(if &actual == expected {
        Ok(())
    } else {
        Err(actual)
    })
}

/// The hex digest of `prefix` followed by the file's bytes.
fn hash_file<D: Digest>(path: &Path, prefix: &[u8]) -> std::io::Result<String> {
    let mut hasher = D::new();
    hasher.update(prefix);
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_say_which_hash_to_check() {
        let sha256 = "a".repeat(64);
        assert_eq!(
            Expected::from_etag(&sha256, 3),
            Expected::Sha256(sha256.clone())
        );
        let blob = "b".repeat(40);
        assert_eq!(Expected::from_etag(&blob, 3), Expected::GitBlob(blob));
        assert_eq!(Expected::from_etag("W/\"x-1\"", 3), Expected::Size(3));
    }

    #[test]
    fn hashes_match_sha256sum_and_git_hash_object() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello\n").unwrap();
        // `sha256sum` and `git hash-object` of "hello\n".
        let sha256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        let blob = "ce013625030ba8dba906f756967f9e9ca394464a";
        assert!(check(&path, &Expected::Sha256(sha256.into()))
            .unwrap()
            .is_ok());
        assert!(check(&path, &Expected::GitBlob(blob.into()))
            .unwrap()
            .is_ok());
        assert!(check(&path, &Expected::Size(6)).unwrap().is_ok());
        std::fs::write(&path, b"hellO\n").unwrap();
        assert!(check(&path, &Expected::Sha256(sha256.into()))
            .unwrap()
            .is_err());
        assert!(check(&path, &Expected::GitBlob(blob.into()))
            .unwrap()
            .is_err());
        assert_eq!(
            check(&path, &Expected::Size(7)).unwrap(),
            Err(Expected::Size(6))
        );
    }
}
