//! Reads the configuration of a cross-language transform: an
//! `ExternalConfigurationPayload` holds a schema and one Row encoded with Beam's
//! row coder (field count, null bitmap, then each present field in order).
//! This is how Beam's own cross-language transforms (KafkaIO included) are
//! configured, so Java, Go and Python pipelines can all build it.

use std::collections::BTreeMap;

use beam_proto::pipeline::field_type::TypeInfo;
use beam_proto::pipeline::{AtomicType, ExternalConfigurationPayload, FieldType, Schema};
use prost::Message;

use crate::coders::Reader;

/// Most values (list items, map keys and values, fields) one configuration
/// may decode to. A Kafka configuration has a few dozen; each decoded value
/// takes ~32 bytes or more, so one-byte entries repeated millions of times
/// would otherwise inflate a request ~30x in memory.
pub const MAX_VALUES: usize = 100_000;

/// A decoded field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Double(f64),
    Bool(bool),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

/// A configuration that cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    #[error("the payload is not an ExternalConfigurationPayload: {0}")]
    Payload(String),
    #[error("field '{field}': {why}")]
    Field { field: String, why: String },
    #[error("the row is truncated or malformed at byte {0}")]
    Truncated(usize),
    #[error("the row has {found} fields but its schema {expected}")]
    FieldCount { found: u64, expected: usize },
    #[error("the configuration holds more than {MAX_VALUES} values; this is not a configuration")]
    TooLarge,
}

/// The configuration's fields by name; absent and null fields are both missing.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Config(pub BTreeMap<String, Value>);

impl Config {
    /// Decodes a transform payload (an encoded `ExternalConfigurationPayload`).
    pub fn from_payload(payload: &[u8]) -> Result<Config, RowError> {
        let p = ExternalConfigurationPayload::decode(payload)
            .map_err(|e| RowError::Payload(e.to_string()))?;
        let schema = p.schema.unwrap_or_default();
        decode_row(&schema, &p.payload)
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| **v != Value::Null)
    }

    /// Names of fields that are set but not in `known`, so typos are reported.
    pub fn unknown_fields(&self, known: &[&str]) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| **v != Value::Null && !known.contains(&k.as_str()))
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn string(&self, name: &str) -> Result<Option<String>, RowError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.clone())),
            Some(other) => Err(wrong(name, "a string", other)),
        }
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>, RowError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Int(i)) => Ok(Some(*i)),
            Some(other) => Err(wrong(name, "an integer", other)),
        }
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, RowError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(wrong(name, "a boolean", other)),
        }
    }

    pub fn strings(&self, name: &str) -> Result<Vec<String>, RowError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::List(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Str(s) => Ok(s.clone()),
                    other => Err(wrong(name, "a list of strings", other)),
                })
                .collect(),
            Some(other) => Err(wrong(name, "a list of strings", other)),
        }
    }

    pub fn string_map(&self, name: &str) -> Result<BTreeMap<String, String>, RowError> {
        match self.get(name) {
            None => Ok(BTreeMap::new()),
            Some(Value::Map(entries)) => entries
                .iter()
                .map(|(k, v)| match (k, v) {
                    (Value::Str(k), Value::Str(v)) => Ok((k.clone(), v.clone())),
                    _ => Err(wrong(name, "a map of strings to strings", v)),
                })
                .collect(),
            Some(other) => Err(wrong(name, "a map of strings to strings", other)),
        }
    }
}

fn wrong(field: &str, expected: &str, found: &Value) -> RowError {
    RowError::Field {
        field: field.to_owned(),
        why: format!("expected {expected}, found {found:?}"),
    }
}

/// Decodes `bytes` as one row of `schema`.
pub fn decode_row(schema: &Schema, bytes: &[u8]) -> Result<Config, RowError> {
    let mut r = Cursor {
        r: Reader::new(bytes),
        len: bytes.len(),
        values: 0,
    };
    let mut fields: Vec<_> = schema.fields.iter().collect();
    if schema.encoding_positions_set {
        fields.sort_by_key(|f| f.encoding_position);
    }
    let count = r.varint()?;
    if count as usize != fields.len() {
        return Err(RowError::FieldCount {
            found: count,
            expected: fields.len(),
        });
    }
    let bitmap_len = r.varint()? as usize;
    let bitmap = r.take(bitmap_len)?.to_vec();
    let is_null = |i: usize| bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
    let mut out = BTreeMap::new();
    for (i, field) in fields.iter().enumerate() {
        let value = if is_null(i) {
            Value::Null
        } else {
            let ty = field.r#type.as_ref().ok_or_else(|| RowError::Field {
                field: field.name.clone(),
                why: "the schema gives it no type".into(),
            })?;
            r.value(ty).map_err(|e| match e {
                RowError::Truncated(_) | RowError::Field { .. } => RowError::Field {
                    field: field.name.clone(),
                    why: e.to_string(),
                },
                other => other,
            })?
        };
        out.insert(field.name.clone(), value);
    }
    Ok(Config(out))
}

/// The coders' byte reader, with errors worded for configuration and bounds
/// on what the decoded values may hold.
struct Cursor<'a> {
    r: Reader<'a>,
    /// Length of the whole row, to bound counts by the bytes left.
    len: usize,
    /// Values decoded so far, against [`MAX_VALUES`].
    values: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RowError> {
        let at = self.r.pos;
        self.r.take(n).map_err(|_| RowError::Truncated(at))
    }

    fn varint(&mut self) -> Result<u64, RowError> {
        let at = self.r.pos;
        self.r.varint().map_err(|_| RowError::Truncated(at))
    }

    /// A collection's item count. Every item takes at least one byte, so a
    /// count beyond the bytes left is malformed and refused before anything is
    /// allocated for it.
    fn fixed_count(&mut self) -> Result<usize, RowError> {
        let at = self.r.pos;
        let b = self.take(4)?;
        let n = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let n = usize::try_from(n).map_err(|_| RowError::Field {
            field: String::new(),
            why: "collections of unknown size (-1 counts) are not supported".into(),
        })?;
        if n > self.len - self.r.pos {
            return Err(RowError::Truncated(at));
        }
        Ok(n)
    }

    fn value(&mut self, ty: &FieldType) -> Result<Value, RowError> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(RowError::TooLarge);
        }
        let unsupported = |what: &str| RowError::Field {
            field: String::new(),
            why: format!("{what} values are not supported in configuration"),
        };
        match &ty.type_info {
            Some(TypeInfo::AtomicType(t)) => match AtomicType::try_from(*t) {
                Ok(AtomicType::Int64 | AtomicType::Int32 | AtomicType::Int16) => {
                    Ok(Value::Int(self.varint()? as i64))
                }
                Ok(AtomicType::Byte) => Ok(Value::Int(i64::from(self.take(1)?[0] as i8))),
                Ok(AtomicType::Boolean) => Ok(Value::Bool(self.take(1)?[0] != 0)),
                Ok(AtomicType::Double) => {
                    let b = self.take(8)?;
                    Ok(Value::Double(f64::from_be_bytes(
                        b.try_into().unwrap_or([0; 8]),
                    )))
                }
                Ok(AtomicType::String) => {
                    let len = self.varint()? as usize;
                    let at = self.r.pos;
                    let s = std::str::from_utf8(self.take(len)?)
                        .map_err(|_| RowError::Truncated(at))?;
                    Ok(Value::Str(s.to_owned()))
                }
                Ok(AtomicType::Bytes) => {
                    let len = self.varint()? as usize;
                    Ok(Value::Bytes(self.take(len)?.to_vec()))
                }
                _ => Err(unsupported(&format!("atomic type {t}"))),
            },
            Some(TypeInfo::ArrayType(a)) => self.list(a.element_type.as_deref()),
            Some(TypeInfo::IterableType(a)) => self.list(a.element_type.as_deref()),
            Some(TypeInfo::MapType(m)) => {
                let (Some(k), Some(v)) = (&m.key_type, &m.value_type) else {
                    return Err(unsupported("untyped map"));
                };
                let n = self.fixed_count()?;
                let mut entries = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    entries.push((self.nullable(k)?, self.nullable(v)?));
                }
                Ok(Value::Map(entries))
            }
            None => Err(unsupported("row, logical-type or untyped")),
        }
    }

    fn list(&mut self, element: Option<&FieldType>) -> Result<Value, RowError> {
        let element = element.ok_or_else(|| RowError::Field {
            field: String::new(),
            why: "list without an element type".into(),
        })?;
        let n = self.fixed_count()?;
        let mut items = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            items.push(self.nullable(element)?);
        }
        Ok(Value::List(items))
    }

    /// Nested nullable values carry a one-byte presence marker.
    fn nullable(&mut self, ty: &FieldType) -> Result<Value, RowError> {
        if ty.nullable && self.take(1)?[0] == 0 {
            self.values += 1;
            if self.values > MAX_VALUES {
                return Err(RowError::TooLarge);
            }
            return Ok(Value::Null);
        }
        self.value(ty)
    }
}

/// Builds configuration payloads the way SDKs do, for tests across the crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::coders::put_varint;
    use beam_proto::pipeline::{ArrayType, Field, MapType};

    fn atomic(t: AtomicType, nullable: bool) -> FieldType {
        FieldType {
            nullable,
            type_info: Some(TypeInfo::AtomicType(t as i32)),
        }
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }

    /// An `ExternalConfigurationPayload` for `fields`; `Value::Null` fields are
    /// nullable INT64s left null. Strings, integers, booleans, lists of strings
    /// and maps of strings are supported.
    pub(crate) fn payload(fields: &[(&str, Value)]) -> Vec<u8> {
        let mut schema = Schema::default();
        let mut row = Vec::new();
        put_varint(&mut row, fields.len() as u64);
        let mut bitmap = vec![0u8; fields.len().div_ceil(8)];
        let mut values = Vec::new();
        for (i, (name, value)) in fields.iter().enumerate() {
            let str_type = || Box::new(atomic(AtomicType::String, false));
            let ty = match value {
                Value::Null => {
                    bitmap[i / 8] |= 1 << (i % 8);
                    atomic(AtomicType::Int64, true)
                }
                Value::Int(v) => {
                    put_varint(&mut values, *v as u64);
                    atomic(AtomicType::Int64, true)
                }
                Value::Bool(b) => {
                    values.push(u8::from(*b));
                    atomic(AtomicType::Boolean, false)
                }
                Value::Str(s) => {
                    string(&mut values, s);
                    atomic(AtomicType::String, false)
                }
                Value::List(items) => {
                    values.extend_from_slice(&(items.len() as u32).to_be_bytes());
                    for item in items {
                        if let Value::Str(s) = item {
                            string(&mut values, s);
                        }
                    }
                    FieldType {
                        nullable: false,
                        type_info: Some(TypeInfo::ArrayType(Box::new(ArrayType {
                            element_type: Some(str_type()),
                        }))),
                    }
                }
                Value::Map(entries) => {
                    values.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                    for (k, v) in entries {
                        if let (Value::Str(k), Value::Str(v)) = (k, v) {
                            string(&mut values, k);
                            string(&mut values, v);
                        }
                    }
                    FieldType {
                        nullable: false,
                        type_info: Some(TypeInfo::MapType(Box::new(MapType {
                            key_type: Some(str_type()),
                            value_type: Some(str_type()),
                        }))),
                    }
                }
                other => panic!("test encoder does not support {other:?}"),
            };
            schema.fields.push(Field {
                name: name.to_string(),
                r#type: Some(ty),
                ..Default::default()
            });
        }
        put_varint(&mut row, bitmap.len() as u64);
        row.extend_from_slice(&bitmap);
        row.extend_from_slice(&values);
        ExternalConfigurationPayload {
            schema: Some(schema),
            payload: row.into(),
        }
        .encode_to_vec()
    }

    pub(crate) fn str_map(entries: &[(&str, &str)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(k, v)| (Value::Str(k.to_string()), Value::Str(v.to_string())))
                .collect(),
        )
    }

    pub(crate) fn str_list(items: &[&str]) -> Value {
        Value::List(items.iter().map(|s| Value::Str(s.to_string())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beam_proto::pipeline::{ArrayType, Field, MapType};

    fn atomic(t: AtomicType, nullable: bool) -> FieldType {
        FieldType {
            nullable,
            type_info: Some(TypeInfo::AtomicType(t as i32)),
        }
    }

    fn field(name: &str, ty: FieldType) -> Field {
        Field {
            name: name.into(),
            r#type: Some(ty),
            ..Default::default()
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The schema and row apache-beam 2.77's NamedTupleBasedPayloadBuilder wrote for
    /// ({bootstrap.servers: h:1, group.id: g}, [t1, t2], None, 5, True).
    fn python_example() -> (Schema, Vec<u8>) {
        let string = || atomic(AtomicType::String, false);
        let schema = Schema {
            fields: vec![
                field(
                    "consumer_config",
                    FieldType {
                        nullable: false,
                        type_info: Some(TypeInfo::MapType(Box::new(MapType {
                            key_type: Some(Box::new(string())),
                            value_type: Some(Box::new(string())),
                        }))),
                    },
                ),
                field(
                    "topics",
                    FieldType {
                        nullable: false,
                        type_info: Some(TypeInfo::ArrayType(Box::new(ArrayType {
                            element_type: Some(Box::new(string())),
                        }))),
                    },
                ),
                field("max_num_records", atomic(AtomicType::Int64, true)),
                field("max_read_time", atomic(AtomicType::Int64, true)),
                field(
                    "commit_offset_in_finalize",
                    atomic(AtomicType::Boolean, false),
                ),
            ],
            ..Default::default()
        };
        let row = hex(
            "0501040000000211626f6f7473747261702e7365727665727303683a310867726f75702e6964016700\
             0000020274310274320501",
        );
        (schema, row)
    }

    #[test]
    fn reads_the_row_python_builds() {
        let (schema, row) = python_example();
        let c = decode_row(&schema, &row).unwrap();
        let config = c.string_map("consumer_config").unwrap();
        assert_eq!(config["bootstrap.servers"], "h:1");
        assert_eq!(config["group.id"], "g");
        assert_eq!(c.strings("topics").unwrap(), ["t1", "t2"]);
        assert_eq!(c.int("max_num_records").unwrap(), None);
        assert_eq!(c.int("max_read_time").unwrap(), Some(5));
        assert_eq!(c.bool("commit_offset_in_finalize").unwrap(), Some(true));
        assert!(
            c.unknown_fields(&[
                "consumer_config",
                "topics",
                "max_num_records",
                "max_read_time",
                "commit_offset_in_finalize"
            ])
            .is_empty()
        );
        assert_eq!(c.unknown_fields(&["topics"]).len(), 3);
        assert!(matches!(c.string("topics"), Err(RowError::Field { .. })));
    }

    #[test]
    fn test_encoder_matches_python_bytes() {
        let (_, python_row) = python_example();
        let ours = testing::payload(&[
            (
                "consumer_config",
                testing::str_map(&[("bootstrap.servers", "h:1"), ("group.id", "g")]),
            ),
            ("topics", testing::str_list(&["t1", "t2"])),
            ("max_num_records", Value::Null),
            ("max_read_time", Value::Int(5)),
            ("commit_offset_in_finalize", Value::Bool(true)),
        ]);
        let decoded = ExternalConfigurationPayload::decode(&ours[..]).unwrap();
        assert_eq!(decoded.payload.as_ref(), python_row.as_slice());
    }

    #[test]
    fn truncated_rows_are_errors() {
        let (schema, row) = python_example();
        for cut in 0..row.len() {
            assert!(decode_row(&schema, &row[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn payload_wrapper_round_trip() {
        let (schema, row) = python_example();
        let payload = ExternalConfigurationPayload {
            schema: Some(schema),
            payload: row.into(),
        }
        .encode_to_vec();
        let c = Config::from_payload(&payload).unwrap();
        assert_eq!(c.strings("topics").unwrap(), ["t1", "t2"]);
        assert!(Config::from_payload(&[0xff]).is_err());
    }

    /// Issue 12, defect 6: millions of one-byte entries must not decode to
    /// gigabytes of values.
    #[test]
    fn huge_lists_of_tiny_entries_are_refused() {
        let items = vec![""; MAX_VALUES + 1];
        let payload = testing::payload(&[("topics", testing::str_list(&items))]);
        let err = Config::from_payload(&payload).unwrap_err();
        assert_eq!(err, RowError::TooLarge);
        let fine = vec!["t"; 1000];
        let payload = testing::payload(&[("topics", testing::str_list(&fine))]);
        assert_eq!(
            Config::from_payload(&payload)
                .unwrap()
                .strings("topics")
                .unwrap()
                .len(),
            1000
        );
    }

    #[test]
    fn counts_beyond_the_bytes_left_are_refused_up_front() {
        let mut payload = testing::payload(&[("topics", testing::str_list(&["a"]))]);
        // Patch the list count (the only 0x00000001 run) to 2^31-1 items.
        let at = payload
            .windows(4)
            .position(|w| w == [0, 0, 0, 1])
            .expect("count present");
        payload[at..at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(Config::from_payload(&payload).is_err());
    }
}
