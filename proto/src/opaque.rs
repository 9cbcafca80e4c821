//! A message kept as its encoded fields.
//!
//! Used for model parts this worker passes along without reading, such as a
//! windowing strategy's trigger tree: the expansion service must hand the
//! input's windowing strategy back to the SDK exactly, and a generated type
//! would drop every field our minimal protos leave out.

use bytes::{Buf, BufMut};
use prost::DecodeError;
use prost::encoding::{
    DecodeContext, WireType, decode_key, decode_varint, encode_key, encode_varint,
};

#[derive(Clone, PartialEq, Eq, Hash, Default, Debug)]
pub struct OpaqueMessage {
    /// The message's fields exactly as they were received.
    pub encoded: Vec<u8>,
}

impl prost::Message for OpaqueMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.encoded);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        _ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        copy_field(tag, wire_type, buf, &mut self.encoded)
    }

    fn encoded_len(&self) -> usize {
        self.encoded.len()
    }

    fn clear(&mut self) {
        self.encoded.clear();
    }
}

fn copy_field(
    tag: u32,
    wire_type: WireType,
    buf: &mut impl Buf,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    encode_key(tag, wire_type, out);
    match wire_type {
        WireType::Varint => encode_varint(decode_varint(buf)?, out),
        WireType::ThirtyTwoBit => copy_exact(buf, out, 4)?,
        WireType::SixtyFourBit => copy_exact(buf, out, 8)?,
        WireType::LengthDelimited => {
            let len = decode_varint(buf)?;
            encode_varint(len, out);
            let len = usize::try_from(len).map_err(|_| underflow())?;
            copy_exact(buf, out, len)?;
        }
        WireType::StartGroup => loop {
            let (inner_tag, inner_type) = decode_key(buf)?;
            if inner_type == WireType::EndGroup {
                encode_key(inner_tag, inner_type, out);
                break;
            }
            copy_field(inner_tag, inner_type, buf, out)?;
        },
        WireType::EndGroup => return Err(underflow()),
    }
    Ok(())
}

fn copy_exact(buf: &mut impl Buf, out: &mut Vec<u8>, len: usize) -> Result<(), DecodeError> {
    if buf.remaining() < len {
        return Err(underflow());
    }
    let start = out.len();
    out.resize(start + len, 0);
    buf.copy_to_slice(&mut out[start..]);
    Ok(())
}

#[allow(deprecated)] // prost offers no other public constructor for a custom decode error.
fn underflow() -> DecodeError {
    DecodeError::new("opaque message field is truncated or malformed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn every_wire_type_round_trips_byte_for_byte() {
        // field 1 varint 300, field 2 fixed32, field 3 fixed64, field 4 bytes "abc",
        // field 5 a nested message {1: 7}, field 6 a group holding {1: 1}.
        let encoded: Vec<u8> = vec![
            0x08, 0xac, 0x02, 0x15, 1, 2, 3, 4, 0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x22, 3, b'a', b'b',
            b'c', 0x2a, 2, 0x08, 7, 0x33, 0x08, 1, 0x34,
        ];
        let m = OpaqueMessage::decode(&encoded[..]).unwrap();
        assert_eq!(m.encoded, encoded);
        assert_eq!(m.encode_to_vec(), encoded);
    }

    #[test]
    fn truncated_input_is_an_error() {
        assert!(OpaqueMessage::decode(&[0x22, 5, b'a'][..]).is_err());
        assert!(OpaqueMessage::decode(&[0x15, 1][..]).is_err());
    }
}
