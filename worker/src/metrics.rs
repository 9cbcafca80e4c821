//! Monitoring infos reported in `ProcessBundleResponse.monitoring_infos`, the
//! full-info field Flink forwards to its metric system.

use std::collections::HashMap;

use beam_proto::pipeline::MonitoringInfo;

use crate::coders::varint_i64;

pub const ELEMENT_COUNT_URN: &str = "beam:metric:element_count:v1";
pub const READ_INDEX_URN: &str = "beam:metric:data_channel:read_index:v1";
pub const SUM_INT64_TYPE: &str = "beam:metrics:sum_int64:v1";

/// Elements that entered `pcollection` during the bundle.
pub fn element_count(pcollection: &str, count: u64) -> MonitoringInfo {
    sum_int64(ELEMENT_COUNT_URN, "PCOLLECTION", pcollection, count as i64)
}

/// Index of the last element the source delivered: `count - 1`, or -1 for none.
pub fn read_index(source_transform: &str, count: u64) -> MonitoringInfo {
    sum_int64(
        READ_INDEX_URN,
        "PTRANSFORM",
        source_transform,
        count as i64 - 1,
    )
}

fn sum_int64(urn: &str, label: &str, id: &str, value: i64) -> MonitoringInfo {
    MonitoringInfo {
        urn: urn.to_owned(),
        r#type: SUM_INT64_TYPE.to_owned(),
        payload: varint_i64(value).into(),
        labels: HashMap::from([(label.to_owned(), id.to_owned())]),
        start_time: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_beam_varints() {
        assert_eq!(element_count("pc", 300).payload.as_ref(), [0xac, 0x02]);
        assert_eq!(read_index("t", 1).payload.as_ref(), [0x00]);
        assert_eq!(read_index("t", 0).payload.len(), 10, "-1 is ten bytes");
        assert_eq!(read_index("t", 0).labels["PTRANSFORM"], "t");
    }
}
