//! Protobuf wire-format primitives (varints, tags, length-delimited fields),
//! borrowed from the input buffer: decoding never allocates.

use thiserror::Error;

/// Protobuf wire types we meet.
pub const WIRE_VARINT: u8 = 0;
pub const WIRE_I64: u8 = 1;
pub const WIRE_LEN: u8 = 2;
pub const WIRE_I32: u8 = 5;

/// Why a message could not be decoded.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    #[error("truncated message")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    #[error("invalid wire type {0}")]
    InvalidWireType(u8),
    #[error("invalid field number")]
    InvalidField,
    #[error("field {0} has the wrong wire type")]
    WrongWireType(u32),
    #[error("invalid UTF-8 in a string field")]
    InvalidUtf8,
    #[error("value out of range")]
    OutOfRange,
}

/// A cursor over one encoded message.
#[derive(Clone)]
pub struct WireReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> WireReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        WireReader { buf, pos: 0 }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    pub fn read_varint(&mut self) -> Result<u64, WireError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or(WireError::Truncated)?;
            self.pos += 1;
            if i == 9 && byte > 1 {
                return Err(WireError::VarintTooLong);
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError::VarintTooLong)
    }

    /// Reads a field key; returns (field number, wire type).
    #[inline]
    pub fn read_tag(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.read_varint()?;
        let wire_type = (key & 7) as u8;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(WireError::InvalidField);
        }
        Ok((field as u32, wire_type))
    }

    #[inline]
    pub fn read_bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.read_varint()?;
        let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
        let end = self.pos.checked_add(len).ok_or(WireError::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    /// Skips a field of the given wire type (unknown fields are allowed).
    pub fn skip(&mut self, wire_type: u8) -> Result<(), WireError> {
        let n = match wire_type {
            WIRE_VARINT => {
                self.read_varint()?;
                return Ok(());
            }
            WIRE_I64 => 8,
            WIRE_LEN => {
                self.read_bytes()?;
                return Ok(());
            }
            WIRE_I32 => 4,
            other => return Err(WireError::InvalidWireType(other)),
        };
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        if end > self.buf.len() {
            return Err(WireError::Truncated);
        }
        self.pos = end;
        Ok(())
    }
}

/// Number of bytes the varint encoding of `v` takes.
#[inline]
pub const fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 takes one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
pub fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

/// A length-delimited field, skipped when empty (proto3 default).
#[inline]
pub fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_tag(out, field, WIRE_LEN);
        put_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
}

/// One element of a repeated length-delimited field: written even when
/// empty, since every element counts.
#[inline]
pub fn put_repeated_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A varint field, skipped when zero (proto3 default).
#[inline]
pub fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_tag(out, field, WIRE_VARINT);
        put_varint(out, v);
    }
}

/// Encoded size of a length-delimited field (0 when empty).
#[inline]
pub const fn bytes_field_len(field: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        varint_len((field as u64) << 3) + varint_len(len as u64) + len
    }
}

/// Encoded size of a varint field (0 when zero).
#[inline]
pub const fn varint_field_len(field: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        varint_len((field as u64) << 3) + varint_len(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip(v in any::<u64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
            let mut r = WireReader::new(&out);
            prop_assert_eq!(r.read_varint().unwrap(), v);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = WireReader::new(&bytes);
            while !r.is_empty() {
                match r.read_tag() {
                    Ok((_, wt)) => if r.skip(wt).is_err() { break },
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn overlong_varint_is_refused() {
        let bytes = [0xffu8; 11];
        assert_eq!(
            WireReader::new(&bytes).read_varint(),
            Err(WireError::VarintTooLong)
        );
        let ten = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(WireReader::new(&ten).read_varint(), Err(WireError::VarintTooLong));
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(WireReader::new(&max).read_varint(), Ok(u64::MAX));
    }
}
