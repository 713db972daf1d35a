//! The value codec: what the store holds in place of a client's value when
//! compression or encryption at rest applies, and back. The store never
//! sees this module; `shard::execute` calls it around `Store::set_flagged`
//! and after each lookup of an item whose codec bits are set.
//!
//! Order: compress, then encrypt. Stored forms (`flags` = the item header's
//! two codec bits):
//! - [`COMPRESSED`]: `original length (u32 LE) ‖ lz4 block`; kept only when
//!   shorter than the value.
//! - [`ENCRYPTED`]: `nonce (24 bytes) ‖ XChaCha20-Poly1305 ciphertext ‖
//!   tag (16 bytes)` of the (possibly compressed) bytes. The associated data
//!   is `format version ‖ flags ‖ item key`, so a ciphertext fails closed
//!   if moved to another key or if its flags are flipped.
//!
//! Nonces are 192 random bits from a per-shard ChaCha20 CSPRNG seeded by
//! the OS (no syscall per write); with 192-bit nonces random choice is safe
//! for any number of writes under one key.
//!
//! Decompression never trusts the stored length: it must be at most the
//! server's `max_item_bytes` before a byte is allocated, and the output
//! must be exactly that long.

pub mod key;

use std::sync::Arc;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::Status;
pub use key::EncryptionKey;

/// Codec bit: the stored bytes are lz4-compressed.
pub const COMPRESSED: u32 = 0b01;
/// Codec bit: the stored bytes are sealed with XChaCha20-Poly1305.
pub const ENCRYPTED: u32 = 0b10;

const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
/// Bytes encryption adds to a value.
pub const SEAL_OVERHEAD: usize = NONCE_BYTES + TAG_BYTES;
const LEN_BYTES: usize = 4;
/// Version of the stored format, bound into the associated data.
const FORMAT_VERSION: u8 = 1;
/// Longest key (crate::key allows 250 bytes).
const MAX_KEY_BYTES: usize = 255;

/// Default `--compression-threshold`: values up to this many bytes are
/// never compressed (lz4 rarely wins on them and it costs a copy).
pub const DEFAULT_COMPRESSION_THRESHOLD: usize = 512;

/// When values are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionMode {
    Off,
    /// When a request or its connection sets `options.compression`.
    #[default]
    Requested,
    /// Every value above the threshold.
    Always,
}

impl CompressionMode {
    pub fn parse(name: &str) -> Option<CompressionMode> {
        match name {
            "off" => Some(CompressionMode::Off),
            "requested" => Some(CompressionMode::Requested),
            "always" => Some(CompressionMode::Always),
            _ => None,
        }
    }
}

/// Server-wide codec settings (`--encryption-key-file`, `--encrypt-prefix`,
/// `--compression`, `--compression-threshold`).
#[derive(Debug, Clone, Default)]
pub struct CodecSettings {
    pub key: Option<Arc<EncryptionKey>>,
    pub encrypt_prefixes: Vec<Vec<u8>>,
    pub compression: CompressionMode,
    pub compression_threshold: usize,
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Encryption asked for, but the server has no key (CACHE_006).
    #[error("encryption requested but this cluster node has no --encryption-key-file (a cluster needs one key on every node)")]
    NoKey,
    /// The stored bytes failed authentication or do not decode (CACHE_011).
    #[error("stored value failed its integrity check")]
    Corrupt,
    /// A compressed value claims an original size above `max_item_bytes`.
    #[error("stored value claims a size above max_item_bytes")]
    TooLarge,
}

impl CodecError {
    /// The status a client gets.
    pub fn status(self) -> Status {
        match self {
            CodecError::NoKey => Status::Malformed,
            CodecError::Corrupt | CodecError::TooLarge => Status::Unavailable,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            CodecError::NoKey => "encryption requested but this cluster node has no --encryption-key-file (a cluster needs one key on every node)",
            CodecError::Corrupt => "stored value failed its integrity check",
            CodecError::TooLarge => "stored value claims a size above max_item_bytes",
        }
    }
}

/// One shard's codec: settings, cipher, CSPRNG and reusable buffers.
pub struct ValueCodec {
    cipher: Option<XChaCha20Poly1305>,
    rng: Option<ChaCha20Rng>,
    prefixes: Vec<Vec<u8>>,
    compression: CompressionMode,
    threshold: usize,
    max_item_bytes: usize,
    /// Compressed bytes of the value being written.
    packed: Vec<u8>,
    /// Sealed bytes of the value being written.
    sealed: Vec<u8>,
    /// Opened (decrypted) bytes of the value being read.
    opened: Vec<u8>,
    /// Decompressed bytes of the value being read.
    plain: Vec<u8>,
}

impl ValueCodec {
    /// No key, no compression unless asked for.
    pub fn off(max_item_bytes: usize) -> ValueCodec {
        ValueCodec::new(&CodecSettings::default(), max_item_bytes)
    }

    pub fn new(settings: &CodecSettings, max_item_bytes: usize) -> ValueCodec {
        ValueCodec {
            cipher: settings
                .key
                .as_ref()
                .map(|k| XChaCha20Poly1305::new(k.bytes().into())),
            rng: None,
            prefixes: settings.encrypt_prefixes.clone(),
            compression: settings.compression,
            threshold: settings.compression_threshold,
            max_item_bytes,
            packed: Vec::new(),
            sealed: Vec::new(),
            opened: Vec::new(),
            plain: Vec::new(),
        }
    }

    /// Whether a write that asks for nothing may still be transformed
    /// (`--encrypt-prefix` keys, or compression always on). When false,
    /// such writes skip the codec entirely: a key alone (every server has
    /// one, generated at start if not configured) costs a write nothing.
    pub fn eager(&self) -> bool {
        (self.cipher.is_some() && !self.prefixes.is_empty()) || self.compression == CompressionMode::Always
    }

    /// Whether a key is configured.
    pub fn can_encrypt(&self) -> bool {
        self.cipher.is_some()
    }

    /// Whether a write of `key` is encrypted: asked for by the request or
    /// its connection, or forced by a configured prefix. The one place
    /// that decides (cache types with their own policy plug in here).
    pub fn must_encrypt(&self, key: &[u8], requested: bool) -> bool {
        requested || self.prefixes.iter().any(|p| key.starts_with(p))
    }

    /// The bytes to store for `value` under `key`, and their codec flags.
    pub fn encode<'a>(
        &'a mut self,
        key: &[u8],
        value: &'a [u8],
        compression: bool,
        encryption: bool,
    ) -> Result<(&'a [u8], u32), CodecError> {
        let encrypt = self.must_encrypt(key, encryption);
        if encrypt && self.cipher.is_none() {
            return Err(CodecError::NoKey);
        }
        let compress = match self.compression {
            CompressionMode::Off => false,
            CompressionMode::Requested => compression,
            CompressionMode::Always => true,
        } && value.len() > self.threshold;
        let ValueCodec {
            cipher,
            rng,
            packed,
            sealed,
            ..
        } = self;
        let mut flags = 0;
        let mut bytes = value;
        if compress && pack(value, packed) {
            flags |= COMPRESSED;
            bytes = &packed[..];
        }
        if !encrypt {
            return Ok((bytes, flags));
        }
        flags |= ENCRYPTED;
        let cipher = cipher.as_ref().ok_or(CodecError::NoKey)?;
        let rng = rng.get_or_insert_with(seeded_rng);
        seal(cipher, rng, key, flags, bytes, sealed);
        Ok((&sealed[..], flags))
    }

    /// The client's bytes of a stored value with codec `flags`.
    pub fn decode<'a>(
        &'a mut self,
        key: &[u8],
        flags: u32,
        stored: &'a [u8],
    ) -> Result<&'a [u8], CodecError> {
        let ValueCodec {
            cipher,
            opened,
            plain,
            max_item_bytes,
            ..
        } = self;
        let mut bytes = stored;
        if flags & ENCRYPTED != 0 {
            let cipher = cipher.as_ref().ok_or(CodecError::Corrupt)?;
            open(cipher, key, flags, stored, opened)?;
            bytes = &opened[..];
        }
        if flags & COMPRESSED != 0 {
            unpack(bytes, *max_item_bytes, plain)?;
            bytes = &plain[..];
        }
        Ok(bytes)
    }

    /// Zeroes every scratch buffer that held the plaintext of an
    /// encrypted value (called once its bytes were copied where they go).
    pub fn wipe_scratch(&mut self) {
        use zeroize::Zeroize;
        self.packed.zeroize();
        self.opened.zeroize();
        self.plain.zeroize();
    }

    /// Capacity of the decode buffers, to check that hostile sizes are not
    /// allocated.
    pub fn scratch_capacity(&self) -> usize {
        self.opened.capacity() + self.plain.capacity()
    }
}

/// Makes room for `additional` more bytes in `buf` without leaving its old
/// contents in freed memory: a buffer that may hold the plaintext of an
/// encrypted value grows by copying into a new allocation and zeroing the
/// old one (a plain `Vec` growth frees it as it is).
pub fn reserve_wiping(buf: &mut Vec<u8>, additional: usize) {
    if buf.capacity() - buf.len() >= additional {
        return;
    }
    let wanted = (buf.len() + additional).max(buf.capacity().saturating_mul(2));
    let mut grown = Vec::with_capacity(wanted);
    grown.extend_from_slice(buf);
    zeroize::Zeroize::zeroize(buf);
    *buf = grown;
}

fn seeded_rng() -> ChaCha20Rng {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).expect("the OS random source works");
    let rng = ChaCha20Rng::from_seed(seed);
    zeroize::Zeroize::zeroize(&mut seed);
    rng
}

/// `len ‖ lz4(value)` into `out`; false when that is not shorter.
fn pack(value: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    reserve_wiping(
        out,
        LEN_BYTES + lz4_flex::block::get_maximum_output_size(value.len()),
    );
    out.resize(
        LEN_BYTES + lz4_flex::block::get_maximum_output_size(value.len()),
        0,
    );
    out[..LEN_BYTES].copy_from_slice(&(value.len() as u32).to_le_bytes());
    match lz4_flex::block::compress_into(value, &mut out[LEN_BYTES..]) {
        Ok(n) if LEN_BYTES + n < value.len() => {
            out.truncate(LEN_BYTES + n);
            true
        }
        _ => false,
    }
}

/// The inverse of [`pack`], refusing a claimed size above `max` before
/// allocating anything.
pub fn unpack(stored: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let header = stored.get(..LEN_BYTES).ok_or(CodecError::Corrupt)?;
    let len = u32::from_le_bytes(header.try_into().expect("4 bytes")) as usize;
    if len > max {
        return Err(CodecError::TooLarge);
    }
    out.clear();
    reserve_wiping(out, len);
    out.resize(len, 0);
    match lz4_flex::block::decompress_into(&stored[LEN_BYTES..], out) {
        Ok(n) if n == len => Ok(()),
        _ => {
            out.clear();
            Err(CodecError::Corrupt)
        }
    }
}

/// Associated data: version, flags, key (on the stack).
fn with_aad<R>(key: &[u8], flags: u32, f: impl FnOnce(&[u8]) -> R) -> R {
    let mut aad = [0u8; 2 + MAX_KEY_BYTES];
    let key = &key[..key.len().min(MAX_KEY_BYTES)];
    aad[0] = FORMAT_VERSION;
    aad[1] = flags as u8;
    aad[2..2 + key.len()].copy_from_slice(key);
    f(&aad[..2 + key.len()])
}

fn seal(
    cipher: &XChaCha20Poly1305,
    rng: &mut ChaCha20Rng,
    key: &[u8],
    flags: u32,
    bytes: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.resize(NONCE_BYTES, 0);
    rng.fill_bytes(&mut out[..NONCE_BYTES]);
    out.extend_from_slice(bytes);
    let (nonce, body) = out.split_at_mut(NONCE_BYTES);
    let nonce = XNonce::from(<[u8; NONCE_BYTES]>::try_from(&*nonce).expect("24 bytes"));
    let tag = with_aad(key, flags, |aad| {
        cipher
            .encrypt_in_place_detached(&nonce, aad, body)
            .expect("values are far below the XChaCha20 length limit")
    });
    out.extend_from_slice(&tag);
}

fn open(
    cipher: &XChaCha20Poly1305,
    key: &[u8],
    flags: u32,
    stored: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    if stored.len() < SEAL_OVERHEAD {
        return Err(CodecError::Corrupt);
    }
    let (nonce, rest) = stored.split_at(NONCE_BYTES);
    let (body, tag) = rest.split_at(rest.len() - TAG_BYTES);
    let nonce = XNonce::from(<[u8; NONCE_BYTES]>::try_from(nonce).expect("24 bytes"));
    let tag = Tag::from(<[u8; TAG_BYTES]>::try_from(tag).expect("16 bytes"));
    out.clear();
    reserve_wiping(out, body.len());
    out.extend_from_slice(body);
    with_aad(key, flags, |aad| {
        cipher.decrypt_in_place_detached(&nonce, aad, out, &tag)
    })
    .map_err(|_| {
        out.clear();
        CodecError::Corrupt
    })
}

#[cfg(test)]
pub(crate) mod tests;

/// Appends `options { compression, encryption, consistency }` (field 5 of
/// a `CacheOperation`) when any is set. Protobuf merges an embedded message
/// that occurs twice, so appending to an encoded operation adds the
/// connection's options without re-encoding it.
pub fn put_write_options(out: &mut Vec<u8>, compression: bool, encryption: bool, consistency: &[u8]) {
    use crate::protocol::wire::put_bytes_field;
    let mut options = [0u8; 4 + 2 + 16];
    let mut n = 0;
    if compression {
        options[n..n + 2].copy_from_slice(&[0x08, 1]);
        n += 2;
    }
    if encryption {
        options[n..n + 2].copy_from_slice(&[0x10, 1]);
        n += 2;
    }
    // "strong" or "eventual" (checked before): one length byte.
    if !consistency.is_empty() && consistency.len() <= 16 {
        options[n] = 0x1a;
        options[n + 1] = consistency.len() as u8;
        options[n + 2..n + 2 + consistency.len()].copy_from_slice(consistency);
        n += 2 + consistency.len();
    }
    if n > 0 {
        put_bytes_field(out, 5, &options[..n]);
    }
}

/// Copies a request frame (length prefix included) to `out` with
/// [`put_write_options`] appended and the length prefix updated.
pub fn append_frame_with_options(
    frame: &[u8],
    compression: bool,
    encryption: bool,
    consistency: &[u8],
    out: &mut Vec<u8>,
) {
    let slot = crate::frame::FrameSlot::open(out);
    out.extend_from_slice(&frame[crate::frame::FRAME_HEADER_BYTES..]);
    put_write_options(out, compression, encryption, consistency);
    slot.close(out);
}
