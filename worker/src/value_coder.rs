//! A general (slow-path) model of Beam's standard coders: any tree of bytes,
//! string, varint, double, bool, KV, nullable and length-prefix coders inside a
//! windowed value, decoded into a [`Value`] and encoded back.
//!
//! The hot path (`WireCoder`) handles only what the echo and the Kafka
//! transforms carry in bulk. The splittable-DoFn steps move a few elements per
//! partition per second whose types nest (`KV<KV<element, KV<restriction,
//! watermark state>>, size>`), so they use this model instead.

use std::collections::HashMap;

use beam_proto::pipeline::Coder;
use bytes::{BufMut, Bytes};

use crate::coders::{
    self, CoderError, CoderResolveError, Framing, Reader, WindowCoder, lookup, put_varint,
    skip_metadata, unsupported, windowed_parts,
};

pub const STRING_UTF8_URN: &str = "beam:coder:string_utf8:v1";
pub const VARINT_URN: &str = "beam:coder:varint:v1";
pub const DOUBLE_URN: &str = "beam:coder:double:v1";
pub const BOOL_URN: &str = "beam:coder:bool:v1";

/// Nesting deeper than this is refused (a hostile coder map must not recurse forever).
const MAX_DEPTH: usize = 16;

/// An element coder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueCoder {
    /// `bytes` and `string_utf8`: `varint(len) bytes` when nested.
    Bytes,
    VarInt,
    Double,
    Bool,
    Kv(Box<ValueCoder>, Box<ValueCoder>),
    Nullable(Box<ValueCoder>),
    /// `varint(len)` then the inner value in the outer context.
    LengthPrefix(Box<ValueCoder>),
}

/// A decoded element.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bytes(Bytes),
    Int(i64),
    Double(f64),
    Bool(bool),
    Kv(Box<Value>, Box<Value>),
    Null,
}

impl Value {
    pub fn kv(k: Value, v: Value) -> Value {
        Value::Kv(Box::new(k), Box::new(v))
    }

    /// The two halves of a KV, or `None`.
    pub fn as_kv(&self) -> Option<(&Value, &Value)> {
        match self {
            Value::Kv(k, v) => Some((k, v)),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

/// A windowed-value coder over any [`ValueCoder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowedCoder {
    pub framing: Framing,
    pub window: WindowCoder,
    pub value: ValueCoder,
}

/// One decoded windowed value: its raw `timestamp | windows | pane` bytes and value.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowedValue {
    pub metadata: Bytes,
    pub value: Value,
}

impl WindowedCoder {
    /// Resolves a data port's windowed-value coder.
    pub fn resolve(
        id: &str,
        coders: &HashMap<String, Coder>,
    ) -> Result<WindowedCoder, CoderResolveError> {
        let (elem_id, window, framing) = windowed_parts(id, coders)?;
        Ok(WindowedCoder {
            framing,
            window,
            value: ValueCoder::resolve(elem_id, coders)?,
        })
    }

    /// The coder of an in-worker edge: `value` in a windowed value with `window`.
    pub fn element(
        coder_id: &str,
        window: WindowCoder,
        coders: &HashMap<String, Coder>,
    ) -> Result<WindowedCoder, CoderResolveError> {
        Ok(WindowedCoder {
            framing: Framing::Windowed,
            window,
            value: ValueCoder::resolve(coder_id, coders)?,
        })
    }

    /// Decodes the first windowed value of `buf`; returns it and its length.
    pub fn decode(&self, buf: &Bytes) -> Result<(WindowedValue, usize), CoderError> {
        let mut r = Reader::new(buf);
        let metadata = match &self.framing {
            Framing::Windowed => {
                skip_metadata(&mut r, self.window)?;
                buf.slice(..r.pos)
            }
            Framing::Param(constant) => constant.clone(),
        };
        let value = self.value.read(&mut r, buf, true)?;
        Ok((WindowedValue { metadata, value }, r.pos))
    }

    /// Decodes every windowed value of a chunk.
    pub fn decode_all(&self, chunk: &Bytes) -> Result<Vec<WindowedValue>, CoderError> {
        let mut out = Vec::new();
        let mut rest = chunk.clone();
        while !rest.is_empty() {
            let (value, len) = self.decode(&rest)?;
            out.push(value);
            rest = rest.slice(len..);
        }
        Ok(out)
    }

    /// Appends `value` with `metadata` (raw `timestamp | windows | pane`).
    pub fn encode(
        &self,
        metadata: &[u8],
        value: &Value,
        out: &mut impl BufMut,
    ) -> Result<(), CoderError> {
        match &self.framing {
            Framing::Windowed => out.put_slice(metadata),
            Framing::Param(constant) if constant.as_ref() == metadata => {}
            Framing::Param(_) => return Err(CoderError::ParamMismatch),
        }
        self.value.write(value, out, true)
    }
}

impl ValueCoder {
    pub fn resolve(
        id: &str,
        coders: &HashMap<String, Coder>,
    ) -> Result<ValueCoder, CoderResolveError> {
        Self::resolve_at(id, coders, 0)
    }

    fn resolve_at(
        id: &str,
        coders: &HashMap<String, Coder>,
        depth: usize,
    ) -> Result<ValueCoder, CoderResolveError> {
        let (urn, coder) = lookup(id, coders)?;
        if depth > MAX_DEPTH {
            return Err(unsupported(id, urn, "coders nest too deeply"));
        }
        let component = |i: usize| -> Result<Box<ValueCoder>, CoderResolveError> {
            let inner = coder
                .component_coder_ids
                .get(i)
                .ok_or_else(|| unsupported(id, urn, "a component coder is missing"))?;
            Self::resolve_at(inner, coders, depth + 1).map(Box::new)
        };
        Ok(match urn {
            coders::BYTES_URN | STRING_UTF8_URN => ValueCoder::Bytes,
            VARINT_URN => ValueCoder::VarInt,
            DOUBLE_URN => ValueCoder::Double,
            BOOL_URN => ValueCoder::Bool,
            coders::KV_URN => ValueCoder::Kv(component(0)?, component(1)?),
            coders::NULLABLE_URN => ValueCoder::Nullable(component(0)?),
            coders::LENGTH_PREFIX_URN => ValueCoder::LengthPrefix(component(0)?),
            _ => {
                return Err(unsupported(
                    id,
                    urn,
                    "not a standard coder this worker decodes",
                ));
            }
        })
    }

    /// Reads one value; `nested` is false only for the last value of a length prefix.
    fn read(&self, r: &mut Reader<'_>, buf: &Bytes, nested: bool) -> Result<Value, CoderError> {
        Ok(match self {
            ValueCoder::Bytes => {
                let len = if nested {
                    length(r)?
                } else {
                    buf.len() - r.pos
                };
                let start = r.pos;
                r.take(len)?;
                Value::Bytes(buf.slice(start..start + len))
            }
            ValueCoder::VarInt => Value::Int(r.varint()? as i64),
            ValueCoder::Double => Value::Double(f64::from_be_bytes(r.array::<8>()?)),
            ValueCoder::Bool => Value::Bool(r.array::<1>()?[0] != 0),
            ValueCoder::Kv(k, v) => {
                let key = k.read(r, buf, true)?;
                Value::kv(key, v.read(r, buf, nested)?)
            }
            ValueCoder::Nullable(inner) => {
                let at = r.pos;
                match r.array::<1>()?[0] {
                    0 => Value::Null,
                    1 => inner.read(r, buf, nested)?,
                    byte => return Err(CoderError::BadNullMarker { at, byte }),
                }
            }
            ValueCoder::LengthPrefix(inner) => {
                let len = length(r)?;
                let start = r.pos;
                r.take(len)?;
                let part = buf.slice(start..start + len);
                let mut inner_reader = Reader::new(&part);
                inner.read(&mut inner_reader, &part, false)?
            }
        })
    }

    fn write(&self, value: &Value, out: &mut impl BufMut, nested: bool) -> Result<(), CoderError> {
        match (self, value) {
            (ValueCoder::Bytes, Value::Bytes(b)) => {
                if nested {
                    put_varint(out, b.len() as u64);
                }
                out.put_slice(b);
            }
            (ValueCoder::VarInt, Value::Int(i)) => put_varint(out, *i as u64),
            (ValueCoder::Double, Value::Double(d)) => out.put_slice(&d.to_be_bytes()),
            (ValueCoder::Bool, Value::Bool(b)) => out.put_u8(u8::from(*b)),
            (ValueCoder::Kv(kc, vc), Value::Kv(k, v)) => {
                kc.write(k, out, true)?;
                vc.write(v, out, nested)?;
            }
            (ValueCoder::Nullable(_), Value::Null) => out.put_u8(0),
            (ValueCoder::Nullable(inner), v) => {
                out.put_u8(1);
                inner.write(v, out, nested)?;
            }
            (ValueCoder::LengthPrefix(inner), v) => {
                let mut part = Vec::new();
                inner.write(v, &mut part, false)?;
                put_varint(out, part.len() as u64);
                out.put_slice(&part);
            }
            _ => {
                return Err(CoderError::Mismatch {
                    coder: format!("{self:?}"),
                    value: format!("{value:?}"),
                });
            }
        }
        Ok(())
    }
}

fn length(r: &mut Reader<'_>) -> Result<usize, CoderError> {
    let at = r.pos;
    let len = r.varint()?;
    usize::try_from(len).map_err(|_| CoderError::LengthOverflow { at, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use beam_proto::pipeline::FunctionSpec;

    fn coder(urn: &str, components: &[&str]) -> Coder {
        Coder {
            spec: Some(FunctionSpec {
                urn: urn.into(),
                payload: Bytes::new(),
            }),
            component_coder_ids: components.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The Process input of a splittable DoFn as runners send it:
    /// `KV<KV<bytes, KV<KV<varint, varint>, varint>>, double>`, with the
    /// element length-prefixed as Java runners do.
    fn sized_coders() -> HashMap<String, Coder> {
        HashMap::from([
            ("b".into(), coder(coders::BYTES_URN, &[])),
            ("lp".into(), coder(coders::LENGTH_PREFIX_URN, &["b"])),
            ("v".into(), coder(VARINT_URN, &[])),
            ("d".into(), coder(DOUBLE_URN, &[])),
            ("range".into(), coder(coders::KV_URN, &["v", "v"])),
            ("restr".into(), coder(coders::KV_URN, &["range", "v"])),
            ("paired".into(), coder(coders::KV_URN, &["lp", "restr"])),
            ("sized".into(), coder(coders::KV_URN, &["paired", "d"])),
            ("gw".into(), coder(coders::GLOBAL_WINDOW_URN, &[])),
            (
                "wv".into(),
                coder(coders::WINDOWED_VALUE_URN, &["sized", "gw"]),
            ),
        ])
    }

    fn sized_value() -> Value {
        let restriction = Value::kv(
            Value::kv(Value::Int(42), Value::Int(i64::MAX)),
            Value::Int(-1),
        );
        Value::kv(
            Value::kv(Value::Bytes(Bytes::from_static(b"topic/3")), restriction),
            Value::Double(12.5),
        )
    }

    #[test]
    fn nested_sdf_element_round_trips() {
        let c = WindowedCoder::resolve("wv", &sized_coders()).unwrap();
        let metadata = [
            0x7f, 0xdf, 0x3b, 0x64, 0x5a, 0x1c, 0xac, 0x08, 0, 0, 0, 1, 0x0f,
        ];
        let mut buf = Vec::new();
        c.encode(&metadata, &sized_value(), &mut buf).unwrap();
        // Two elements back to back decode as two.
        let mut two = buf.clone();
        two.extend_from_slice(&buf);
        let decoded = c.decode_all(&Bytes::from(two)).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[1].value, sized_value());
        assert_eq!(decoded[0].metadata.as_ref(), &metadata);
    }

    #[test]
    fn negative_varint_takes_ten_bytes_and_the_double_is_big_endian() {
        let c = ValueCoder::resolve("sized", &sized_coders()).unwrap();
        let mut buf = Vec::new();
        c.write(&sized_value(), &mut buf, true).unwrap();
        assert_eq!(&buf[buf.len() - 8..], &12.5f64.to_be_bytes());
        // lp element: varint 7 + "topic/3"
        assert_eq!(&buf[..8], b"\x07topic/3");
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let c = WindowedCoder::resolve("wv", &sized_coders()).unwrap();
        let mut buf = Vec::new();
        c.encode(
            &[0; 8]
                .iter()
                .chain(&[0, 0, 0, 1, 0x0f])
                .copied()
                .collect::<Vec<_>>(),
            &sized_value(),
            &mut buf,
        )
        .unwrap();
        for cut in 0..buf.len() {
            assert!(
                c.decode(&Bytes::copy_from_slice(&buf[..cut])).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn unknown_coders_are_refused_by_name() {
        let mut coders = sized_coders();
        coders.insert("x".into(), coder("beam:coder:row:v1", &[]));
        let err = ValueCoder::resolve("x", &coders).unwrap_err();
        assert!(err.to_string().contains("beam:coder:row:v1"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_shape_is_refused() {
        let c = ValueCoder::resolve("range", &sized_coders()).unwrap();
        let err = c
            .write(&Value::Bytes(Bytes::new()), &mut Vec::new(), true)
            .unwrap_err();
        assert!(matches!(err, CoderError::Mismatch { .. }));
    }
}
