use proptest::prelude::*;

use super::*;

pub(crate) const MAX_ITEM: usize = 1 << 20;

pub(crate) fn settings(compression: CompressionMode) -> CodecSettings {
    CodecSettings {
        key: Some(Arc::new(EncryptionKey::from_bytes([9u8; 32]))),
        encrypt_prefixes: vec![b"secret:".to_vec()],
        compression,
        compression_threshold: DEFAULT_COMPRESSION_THRESHOLD,
    }
}

fn codec() -> ValueCodec {
    ValueCodec::new(&settings(CompressionMode::Requested), MAX_ITEM)
}

pub(crate) fn compressible() -> Vec<u8> {
    br#"{"character":"Elara","class":"wizard","level":7,"spells":["fireball","shield"]}"#
        .iter()
        .cycle()
        .take(4096)
        .copied()
        .collect()
}

#[test]
fn plain_values_pass_through_untouched() {
    let mut c = ValueCodec::off(MAX_ITEM);
    assert!(!c.eager());
    let v = compressible();
    let (stored, flags) = c.encode(b"k", &v, false, false).unwrap();
    assert_eq!((stored.as_ptr(), flags), (v.as_ptr(), 0));
}

#[test]
fn encryption_round_trips_and_hides_the_value() {
    let mut c = codec();
    let value = b"the dragon sleeps under the northern mountain".to_vec();
    let (stored, flags) = c.encode(b"campaign:1", &value, false, true).unwrap();
    assert_eq!(flags, ENCRYPTED);
    assert_eq!(stored.len(), value.len() + SEAL_OVERHEAD);
    assert!(!stored.windows(6).any(|w| w == b"dragon"));
    let stored = stored.to_vec();
    assert_eq!(c.decode(b"campaign:1", flags, &stored).unwrap(), &value[..]);
    // A fresh nonce per write: the same value never seals the same way.
    let again = c.encode(b"campaign:1", &value, false, true).unwrap().0.to_vec();
    assert_ne!(again, stored);
}

#[test]
fn ciphertext_fails_closed_when_moved_or_altered() {
    let mut c = codec();
    let stored = c
        .encode(b"campaign:1", b"hit points 42", false, true)
        .unwrap()
        .0
        .to_vec();
    assert_eq!(
        c.decode(b"campaign:2", ENCRYPTED, &stored),
        Err(CodecError::Corrupt)
    );
    assert_eq!(
        c.decode(b"campaign:1", ENCRYPTED | COMPRESSED, &stored),
        Err(CodecError::Corrupt),
        "flags are bound too"
    );
    let mut flipped = stored.clone();
    flipped[30] ^= 1;
    assert_eq!(
        c.decode(b"campaign:1", ENCRYPTED, &flipped),
        Err(CodecError::Corrupt)
    );
    assert_eq!(
        c.decode(b"campaign:1", ENCRYPTED, &stored[..10]),
        Err(CodecError::Corrupt)
    );
    let mut other = ValueCodec::new(
        &CodecSettings {
            key: Some(Arc::new(EncryptionKey::from_bytes([8u8; 32]))),
            ..settings(CompressionMode::Off)
        },
        MAX_ITEM,
    );
    assert_eq!(
        other.decode(b"campaign:1", ENCRYPTED, &stored),
        Err(CodecError::Corrupt)
    );
    assert_eq!(
        ValueCodec::off(MAX_ITEM).decode(b"campaign:1", ENCRYPTED, &stored),
        Err(CodecError::Corrupt)
    );
}

#[test]
fn compression_saves_space_and_round_trips() {
    let mut c = codec();
    let value = compressible();
    let (stored, flags) = c.encode(b"k", &value, true, false).unwrap();
    assert_eq!(flags, COMPRESSED);
    assert!(stored.len() * 4 < value.len(), "{} bytes", stored.len());
    let stored = stored.to_vec();
    assert_eq!(c.decode(b"k", flags, &stored).unwrap(), &value[..]);
    // Compressed then encrypted.
    let (stored, flags) = c.encode(b"k", &value, true, true).unwrap();
    assert_eq!(flags, COMPRESSED | ENCRYPTED);
    assert!(stored.len() * 4 < value.len());
    let stored = stored.to_vec();
    assert_eq!(c.decode(b"k", flags, &stored).unwrap(), &value[..]);
}

#[test]
fn compression_is_kept_only_when_it_helps() {
    let mut c = codec();
    let small = vec![b'a'; DEFAULT_COMPRESSION_THRESHOLD];
    assert_eq!(
        c.encode(b"k", &small, true, false).unwrap().1,
        0,
        "at the threshold"
    );
    let mut random = vec![0u8; 4096];
    rand_chacha::rand_core::RngCore::fill_bytes(&mut seeded_rng(), &mut random);
    assert_eq!(
        c.encode(b"k", &random, true, false).unwrap().1,
        0,
        "incompressible"
    );
    let mut always = ValueCodec::new(&settings(CompressionMode::Always), MAX_ITEM);
    assert!(always.eager());
    assert_eq!(
        always.encode(b"k", &compressible(), false, false).unwrap().1,
        COMPRESSED
    );
    let mut off = ValueCodec::new(&settings(CompressionMode::Off), MAX_ITEM);
    assert_eq!(off.encode(b"k", &compressible(), true, false).unwrap().1, 0);
}

#[test]
fn a_forged_size_allocates_nothing() {
    let mut c = codec();
    let mut forged = u32::MAX.to_le_bytes().to_vec();
    forged.extend_from_slice(&[0x1f, 0, 0, 0]);
    assert_eq!(c.decode(b"k", COMPRESSED, &forged), Err(CodecError::TooLarge));
    assert_eq!(c.scratch_capacity(), 0);
    // Within the limit but not matching the data: refused, bounded.
    let mut lying = (MAX_ITEM as u32).to_le_bytes().to_vec();
    lying.extend_from_slice(&[0x10, b'x']);
    assert_eq!(c.decode(b"k", COMPRESSED, &lying), Err(CodecError::Corrupt));
    assert!(c.scratch_capacity() <= MAX_ITEM);
    assert_eq!(c.decode(b"k", COMPRESSED, b"ab"), Err(CodecError::Corrupt));
}

#[test]
fn prefixes_force_encryption_and_need_a_key() {
    let mut c = codec();
    assert!(c.must_encrypt(b"secret:a", false));
    assert!(!c.must_encrypt(b"public:a", false));
    assert_eq!(c.encode(b"secret:a", b"v", false, false).unwrap().1, ENCRYPTED);
    let mut keyless = ValueCodec::off(MAX_ITEM);
    assert_eq!(keyless.encode(b"k", b"v", false, true), Err(CodecError::NoKey));
    assert_eq!(CodecError::NoKey.status(), Status::Malformed);
}

#[test]
fn write_options_merge_into_an_encoded_operation() {
    use prost::Message;
    let op = crate::proto::CacheOperation {
        operation: "set".into(),
        key: b"k".to_vec().into(),
        value: b"v".to_vec().into(),
        options: Some(crate::proto::Options {
            consistency: "strong".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut frame = Vec::new();
    crate::frame::encode_frame(&op, &mut frame);
    let mut merged = Vec::new();
    append_frame_with_options(&frame, false, true, b"", &mut merged);
    let len = crate::frame::declared_len(&merged).unwrap();
    assert_eq!(len, merged.len() - 4);
    let view = crate::protocol::binary::decode_operation(&merged[4..]).unwrap();
    assert!(view.options.encryption && !view.options.compression);
    assert_eq!(view.options.consistency, b"strong");
    let decoded = crate::proto::CacheOperation::decode(&merged[4..]).unwrap();
    assert!(decoded.options.unwrap().encryption);
    // A connection's consistency reaches the owner shard the same way.
    let mut eventual = Vec::new();
    append_frame_with_options(&frame, false, false, b"eventual", &mut eventual);
    let view = crate::protocol::binary::decode_operation(&eventual[4..]).unwrap();
    assert_eq!(view.options.consistency, b"eventual");
    let decoded = crate::proto::CacheOperation::decode(&eventual[4..]).unwrap();
    assert_eq!(decoded.options.unwrap().consistency, "eventual");
}

proptest! {
    /// The body of the `value_codec` fuzz target: any stored bytes, any
    /// flags, never a panic, never more than max_item_bytes buffered.
    #[test]
    fn decode_survives_any_input(stored in proptest::collection::vec(any::<u8>(), 0..2048),
                                 flags in 0u32..4, key in proptest::collection::vec(any::<u8>(), 1..64)) {
        let mut c = ValueCodec::new(&settings(CompressionMode::Requested), 4096);
        let _ = c.decode(&key, flags, &stored);
        prop_assert!(c.scratch_capacity() <= 2 * 4096 + 2048);
    }

    #[test]
    fn encode_decode_round_trips(value in proptest::collection::vec(0u8..4, 0..3000),
                                 compress: bool, encrypt: bool) {
        let mut c = codec();
        let (stored, flags) = c.encode(b"key", &value, compress, encrypt).unwrap();
        let stored = stored.to_vec();
        prop_assert_eq!(c.decode(b"key", flags, &stored).unwrap(), &value[..]);
    }
}
