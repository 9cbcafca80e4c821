//! Encoding and parsing of KV elements as they travel on the Fn API data channel.
//!
//! Written independently of the worker's own coders on purpose: a test that
//! checks the worker with the worker's code would not catch a shared mistake.
//! Formats follow `shared/docs/fnapi-notes.md` §3; everything is in the nested
//! context, as on the wire.

use bytes::Bytes;

/// Beam's minimum timestamp in milliseconds (`BoundedWindow.TIMESTAMP_MIN_VALUE`).
pub const TIMESTAMP_MIN_MILLIS: i64 = -9_223_372_036_854_775;
/// Beam's maximum timestamp in milliseconds.
pub const TIMESTAMP_MAX_MILLIS: i64 = 9_223_372_036_854_775;
/// The end of the global window (`GlobalWindow.maxTimestamp()`), in milliseconds.
pub const GLOBAL_WINDOW_MAX_MILLIS: i64 = 9_223_371_950_454_775;
/// Pane byte `NO_FIRING`: first and last pane, timing UNKNOWN. What Kafka reads carry.
pub const PANE_NO_FIRING: u8 = 0x0f;
/// Pane byte `ON_TIME_AND_ONLY_FIRING`.
pub const PANE_ON_TIME_AND_ONLY_FIRING: u8 = 0x07;

/// One window an element belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// The global window (encodes to zero bytes).
    Global,
    /// `[start, end)` in milliseconds (encodes as shifted `end` then `varint(end - start)`).
    Interval { start_millis: i64, end_millis: i64 },
}

/// Which window coder a wire coder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowKind {
    Global,
    Interval,
}

impl Window {
    /// The window coder that can encode this window.
    pub fn kind(&self) -> WindowKind {
        match self {
            Window::Global => WindowKind::Global,
            Window::Interval { .. } => WindowKind::Interval,
        }
    }
}

/// What is needed to find element boundaries in a data-channel chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WireFormat {
    /// `false` for `windowed_value` (timestamp, windows and pane precede every element),
    /// `true` for `param_windowed_value` (only the KV travels).
    pub param: bool,
    /// Window coder of `windowed_value`; ignored when `param` is set.
    pub window: WindowKind,
    /// Key and value are `nullable(bytes)` (`00`, or `01` + nested bytes)
    /// rather than nested `bytes` (also how `length_prefix(bytes)` looks).
    pub nullable: bool,
}

impl WireFormat {
    /// `windowed_value(kv(bytes, bytes), global_window)`: what the Python runner uses.
    pub const KV_BYTES_GLOBAL: WireFormat = WireFormat {
        param: false,
        window: WindowKind::Global,
        nullable: false,
    };
    /// `windowed_value(kv(nullable(bytes), nullable(bytes)), global_window)`: KafkaIO's coder.
    pub const KV_NULLABLE_GLOBAL: WireFormat = WireFormat {
        param: false,
        window: WindowKind::Global,
        nullable: true,
    };
}

/// Why a chunk could not be split into elements.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElementError {
    #[error("element truncated at offset {at}: needed {needed} more byte(s)")]
    Truncated { at: usize, needed: usize },
    #[error("varint at offset {at} is longer than 10 bytes")]
    VarintTooLong { at: usize },
    #[error("pane byte {byte:#04x} at offset {at} has an unknown encoding")]
    BadPane { at: usize, byte: u8 },
    #[error("nullable marker {byte:#04x} at offset {at} is neither 0x00 nor 0x01")]
    BadNullMarker { at: usize, byte: u8 },
    #[error("window count {count} at offset {at} is not positive")]
    BadWindowCount { at: usize, count: i32 },
}

/// One element split into its parts, borrowing from the chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedElement<'a> {
    /// Event time in milliseconds; `None` for `param_windowed_value` (it is a coder constant).
    pub timestamp_millis: Option<i64>,
    /// Windows in wire order; empty for `param_windowed_value`.
    pub windows: Vec<Window>,
    /// Pane bytes (first byte plus any index varints); empty for `param_windowed_value`.
    pub pane: &'a [u8],
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Encoded length of the whole element.
    pub len: usize,
}

/// Beam's timestamp encoding: millis as i64 with the sign bit flipped, big-endian,
/// so that byte order matches numeric order.
pub fn encode_timestamp(millis: i64) -> [u8; 8] {
    ((millis as u64) ^ (1 << 63)).to_be_bytes()
}

/// Appends `value` as an unsigned LEB128 varint (Beam's `varint` coder).
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `value` as a varint, for monitoring-info payloads and the like. Negative
/// values take 10 bytes (two's complement), as in Beam.
pub fn varint_bytes(value: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    put_varint(&mut out, value as u64);
    out
}

/// Reads a varint at the start of `buf`; returns it and its length, or `None`
/// when it is truncated or longer than 10 bytes.
pub fn read_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in buf.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Appends the windowed-value header: timestamp, one window, pane byte.
pub fn put_metadata(out: &mut Vec<u8>, timestamp_millis: i64, window: Window, pane: u8) {
    out.extend_from_slice(&encode_timestamp(timestamp_millis));
    out.extend_from_slice(&1u32.to_be_bytes());
    put_window(out, window);
    out.push(pane);
}

/// Appends one window with its window coder.
pub fn put_window(out: &mut Vec<u8>, window: Window) {
    if let Window::Interval {
        start_millis,
        end_millis,
    } = window
    {
        out.extend_from_slice(&encode_timestamp(end_millis));
        put_varint(out, end_millis.wrapping_sub(start_millis) as u64);
    }
}

/// Appends a KV component: nested bytes, or `nullable(bytes)` when `nullable`.
///
/// # Panics
/// When `part` is `None` and `nullable` is false: `beam:coder:bytes:v1` has no
/// null, so the caller asked for an element no coder can write.
pub fn put_component(out: &mut Vec<u8>, part: Option<&[u8]>, nullable: bool) {
    match (part, nullable) {
        (None, true) => out.push(0),
        (Some(bytes), nullable) => {
            if nullable {
                out.push(1);
            }
            put_varint(out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
        (None, false) => panic!("a null key or value needs a nullable coder"),
    }
}

/// Appends one `windowed_value(kv(..), window)` element.
pub fn put_kv_element(
    out: &mut Vec<u8>,
    timestamp_millis: i64,
    window: Window,
    pane: u8,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    nullable: bool,
) {
    put_metadata(out, timestamp_millis, window, pane);
    put_component(out, key, nullable);
    put_component(out, value, nullable);
}

/// One `windowed_value(kv(..), global_window)` element, as the Python runner
/// and Kafka reads send them.
pub fn encode_kv_element(
    timestamp_millis: i64,
    pane: u8,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    nullable: bool,
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(16 + key.map_or(0, |k| k.len()) + value.map_or(0, |v| v.len()));
    put_kv_element(
        &mut out,
        timestamp_millis,
        Window::Global,
        pane,
        key,
        value,
        nullable,
    );
    out
}

/// One `windowed_value(kv(..), interval_window)` element in `[start, end)`.
pub fn encode_kv_element_interval(
    timestamp_millis: i64,
    pane: u8,
    window_start_millis: i64,
    window_end_millis: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    nullable: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    put_kv_element(
        &mut out,
        timestamp_millis,
        Window::Interval {
            start_millis: window_start_millis,
            end_millis: window_end_millis,
        },
        pane,
        key,
        value,
        nullable,
    );
    out
}

/// One `param_windowed_value(kv(..), _)` element: only the KV travels.
pub fn encode_kv_param_element(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    nullable: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    put_component(&mut out, key, nullable);
    put_component(&mut out, value, nullable);
    out
}

/// Payload of a `param_windowed_value` coder: a windowed value with an empty
/// `bytes` element, from which the receiver takes timestamp, window and pane.
pub fn param_windowed_value_payload(timestamp_millis: i64, window: Window, pane: u8) -> Vec<u8> {
    let mut out = Vec::new();
    put_metadata(&mut out, timestamp_millis, window, pane);
    out.push(0);
    out
}

/// Builds `count` elements with `key_len`-byte keys and `value_len`-byte values,
/// at timestamp MIN in the global window with pane NO_FIRING, in one buffer.
///
/// Keys hold the element index (big-endian, repeated) so that a reordering or a
/// dropped element changes the output bytes. With `key_len = 10` and
/// `value_len = 100` each element is 125 bytes, like the load figures in
/// `python-runner-observed.md`.
pub fn synthetic_kv_elements(
    count: usize,
    key_len: usize,
    value_len: usize,
    nullable: bool,
) -> Bytes {
    let mut out = Vec::new();
    let per_element = {
        let key = vec![0u8; key_len];
        let value = vec![0u8; value_len];
        put_kv_element(
            &mut out,
            TIMESTAMP_MIN_MILLIS,
            Window::Global,
            PANE_NO_FIRING,
            Some(&key),
            Some(&value),
            nullable,
        );
        out.len()
    };
    out.clear();
    out.reserve_exact(per_element * count);
    let mut key = vec![0u8; key_len];
    let mut value = vec![0u8; value_len];
    for i in 0..count {
        let index = (i as u64).to_be_bytes();
        for (j, byte) in key.iter_mut().enumerate() {
            *byte = index[j % 8];
        }
        for (j, byte) in value.iter_mut().enumerate() {
            *byte = (i as u8).wrapping_add(j as u8);
        }
        put_kv_element(
            &mut out,
            TIMESTAMP_MIN_MILLIS,
            Window::Global,
            PANE_NO_FIRING,
            Some(&key),
            Some(&value),
            nullable,
        );
    }
    Bytes::from(out)
}

/// `n` 125-byte elements (10-byte key, 100-byte value, not nullable), as in
/// the Python load figures.
pub fn kv_input(n: usize) -> Bytes {
    synthetic_kv_elements(n, 10, 100, false)
}

/// Length of the first element of `buf`.
pub fn element_len(buf: &[u8], format: &WireFormat) -> Result<usize, ElementError> {
    scan_element(buf, format, None).map(|e| e.len)
}

/// Splits the first element of `buf` into its parts.
pub fn decode_element<'a>(
    buf: &'a [u8],
    format: &WireFormat,
) -> Result<DecodedElement<'a>, ElementError> {
    let mut windows = Vec::new();
    let scanned = scan_element(buf, format, Some(&mut windows))?;
    Ok(DecodedElement {
        timestamp_millis: scanned.timestamp_millis,
        windows,
        pane: scanned.pane,
        key: scanned.key,
        value: scanned.value,
        len: scanned.len,
    })
}

/// A [`DecodedElement`] without its windows.
struct ScannedElement<'a> {
    timestamp_millis: Option<i64>,
    pane: &'a [u8],
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    len: usize,
}

/// Walks the first element of `buf`, pushing its windows onto `windows` if
/// given (length-only callers pass `None` and allocate nothing).
fn scan_element<'a>(
    buf: &'a [u8],
    format: &WireFormat,
    mut windows: Option<&mut Vec<Window>>,
) -> Result<ScannedElement<'a>, ElementError> {
    let mut r = Reader { buf, pos: 0 };
    let mut timestamp_millis = None;
    let mut pane: &[u8] = &[];
    if !format.param {
        let ts = u64::from_be_bytes(r.array::<8>()?);
        timestamp_millis = Some((ts ^ (1 << 63)) as i64);
        let at = r.pos;
        let count = i32::from_be_bytes(r.array::<4>()?);
        if count <= 0 {
            return Err(ElementError::BadWindowCount { at, count });
        }
        for _ in 0..count {
            let window = match format.window {
                WindowKind::Global => Window::Global,
                WindowKind::Interval => {
                    let end = (u64::from_be_bytes(r.array::<8>()?) ^ (1 << 63)) as i64;
                    let span = r.varint()?;
                    Window::Interval {
                        start_millis: end.wrapping_sub(span as i64),
                        end_millis: end,
                    }
                }
            };
            if let Some(windows) = windows.as_deref_mut() {
                windows.push(window);
            }
        }
        let pane_start = r.pos;
        let [first] = r.array::<1>()?;
        match first >> 4 {
            0 => {}
            1 => {
                r.varint()?;
            }
            2 => {
                r.varint()?;
                r.varint()?;
            }
            _ => {
                return Err(ElementError::BadPane {
                    at: pane_start,
                    byte: first,
                });
            }
        }
        pane = &buf[pane_start..r.pos];
    }
    let key = r.component(format.nullable)?;
    let value = r.component(format.nullable)?;
    Ok(ScannedElement {
        timestamp_millis,
        pane,
        key,
        value,
        len: r.pos,
    })
}

/// Splits a whole chunk into elements; fails if it does not end on an element boundary.
pub fn decode_elements<'a>(
    buf: &'a [u8],
    format: &WireFormat,
) -> Result<Vec<DecodedElement<'a>>, ElementError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let element = decode_element(&buf[pos..], format).map_err(|e| e.shifted(pos))?;
        pos += element.len;
        out.push(element);
    }
    Ok(out)
}

/// Number of elements in a chunk; fails if it does not end on an element boundary.
pub fn count_elements(buf: &[u8], format: &WireFormat) -> Result<usize, ElementError> {
    let mut count = 0;
    let mut pos = 0;
    while pos < buf.len() {
        pos += element_len(&buf[pos..], format).map_err(|e| e.shifted(pos))?;
        count += 1;
    }
    Ok(count)
}

/// Cuts `buf` into chunks of at most `elements_per_chunk` whole elements.
/// The chunks share `buf`'s memory.
pub fn chunk_elements(
    buf: &Bytes,
    format: &WireFormat,
    elements_per_chunk: usize,
) -> Result<Vec<Bytes>, ElementError> {
    let per_chunk = elements_per_chunk.max(1);
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    let mut in_chunk = 0;
    while pos < buf.len() {
        pos += element_len(&buf[pos..], format).map_err(|e| e.shifted(pos))?;
        in_chunk += 1;
        if in_chunk == per_chunk {
            chunks.push(buf.slice(start..pos));
            start = pos;
            in_chunk = 0;
        }
    }
    if start < pos {
        chunks.push(buf.slice(start..pos));
    }
    Ok(chunks)
}

impl ElementError {
    /// Re-bases an offset reported for a sub-slice onto the whole chunk.
    fn shifted(self, by: usize) -> Self {
        match self {
            ElementError::Truncated { at, needed } => ElementError::Truncated {
                at: at + by,
                needed,
            },
            ElementError::VarintTooLong { at } => ElementError::VarintTooLong { at: at + by },
            ElementError::BadPane { at, byte } => ElementError::BadPane { at: at + by, byte },
            ElementError::BadNullMarker { at, byte } => {
                ElementError::BadNullMarker { at: at + by, byte }
            }
            ElementError::BadWindowCount { at, count } => {
                ElementError::BadWindowCount { at: at + by, count }
            }
        }
    }
}

/// A cursor over one element's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ElementError> {
        let rest = self.buf.len() - self.pos;
        if rest < n {
            return Err(ElementError::Truncated {
                at: self.pos,
                needed: n - rest,
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ElementError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn varint(&mut self) -> Result<u64, ElementError> {
        let rest = &self.buf[self.pos..];
        match read_varint(rest) {
            Some((value, len)) => {
                self.pos += len;
                Ok(value)
            }
            None if rest.len() >= 10 => Err(ElementError::VarintTooLong { at: self.pos }),
            None => Err(ElementError::Truncated {
                at: self.buf.len(),
                needed: 1,
            }),
        }
    }

    fn component(&mut self, nullable: bool) -> Result<Option<&'a [u8]>, ElementError> {
        if nullable {
            let at = self.pos;
            match self.array::<1>()? {
                [0] => return Ok(None),
                [1] => {}
                [byte] => return Err(ElementError::BadNullMarker { at, byte }),
            }
        }
        let len_at = self.pos;
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| ElementError::Truncated {
            at: len_at,
            needed: usize::MAX,
        })?;
        self.take(len).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn timestamps_match_beam_vectors() {
        assert_eq!(hex(&encode_timestamp(0)), "8000000000000000");
        assert_eq!(
            hex(&encode_timestamp(TIMESTAMP_MIN_MILLIS)),
            "7fdf3b645a1cac09"
        );
        assert_eq!(
            hex(&encode_timestamp(TIMESTAMP_MAX_MILLIS)),
            "8020c49ba5e353f7"
        );
        assert_eq!(
            hex(&encode_timestamp(GLOBAL_WINDOW_MAX_MILLIS)),
            "8020c49ba0bcf7f7"
        );
    }

    #[test]
    fn varints_match_beam_vectors() {
        assert_eq!(hex(&varint_bytes(0)), "00");
        assert_eq!(hex(&varint_bytes(300)), "ac02");
        assert_eq!(hex(&varint_bytes(1000)), "e807");
        assert_eq!(hex(&varint_bytes(-1)), "ffffffffffffffffff01");
        assert_eq!(read_varint(&varint_bytes(-1)), Some((u64::MAX, 10)));
        assert_eq!(read_varint(&[0x80]), None);
    }

    #[test]
    fn interval_window_matches_beam_vector() {
        let mut out = Vec::new();
        put_window(
            &mut out,
            Window::Interval {
                start_millis: 1_454_293_425_000 - 3_600_000,
                end_millis: 1_454_293_425_000,
            },
        );
        assert_eq!(hex(&out), "800001529aa49b6880dddb01");
    }

    #[test]
    fn observed_python_element_is_125_bytes() {
        let e = encode_kv_element(
            TIMESTAMP_MIN_MILLIS,
            PANE_NO_FIRING,
            Some(&[7; 10]),
            Some(&[9; 100]),
            false,
        );
        assert_eq!(e.len(), 125);
        assert_eq!(hex(&e[..15]), "7fdf3b645a1cac09000000010f0a07");
        let parsed = decode_element(&e, &WireFormat::KV_BYTES_GLOBAL).unwrap();
        assert_eq!(parsed.len, 125);
        assert_eq!(parsed.key, Some(&[7u8; 10][..]));
        assert_eq!(parsed.value, Some(&[9u8; 100][..]));
        assert_eq!(parsed.pane, &[PANE_NO_FIRING]);
    }

    #[test]
    fn nullable_and_interval_round_trip() {
        let e = encode_kv_element_interval(
            5,
            PANE_ON_TIME_AND_ONLY_FIRING,
            0,
            10,
            None,
            Some(b"v"),
            true,
        );
        let format = WireFormat {
            param: false,
            window: WindowKind::Interval,
            nullable: true,
        };
        let parsed = decode_element(&e, &format).unwrap();
        assert_eq!(parsed.timestamp_millis, Some(5));
        assert_eq!(
            parsed.windows,
            vec![Window::Interval {
                start_millis: 0,
                end_millis: 10
            }]
        );
        assert_eq!(parsed.key, None);
        assert_eq!(parsed.value, Some(&b"v"[..]));
        assert_eq!(parsed.len, e.len());
    }

    #[test]
    fn param_payload_matches_impulse_vector() {
        let p = param_windowed_value_payload(TIMESTAMP_MIN_MILLIS, Window::Global, PANE_NO_FIRING);
        assert_eq!(hex(&p), "7fdf3b645a1cac09000000010f00");
        let e = encode_kv_param_element(Some(b"k"), Some(b"vv"), false);
        assert_eq!(hex(&e), "016b027676");
        let format = WireFormat {
            param: true,
            window: WindowKind::Global,
            nullable: false,
        };
        assert_eq!(count_elements(&e, &format), Ok(1));
    }

    #[test]
    fn chunking_keeps_whole_elements() {
        let all = synthetic_kv_elements(10, 10, 100, false);
        assert_eq!(all.len(), 1250);
        let chunks = chunk_elements(&all, &WireFormat::KV_BYTES_GLOBAL, 3).unwrap();
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![375, 375, 375, 125]
        );
        assert_eq!(count_elements(&all, &WireFormat::KV_BYTES_GLOBAL), Ok(10));
        assert!(matches!(
            count_elements(&all[..1249], &WireFormat::KV_BYTES_GLOBAL),
            Err(ElementError::Truncated { .. })
        ));
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let format = WireFormat::KV_NULLABLE_GLOBAL;
        let mut e = encode_kv_element(0, PANE_NO_FIRING, Some(b"k"), None, true);
        e[13] = 7;
        assert_eq!(
            decode_element(&e, &format),
            Err(ElementError::BadNullMarker { at: 13, byte: 7 })
        );
        assert!(decode_element(&[0xff; 30], &WireFormat::KV_BYTES_GLOBAL).is_err());
        assert!(decode_element(&[], &WireFormat::KV_BYTES_GLOBAL).is_err());
    }
}
