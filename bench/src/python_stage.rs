//! The stage for Beam's Python worker: a `ProcessBundleDescriptor` written by
//! `bench/python/make_python_stage.py` (a real pickled `Map(identity)` made by
//! the installed apache-beam), with its data ports pointed at our runner.

use std::path::Path;

use beam_integration::urns;
use beam_proto::fn_execution::{ProcessBundleDescriptor, RemoteGrpcPort};
use beam_proto::pipeline::ApiServiceDescriptor;
use prost::Message;

/// A descriptor file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a serialized ProcessBundleDescriptor: {source}")]
    Decode {
        path: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{path}: expected exactly one {urn} transform, found {found}")]
    Ports {
        path: String,
        urn: &'static str,
        found: usize,
    },
    #[error("{path}: transform '{id}' has a malformed RemoteGrpcPort: {source}")]
    Port {
        path: String,
        id: String,
        #[source]
        source: prost::DecodeError,
    },
}

/// A loaded stage: the descriptor and its port transform ids.
#[derive(Debug, Clone)]
pub struct Stage {
    pub descriptor: ProcessBundleDescriptor,
    pub source_id: String,
    pub sink_id: String,
}

/// Loads `path`, renames the descriptor `id`, and points both data ports at `data_url`.
pub fn load(path: &Path, id: &str, data_url: &str) -> Result<Stage, StageError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| StageError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut descriptor =
        ProcessBundleDescriptor::decode(bytes.as_slice()).map_err(|source| StageError::Decode {
            path: shown.clone(),
            source,
        })?;
    descriptor.id = id.to_owned();
    let ids = |urn: &'static str| -> Result<String, StageError> {
        let found: Vec<&String> = descriptor
            .transforms
            .iter()
            .filter(|(_, t)| t.spec.as_ref().is_some_and(|s| s.urn == urn))
            .map(|(id, _)| id)
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(StageError::Ports {
                path: shown.clone(),
                urn,
                found: found.len(),
            }),
        }
    };
    let source_id = ids(urns::SOURCE)?;
    let sink_id = ids(urns::SINK)?;
    for id in [&source_id, &sink_id] {
        let spec = descriptor
            .transforms
            .get_mut(id)
            .and_then(|t| t.spec.as_mut())
            .expect("found above");
        let mut port =
            RemoteGrpcPort::decode(spec.payload.clone()).map_err(|source| StageError::Port {
                path: shown.clone(),
                id: id.clone(),
                source,
            })?;
        port.api_service_descriptor = Some(ApiServiceDescriptor {
            url: data_url.to_owned(),
            authentication: None,
        });
        spec.payload = port.encode_to_vec().into();
    }
    Ok(Stage {
        descriptor,
        source_id,
        sink_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use beam_integration::{PortCoder, echo_descriptor};

    #[test]
    fn ports_are_repointed() {
        let echo = echo_descriptor("x", "placeholder:0", PortCoder::kv_bytes());
        let dir = std::env::temp_dir().join(format!("bench-stage-{}", std::process::id()));
        std::fs::write(&dir, echo.descriptor.encode_to_vec()).unwrap();
        let stage = load(&dir, "renamed", "127.0.0.1:9").unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(stage.descriptor.id, "renamed");
        assert_eq!(stage.source_id, echo.source_id);
        assert_eq!(stage.sink_id, echo.sink_id);
        for id in [&stage.source_id, &stage.sink_id] {
            let spec = stage.descriptor.transforms[id].spec.clone().unwrap();
            let port = RemoteGrpcPort::decode(spec.payload).unwrap();
            assert_eq!(port.api_service_descriptor.unwrap().url, "127.0.0.1:9");
        }
    }

    #[test]
    fn garbage_is_refused() {
        let path = std::env::temp_dir().join(format!("bench-garbage-{}", std::process::id()));
        std::fs::write(&path, b"\xff\xff\xff").unwrap();
        let err = load(&path, "x", "h:1").unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, StageError::Decode { .. }), "{err}");
    }
}
