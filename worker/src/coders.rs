//! Beam coders this worker understands, resolved from a descriptor's coder map
//! into a compact [`WireCoder`] that can find element boundaries, split an
//! element into its parts, and re-encode it.
//!
//! Everything on the data channel is in the *nested* context; formats follow
//! Beam's standard coders (see `shared/docs/fnapi-notes.md` §3).

use std::collections::HashMap;
use std::fmt;

use beam_proto::pipeline::Coder;
use bytes::{BufMut, Bytes};

pub const BYTES_URN: &str = "beam:coder:bytes:v1";
pub const NULLABLE_URN: &str = "beam:coder:nullable:v1";
pub const LENGTH_PREFIX_URN: &str = "beam:coder:length_prefix:v1";
pub const KV_URN: &str = "beam:coder:kv:v1";
pub const GLOBAL_WINDOW_URN: &str = "beam:coder:global_window:v1";
pub const INTERVAL_WINDOW_URN: &str = "beam:coder:interval_window:v1";
pub const WINDOWED_VALUE_URN: &str = "beam:coder:windowed_value:v1";
pub const PARAM_WINDOWED_VALUE_URN: &str = "beam:coder:param_windowed_value:v1";

/// What a user can be told this worker accepts, for error messages.
pub const SUPPORTED_CODERS: &str = "wire coders beam:coder:windowed_value:v1 and \
beam:coder:param_windowed_value:v1 over beam:coder:global_window:v1 or \
beam:coder:interval_window:v1, with element coder beam:coder:kv:v1 whose key and value are \
beam:coder:bytes:v1, beam:coder:nullable:v1[bytes] or beam:coder:length_prefix:v1[bytes]";

/// A descriptor's coder that this worker cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoderResolveError {
    #[error("coder id '{0}' is referenced but not defined in the descriptor")]
    Missing(String),
    #[error("coder '{id}' ({urn}) is not supported here: {why}; supported are {SUPPORTED_CODERS}")]
    Unsupported {
        id: String,
        urn: String,
        why: String,
    },
}

/// Malformed element bytes. Offsets are relative to the start of the chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoderError {
    #[error("element truncated: needed {needed} more byte(s) at offset {at}")]
    Truncated { at: usize, needed: usize },
    #[error("varint at offset {at} is longer than 10 bytes")]
    VarintOverflow { at: usize },
    #[error("length {len} at offset {at} does not fit in memory")]
    LengthOverflow { at: usize, len: u64 },
    #[error("pane byte {byte:#04x} at offset {at} has unknown encoding {}", byte >> 4)]
    BadPane { at: usize, byte: u8 },
    #[error("nullable marker {byte:#04x} at offset {at} is neither 0x00 nor 0x01")]
    BadNullMarker { at: usize, byte: u8 },
    #[error(
        "a null {part} cannot be written with beam:coder:bytes:v1 (the output coder is not nullable)"
    )]
    NullNotAllowed { part: &'static str },
    #[error(
        "element's timestamp/windows/pane differ from the constants of the output's \
         beam:coder:param_windowed_value:v1"
    )]
    ParamMismatch,
    #[error("a value of shape {value} cannot be written with coder {coder}")]
    Mismatch { coder: String, value: String },
}

/// How one side (key or value) of a KV is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentCoder {
    /// `varint(len) bytes`. Also how `length_prefix(bytes)` looks on the wire.
    Bytes,
    /// `00` for null, or `01` followed by nested bytes.
    NullableBytes,
}

/// Which window coder the windowed value uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowCoder {
    /// Zero bytes per window.
    Global,
    /// 8-byte end timestamp then `varint(end - start)`.
    Interval,
}

/// How the element's metadata (timestamp, windows, pane) travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// `windowed_value`: metadata is written before every element.
    Windowed,
    /// `param_windowed_value`: only the element travels; the metadata is this
    /// constant (`timestamp | windows | pane` bytes) taken from the coder payload.
    Param(Bytes),
}

/// The element inside the windowed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementCoder {
    /// `KV<K, V>`: what the echo and the Kafka transforms carry.
    Kv {
        key: ComponentCoder,
        value: ComponentCoder,
    },
    /// Plain bytes: the impulse element that starts a Kafka read.
    Bytes,
}

/// A resolved data-channel coder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireCoder {
    pub framing: Framing,
    pub window: WindowCoder,
    pub element: ElementCoder,
}

/// Borrowed view of one decoded element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementParts<'a> {
    /// Raw `timestamp | windows | pane` bytes, in windowed-value layout.
    pub metadata: &'a [u8],
    /// `None` for a null key, and for a plain-bytes element (which has no key).
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

impl WireCoder {
    /// Resolves the wire coder `id` (a `windowed_value` or `param_windowed_value`).
    pub fn resolve(
        id: &str,
        coders: &HashMap<String, Coder>,
    ) -> Result<WireCoder, CoderResolveError> {
        let (elem_id, window, framing) = windowed_parts(id, coders)?;
        Ok(WireCoder {
            framing,
            window,
            element: resolve_element(elem_id, coders)?,
        })
    }

    /// True when both coders produce the same bytes for every element, so a
    /// chunk can be forwarded untouched.
    pub fn same_encoding(&self, other: &WireCoder) -> bool {
        self == other
    }

    /// Length of the first element in `buf`.
    #[inline]
    pub fn element_len(&self, buf: &[u8]) -> Result<usize, CoderError> {
        self.decode(buf).map(|(_, len)| len)
    }

    /// Splits the first element of `buf` into its parts; returns them and its length.
    #[inline]
    pub fn decode<'a>(&'a self, buf: &'a [u8]) -> Result<(ElementParts<'a>, usize), CoderError> {
        let mut r = Reader { buf, pos: 0 };
        let metadata = match &self.framing {
            Framing::Windowed => {
                let start = r.pos;
                skip_metadata(&mut r, self.window)?;
                &buf[start..r.pos]
            }
            Framing::Param(constant) => constant.as_ref(),
        };
        let (key, value) = match self.element {
            ElementCoder::Kv { key, value } => {
                (read_component(&mut r, key)?, read_component(&mut r, value)?)
            }
            ElementCoder::Bytes => (None, read_component(&mut r, ComponentCoder::Bytes)?),
        };
        Ok((
            ElementParts {
                metadata,
                key,
                value,
            },
            r.pos,
        ))
    }

    /// Appends `parts` encoded with this coder.
    pub fn encode(
        &self,
        parts: &ElementParts<'_>,
        out: &mut impl BufMut,
    ) -> Result<(), CoderError> {
        match &self.framing {
            Framing::Windowed => out.put_slice(parts.metadata),
            Framing::Param(constant) if constant.as_ref() == parts.metadata => {}
            Framing::Param(_) => return Err(CoderError::ParamMismatch),
        }
        match self.element {
            ElementCoder::Kv { key, value } => {
                write_component(out, key, parts.key, "key")?;
                write_component(out, value, parts.value, "value")
            }
            ElementCoder::Bytes => {
                write_component(out, ComponentCoder::Bytes, parts.value, "value")
            }
        }
    }

    /// The KV coder of the element, or `None` for a plain-bytes element.
    pub fn kv(&self) -> Option<(ComponentCoder, ComponentCoder)> {
        match self.element {
            ElementCoder::Kv { key, value } => Some((key, value)),
            ElementCoder::Bytes => None,
        }
    }
}

impl fmt::Display for WireCoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let framing = match self.framing {
            Framing::Windowed => "windowed_value",
            Framing::Param(_) => "param_windowed_value",
        };
        match self.element {
            ElementCoder::Kv { key, value } => {
                write!(f, "{framing}(kv({key:?}, {value:?}), {:?})", self.window)
            }
            ElementCoder::Bytes => write!(f, "{framing}(bytes, {:?})", self.window),
        }
    }
}

/// A data port's windowed-value coder taken apart: the id of its element
/// coder, its window coder and how its metadata travels.
pub(crate) fn windowed_parts<'a>(
    id: &str,
    coders: &'a HashMap<String, Coder>,
) -> Result<(&'a str, WindowCoder, Framing), CoderResolveError> {
    let (urn, coder) = lookup(id, coders)?;
    if urn != WINDOWED_VALUE_URN && urn != PARAM_WINDOWED_VALUE_URN {
        return Err(unsupported(
            id,
            urn,
            "a data port's coder must be a windowed value",
        ));
    }
    let [elem_id, window_id] = coder.component_coder_ids.as_slice() else {
        return Err(unsupported(
            id,
            urn,
            "expected 2 components (element, window)",
        ));
    };
    let window = resolve_window(window_id, coders)?;
    let framing = if urn == WINDOWED_VALUE_URN {
        Framing::Windowed
    } else {
        let payload = coder
            .spec
            .as_ref()
            .map(|s| s.payload.clone())
            .unwrap_or_default();
        let len = metadata_len(&payload, window).map_err(|e| {
            unsupported(
                id,
                urn,
                &format!("its payload is not a windowed value: {e}"),
            )
        })?;
        Framing::Param(payload.slice(..len))
    };
    Ok((elem_id.as_str(), window, framing))
}

/// Checks that `id` is a `kv` element coder this worker can carry; used by
/// the expansion service to refuse a pipeline at construction time.
pub fn resolve_kv(
    id: &str,
    coders: &HashMap<String, Coder>,
) -> Result<(ComponentCoder, ComponentCoder), CoderResolveError> {
    let (urn, coder) = lookup(id, coders)?;
    if urn != KV_URN {
        return Err(unsupported(id, urn, "the element coder must be a KV"));
    }
    let [k, v] = coder.component_coder_ids.as_slice() else {
        return Err(unsupported(id, urn, "expected 2 components (key, value)"));
    };
    Ok((resolve_component(k, coders)?, resolve_component(v, coders)?))
}

/// A data port's element: a supported `kv`, or plain `bytes` (an impulse).
fn resolve_element(
    id: &str,
    coders: &HashMap<String, Coder>,
) -> Result<ElementCoder, CoderResolveError> {
    if lookup(id, coders)?.0 == KV_URN {
        let (key, value) = resolve_kv(id, coders)?;
        return Ok(ElementCoder::Kv { key, value });
    }
    match resolve_component(id, coders) {
        Ok(ComponentCoder::Bytes) => Ok(ElementCoder::Bytes),
        _ => {
            let urn = lookup(id, coders)?.0;
            Err(unsupported(
                id,
                urn,
                "the element coder must be a KV (or bytes, for an impulse)",
            ))
        }
    }
}

fn resolve_component(
    id: &str,
    coders: &HashMap<String, Coder>,
) -> Result<ComponentCoder, CoderResolveError> {
    let (urn, coder) = lookup(id, coders)?;
    let only_bytes_inside = |what: ComponentCoder| match coder.component_coder_ids.as_slice() {
        [inner] if lookup(inner, coders)?.0 == BYTES_URN => Ok(what),
        _ => Err(unsupported(
            id,
            urn,
            "only a bytes component is supported inside",
        )),
    };
    match urn {
        BYTES_URN => Ok(ComponentCoder::Bytes),
        // length_prefix(bytes) = varint(len) + raw bytes, the same bytes as nested `bytes`.
        LENGTH_PREFIX_URN => only_bytes_inside(ComponentCoder::Bytes),
        NULLABLE_URN => only_bytes_inside(ComponentCoder::NullableBytes),
        _ => Err(unsupported(id, urn, "keys and values must be bytes")),
    }
}

pub(crate) fn resolve_window(
    id: &str,
    coders: &HashMap<String, Coder>,
) -> Result<WindowCoder, CoderResolveError> {
    match lookup(id, coders)?.0 {
        GLOBAL_WINDOW_URN => Ok(WindowCoder::Global),
        INTERVAL_WINDOW_URN => Ok(WindowCoder::Interval),
        urn => Err(unsupported(id, urn, "unsupported window coder")),
    }
}

pub(crate) fn lookup<'a>(
    id: &str,
    coders: &'a HashMap<String, Coder>,
) -> Result<(&'a str, &'a Coder), CoderResolveError> {
    let coder = coders
        .get(id)
        .ok_or_else(|| CoderResolveError::Missing(id.to_owned()))?;
    let urn = coder.spec.as_ref().map(|s| s.urn.as_str()).unwrap_or("");
    Ok((urn, coder))
}

pub(crate) fn unsupported(id: &str, urn: &str, why: &str) -> CoderResolveError {
    CoderResolveError::Unsupported {
        id: id.to_owned(),
        urn: if urn.is_empty() { "no URN" } else { urn }.to_owned(),
        why: why.to_owned(),
    }
}

/// Length of the `timestamp | windows | pane` prefix at the start of `buf`.
pub(crate) fn metadata_len(buf: &[u8], window: WindowCoder) -> Result<usize, CoderError> {
    let mut r = Reader { buf, pos: 0 };
    skip_metadata(&mut r, window)?;
    Ok(r.pos)
}

pub(crate) fn skip_metadata(r: &mut Reader<'_>, window: WindowCoder) -> Result<(), CoderError> {
    r.take(8)?; // timestamp
    let count = u32::from_be_bytes(r.array::<4>()?);
    // A global window encodes to nothing, so its count needs no loop (and a
    // hostile count cannot make us spin).
    if window == WindowCoder::Interval {
        for _ in 0..count {
            r.take(8)?;
            r.varint()?;
        }
    }
    let pane_at = r.pos;
    let pane = r.array::<1>()?[0];
    match pane >> 4 {
        0 => {}
        1 => {
            r.varint()?;
        }
        2 => {
            r.varint()?;
            r.varint()?;
        }
        _ => {
            return Err(CoderError::BadPane {
                at: pane_at,
                byte: pane,
            });
        }
    }
    Ok(())
}

#[inline]
fn read_component<'a>(
    r: &mut Reader<'a>,
    coder: ComponentCoder,
) -> Result<Option<&'a [u8]>, CoderError> {
    if coder == ComponentCoder::NullableBytes {
        let at = r.pos;
        match r.array::<1>()?[0] {
            0 => return Ok(None),
            1 => {}
            byte => return Err(CoderError::BadNullMarker { at, byte }),
        }
    }
    let at = r.pos;
    let len = r.varint()?;
    let len = usize::try_from(len).map_err(|_| CoderError::LengthOverflow { at, len })?;
    r.take(len).map(Some)
}

fn write_component(
    out: &mut impl BufMut,
    coder: ComponentCoder,
    bytes: Option<&[u8]>,
    part: &'static str,
) -> Result<(), CoderError> {
    match (coder, bytes) {
        (ComponentCoder::Bytes, None) => return Err(CoderError::NullNotAllowed { part }),
        (ComponentCoder::NullableBytes, None) => {
            out.put_u8(0);
            return Ok(());
        }
        (ComponentCoder::NullableBytes, Some(_)) => out.put_u8(1),
        (ComponentCoder::Bytes, Some(_)) => {}
    }
    let bytes = bytes.unwrap_or_default();
    put_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
    Ok(())
}

/// Appends `value` as an unsigned LEB128 varint (Beam's `varint` coder).
pub fn put_varint(out: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Encodes a signed value as Beam's varint coder does (two's complement, 10 bytes for negatives).
pub fn varint_i64(value: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    put_varint(&mut out, value as u64);
    out
}

/// Cursor over a chunk that reports where it ran out; also reads schema Rows.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CoderError> {
        let rest = self.buf.len() - self.pos;
        if n > rest {
            return Err(CoderError::Truncated {
                at: self.pos,
                needed: n - rest,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline]
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CoderError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    #[inline]
    pub(crate) fn varint(&mut self) -> Result<u64, CoderError> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.array::<1>()?[0];
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CoderError::VarintOverflow { at: start })
    }
}

/// Timestamp encoding used in windowed values: millis + 2^63, big-endian.
pub fn encode_timestamp(millis: i64) -> [u8; 8] {
    ((millis as u64) ^ (1u64 << 63)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use beam_proto::pipeline::FunctionSpec;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn coder(urn: &str, payload: &[u8], components: &[&str]) -> Coder {
        Coder {
            spec: Some(FunctionSpec {
                urn: urn.into(),
                payload: Bytes::copy_from_slice(payload),
            }),
            component_coder_ids: components.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A coder map with every coder the tests combine.
    fn coders() -> HashMap<String, Coder> {
        let param_payload = hex("7f df 3b 64 5a 1c ac 09 00 00 00 01 0f 00");
        [
            ("bytes", coder(BYTES_URN, b"", &[])),
            ("nbytes", coder(NULLABLE_URN, b"", &["bytes"])),
            ("lpbytes", coder(LENGTH_PREFIX_URN, b"", &["bytes"])),
            ("varint", coder("beam:coder:varint:v1", b"", &[])),
            ("wvb", coder(WINDOWED_VALUE_URN, b"", &["bytes", "gw"])),
            ("kv", coder(KV_URN, b"", &["bytes", "bytes"])),
            ("kvn", coder(KV_URN, b"", &["nbytes", "nbytes"])),
            ("kvlp", coder(KV_URN, b"", &["lpbytes", "lpbytes"])),
            ("kvv", coder(KV_URN, b"", &["varint", "bytes"])),
            ("gw", coder(GLOBAL_WINDOW_URN, b"", &[])),
            ("iw", coder(INTERVAL_WINDOW_URN, b"", &[])),
            ("wv", coder(WINDOWED_VALUE_URN, b"", &["kv", "gw"])),
            ("wvn", coder(WINDOWED_VALUE_URN, b"", &["kvn", "gw"])),
            ("wvlp", coder(WINDOWED_VALUE_URN, b"", &["kvlp", "gw"])),
            ("wvi", coder(WINDOWED_VALUE_URN, b"", &["kv", "iw"])),
            ("wvv", coder(WINDOWED_VALUE_URN, b"", &["kvv", "gw"])),
            (
                "pwv",
                coder(PARAM_WINDOWED_VALUE_URN, &param_payload, &["kv", "gw"]),
            ),
            ("pickled", coder("beam:coders:javasdk:0.1", b"", &[])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn varint_vectors() {
        for (v, expect) in [
            (0u64, "00"),
            (300, "ac 02"),
            (1000, "e8 07"),
            (u64::MAX, "ff ff ff ff ff ff ff ff ff 01"),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out, hex(expect), "varint {v}");
            let mut r = Reader { buf: &out, pos: 0 };
            assert_eq!(r.varint().unwrap(), v);
        }
        assert_eq!(varint_i64(-1), hex("ff ff ff ff ff ff ff ff ff 01"));
    }

    #[test]
    fn timestamp_vectors() {
        assert_eq!(encode_timestamp(0).to_vec(), hex("80 00 00 00 00 00 00 00"));
        assert_eq!(
            encode_timestamp(-9223372036854775).to_vec(),
            hex("7f df 3b 64 5a 1c ac 09")
        );
        assert_eq!(
            encode_timestamp(9223372036854775).to_vec(),
            hex("80 20 c4 9b a5 e3 53 f7")
        );
        assert_eq!(
            encode_timestamp(1454293425000).to_vec(),
            hex("80 00 01 52 9a a4 9b 68")
        );
    }

    #[test]
    fn kv_bytes_in_global_window_decodes_like_the_observed_runner_element() {
        let wire = WireCoder::resolve("wv", &coders()).unwrap();
        let mut elem = hex("7fdf3b645a1cac09 00000001 0f 0a");
        elem.extend_from_slice(b"0123456789");
        elem.push(0x64);
        elem.extend_from_slice(&[7u8; 100]);
        assert_eq!(elem.len(), 125);
        let (parts, len) = wire.decode(&elem).unwrap();
        assert_eq!(len, 125);
        assert_eq!(parts.key, Some(&b"0123456789"[..]));
        assert_eq!(parts.value, Some(&[7u8; 100][..]));
        assert_eq!(parts.metadata, &elem[..13]);
        let mut out = Vec::new();
        wire.encode(&parts, &mut out).unwrap();
        assert_eq!(out, elem);
    }

    #[test]
    fn kv_abc_def_nested() {
        let wire = WireCoder::resolve("wv", &coders()).unwrap();
        let mut elem = hex("80 00 01 52 9a a4 9b 68 00 00 00 01 0f");
        elem.extend_from_slice(&hex("03 616263 03 646566"));
        let (parts, len) = wire.decode(&elem).unwrap();
        assert_eq!(
            (parts.key, parts.value),
            (Some(&b"abc"[..]), Some(&b"def"[..]))
        );
        assert_eq!(len, elem.len());
    }

    #[test]
    fn nullable_keys_and_length_prefix() {
        let all = coders();
        let n = WireCoder::resolve("wvn", &all).unwrap();
        let lp = WireCoder::resolve("wvlp", &all).unwrap();
        let plain = WireCoder::resolve("wv", &all).unwrap();
        // length_prefix(bytes) is byte-identical to bytes, so it forwards untouched.
        assert!(lp.same_encoding(&plain));
        assert!(!n.same_encoding(&plain));

        let null_key = hex("7fdf3b645a1cac09 00000001 0f 00 01 02 6869");
        let (parts, len) = n.decode(&null_key).unwrap();
        assert_eq!(len, null_key.len());
        assert_eq!(parts.key, None);
        assert_eq!(parts.value, Some(&b"hi"[..]));
        assert_eq!(
            plain.encode(&parts, &mut Vec::new()),
            Err(CoderError::NullNotAllowed { part: "key" })
        );

        let mut reencoded = Vec::new();
        let with_key = hex("7fdf3b645a1cac09 00000001 0f 01 01 6b 01 02 6869");
        let (parts, _) = n.decode(&with_key).unwrap();
        plain.encode(&parts, &mut reencoded).unwrap();
        assert_eq!(reencoded, hex("7fdf3b645a1cac09 00000001 0f 01 6b 02 6869"));

        let bad_marker = hex("7fdf3b645a1cac09 00000001 0f 05");
        assert_eq!(
            n.decode(&bad_marker).unwrap_err(),
            CoderError::BadNullMarker { at: 13, byte: 5 }
        );
    }

    #[test]
    fn interval_windows_and_panes_pass_through() {
        let wire = WireCoder::resolve("wvi", &coders()).unwrap();
        // Two interval windows (yaml vector), pane with encoding 2 (index + nonspeculative index).
        let mut elem = hex("80 00 01 52 9a a4 9b 68 00 00 00 02");
        elem.extend_from_slice(&hex("80 00 01 52 9a a4 9b 68 80 dd db 01"));
        elem.extend_from_slice(&hex("80 00 01 52 9a a4 9b 68 80 dd db 01"));
        elem.extend_from_slice(&hex("25 ac 02 03"));
        let meta_len = elem.len();
        elem.extend_from_slice(&hex("01 61 00"));
        let (parts, len) = wire.decode(&elem).unwrap();
        assert_eq!(len, elem.len());
        assert_eq!(parts.metadata.len(), meta_len);
        assert_eq!(parts.value, Some(&b""[..]));
    }

    #[test]
    fn param_windowed_value_carries_only_the_element() {
        let all = coders();
        let param = WireCoder::resolve("pwv", &all).unwrap();
        let full = WireCoder::resolve("wv", &all).unwrap();
        assert_eq!(
            param.framing,
            Framing::Param(Bytes::from(hex("7f df 3b 64 5a 1c ac 09 00 00 00 01 0f")))
        );
        let elem = hex("01 6b 01 76");
        let (parts, len) = param.decode(&elem).unwrap();
        assert_eq!(len, 4);
        let mut out = Vec::new();
        full.encode(&parts, &mut out).unwrap();
        assert_eq!(out, hex("7fdf3b645a1cac09 00000001 0f 01 6b 01 76"));
        // And back: only metadata equal to the constant fits the param coder.
        let (parts, _) = full.decode(&out).unwrap();
        let mut back = Vec::new();
        param.encode(&parts, &mut back).unwrap();
        assert_eq!(back, elem);
        let other_time = hex("8000000000000000 00000001 0f 01 6b 01 76");
        let (parts, _) = full.decode(&other_time).unwrap();
        assert_eq!(
            param.encode(&parts, &mut Vec::new()),
            Err(CoderError::ParamMismatch)
        );
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        let wire = WireCoder::resolve("wv", &coders()).unwrap();
        let good = hex("7fdf3b645a1cac09 00000001 0f 01 6b 01 76");
        for cut in 0..good.len() {
            assert!(
                matches!(wire.decode(&good[..cut]), Err(CoderError::Truncated { .. })),
                "cut at {cut}"
            );
        }
        let bad_pane = hex("7fdf3b645a1cac09 00000001 3f");
        assert_eq!(
            wire.decode(&bad_pane).unwrap_err(),
            CoderError::BadPane { at: 12, byte: 0x3f }
        );
        let long_varint = hex("7fdf3b645a1cac09 00000001 0f ffffffffffffffffffff01");
        assert_eq!(
            wire.decode(&long_varint).unwrap_err(),
            CoderError::VarintOverflow { at: 13 }
        );
        let huge_len = hex("7fdf3b645a1cac09 00000001 0f ffffffffffffffff7f");
        assert!(wire.decode(&huge_len).is_err());
        // A global-window element claiming 4 billion windows is scanned in O(1).
        let many_windows = hex("7fdf3b645a1cac09 ffffffff 0f 01 6b 01 76");
        assert_eq!(wire.decode(&many_windows).unwrap().1, many_windows.len());
    }

    #[test]
    fn impulse_elements_are_plain_bytes() {
        let wire = WireCoder::resolve("wvb", &coders()).unwrap();
        assert_eq!(wire.element, ElementCoder::Bytes);
        assert_eq!(wire.kv(), None);
        let impulse = hex("7f df 3b 64 5a 1c ac 09 00 00 00 01 0f 00");
        let (parts, len) = wire.decode(&impulse).unwrap();
        assert_eq!(
            (parts.key, parts.value, len),
            (None, Some(&b""[..]), impulse.len())
        );
    }

    #[test]
    fn unsupported_coders_are_named() {
        let all = coders();
        let err = WireCoder::resolve("wvv", &all).unwrap_err();
        assert!(err.to_string().contains("beam:coder:varint:v1"), "{err}");
        let err = WireCoder::resolve("pickled", &all).unwrap_err();
        assert!(err.to_string().contains("beam:coders:javasdk:0.1"), "{err}");
        assert!(err.to_string().contains("supported are"), "{err}");
        assert_eq!(
            WireCoder::resolve("nope", &all).unwrap_err(),
            CoderResolveError::Missing("nope".into())
        );
    }
}
