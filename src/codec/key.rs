//! The encryption-at-rest key: 32 bytes read from a file, wiped from
//! memory when dropped.

use std::path::Path;

use zeroize::{Zeroize, Zeroizing};

/// A 256-bit XChaCha20-Poly1305 key.
pub struct EncryptionKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(..)")
    }
}

impl EncryptionKey {
    pub fn from_bytes(bytes: [u8; 32]) -> EncryptionKey {
        EncryptionKey(Zeroizing::new(bytes))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A new random key from the operating system (getrandom(2)): the key
    /// of a server started without `--encryption-key-file`.
    pub fn generate() -> Result<EncryptionKey, String> {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| format!("no random key: {e}"))?;
        let generated = EncryptionKey::from_bytes(key);
        key.zeroize();
        Ok(generated)
    }

    /// Reads `--encryption-key-file`: exactly 32 raw bytes, or 64 hex
    /// digits (a final newline allowed).
    pub fn load(path: &Path) -> Result<EncryptionKey, String> {
        let mut data =
            Zeroizing::new(std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?);
        EncryptionKey::parse(&data).map_err(|reason| {
            data.zeroize();
            format!("{}: {reason}", path.display())
        })
    }

    /// [`EncryptionKey::load`] of bytes already read.
    pub fn parse(data: &[u8]) -> Result<EncryptionKey, String> {
        let mut key = [0u8; 32];
        if data.len() == 32 {
            key.copy_from_slice(data);
            return Ok(EncryptionKey::from_bytes(key));
        }
        let text = data.strip_suffix(b"\n").unwrap_or(data);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.len() == 64 && hex::decode_to_slice(text, &mut key).is_ok() {
            return Ok(EncryptionKey::from_bytes(key));
        }
        key.zeroize();
        Err(format!(
            "an encryption key file holds 32 raw bytes or 64 hex digits, not {} bytes",
            data.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_hex_keys() {
        assert_eq!(EncryptionKey::parse(&[7u8; 32]).unwrap().bytes(), &[7u8; 32]);
        let hex = format!("{}\n", "ab".repeat(32));
        assert_eq!(EncryptionKey::parse(hex.as_bytes()).unwrap().bytes(), &[0xab; 32]);
        assert!(EncryptionKey::parse(b"short").is_err());
        assert!(EncryptionKey::parse("zz".repeat(32).as_bytes()).is_err());
        assert!(EncryptionKey::parse(&[1u8; 33]).is_err());
    }
}
