//! The transforms this worker executes, and how a chunk of input flows through them.
//!
//! The key/value echo is the identity on elements, so a stage of echoes between a
//! runner source and sink reduces to: find the element boundaries (to count and
//! to cut on whole elements) and, only when the two ends use different wire
//! coders, decode and re-encode each element.

use bytes::{Bytes, BytesMut};

use crate::coders::{CoderError, WireCoder};

pub use crate::ops::echo::KV_ECHO_URN;

/// A malformed element, located within its bundle's input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("element #{index} of the chunk is malformed: {source}")]
pub struct ElementError {
    /// 0-based index of the element within the chunk.
    pub index: u64,
    #[source]
    pub source: CoderError,
}

/// Output of one chunk: whole-element pieces and how many elements they hold.
#[derive(Debug, Default)]
pub struct Pieces {
    pub pieces: Vec<Bytes>,
    pub elements: u64,
}

/// Cuts `chunk` into zero-copy slices of whole elements, each at most about
/// `max_piece` bytes (a single larger element stays whole).
pub fn split_whole_elements(
    wire: &WireCoder,
    chunk: &Bytes,
    max_piece: usize,
) -> Result<Pieces, ElementError> {
    let mut out = Pieces::default();
    let mut piece_start = 0;
    let mut pos = 0;
    while pos < chunk.len() {
        let len = wire
            .element_len(&chunk[pos..])
            .map_err(|source| locate(source, out.elements, pos))?;
        if pos + len - piece_start > max_piece && pos > piece_start {
            out.pieces.push(chunk.slice(piece_start..pos));
            piece_start = pos;
        }
        pos += len;
        out.elements += 1;
    }
    if pos > piece_start {
        out.pieces.push(chunk.slice(piece_start..pos));
    }
    Ok(out)
}

/// Decodes every element of `chunk` with `from` and re-encodes it with `to`,
/// cutting the output into pieces of about `max_piece` bytes.
pub fn recode(
    from: &WireCoder,
    to: &WireCoder,
    chunk: &[u8],
    max_piece: usize,
) -> Result<Pieces, ElementError> {
    let mut out = Pieces::default();
    let mut buf = BytesMut::with_capacity(chunk.len().min(max_piece) + 64);
    let mut pos = 0;
    while pos < chunk.len() {
        let (parts, len) = from
            .decode(&chunk[pos..])
            .map_err(|source| locate(source, out.elements, pos))?;
        to.encode(&parts, &mut buf).map_err(|source| ElementError {
            index: out.elements,
            source,
        })?;
        pos += len;
        out.elements += 1;
        if buf.len() >= max_piece {
            out.pieces.push(buf.split().freeze());
        }
    }
    if !buf.is_empty() {
        out.pieces.push(buf.freeze());
    }
    Ok(out)
}

/// Coder offsets are relative to the element; report them relative to the chunk.
fn locate(source: CoderError, index: u64, element_start: usize) -> ElementError {
    let shift = |at: usize| at + element_start;
    let source = match source {
        CoderError::Truncated { at, needed } => CoderError::Truncated {
            at: shift(at),
            needed,
        },
        CoderError::VarintOverflow { at } => CoderError::VarintOverflow { at: shift(at) },
        CoderError::LengthOverflow { at, len } => CoderError::LengthOverflow { at: shift(at), len },
        CoderError::BadPane { at, byte } => CoderError::BadPane {
            at: shift(at),
            byte,
        },
        CoderError::BadNullMarker { at, byte } => CoderError::BadNullMarker {
            at: shift(at),
            byte,
        },
        other => other,
    };
    ElementError { index, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coders::{ComponentCoder, ElementCoder, Framing, WindowCoder};

    fn wire(key: ComponentCoder) -> WireCoder {
        WireCoder {
            framing: Framing::Windowed,
            window: WindowCoder::Global,
            element: ElementCoder::Kv {
                key,
                value: ComponentCoder::Bytes,
            },
        }
    }

    fn element(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut e = vec![
            0x7f, 0xdf, 0x3b, 0x64, 0x5a, 0x1c, 0xac, 0x09, 0, 0, 0, 1, 0x0f,
        ];
        e.push(key.len() as u8);
        e.extend_from_slice(key);
        e.push(value.len() as u8);
        e.extend_from_slice(value);
        e
    }

    fn chunk(n: usize) -> Bytes {
        (0..n)
            .flat_map(|i| element(format!("k{i:03}").as_bytes(), &[i as u8; 20]))
            .collect::<Vec<u8>>()
            .into()
    }

    #[test]
    fn pieces_hold_whole_elements_and_cover_the_chunk() {
        let c = chunk(100);
        let elem_len = c.len() / 100;
        for max in [1, elem_len, elem_len + 1, 3 * elem_len, 10_000] {
            let p = split_whole_elements(&wire(ComponentCoder::Bytes), &c, max).unwrap();
            assert_eq!(p.elements, 100);
            assert_eq!(p.pieces.concat(), c.to_vec(), "max {max}");
            for piece in &p.pieces {
                assert_eq!(piece.len() % elem_len, 0, "max {max}");
                assert!(piece.len() <= max.max(elem_len), "max {max}");
            }
        }
    }

    #[test]
    fn pieces_are_slices_of_the_input_not_copies() {
        let c = chunk(10);
        let p = split_whole_elements(&wire(ComponentCoder::Bytes), &c, 1 << 20).unwrap();
        assert_eq!(p.pieces.len(), 1);
        assert_eq!(p.pieces[0].as_ptr(), c.as_ptr());
    }

    #[test]
    fn empty_chunk_gives_nothing() {
        let p = split_whole_elements(&wire(ComponentCoder::Bytes), &Bytes::new(), 10).unwrap();
        assert_eq!((p.pieces.len(), p.elements), (0, 0));
    }

    #[test]
    fn malformed_element_is_located() {
        let mut c = chunk(3).to_vec();
        c.truncate(c.len() - 1);
        let err = split_whole_elements(&wire(ComponentCoder::Bytes), &Bytes::from(c.clone()), 64)
            .unwrap_err();
        assert_eq!(err.index, 2);
        // The 20-byte value starts 19 bytes before the cut end and lacks one byte.
        assert!(
            matches!(err.source, CoderError::Truncated { at, needed: 1 } if at == c.len() - 19)
        );
    }

    #[test]
    fn recode_between_nullable_and_plain_keys() {
        let plain = chunk(50);
        let to_nullable = recode(
            &wire(ComponentCoder::Bytes),
            &wire(ComponentCoder::NullableBytes),
            &plain,
            100,
        )
        .unwrap();
        assert_eq!(to_nullable.elements, 50);
        let nullable: Vec<u8> = to_nullable.pieces.concat();
        assert_eq!(nullable.len(), plain.len() + 50);
        let back = recode(
            &wire(ComponentCoder::NullableBytes),
            &wire(ComponentCoder::Bytes),
            &nullable,
            1 << 20,
        )
        .unwrap();
        assert_eq!(back.pieces.concat(), plain.to_vec());
    }
}
