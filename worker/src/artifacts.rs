//! Staging a delegated Python worker's artifacts, as Beam's container boot
//! does before it starts `sdk_worker_main`: every dependency the runner lists
//! in its provision info is fetched from the runner's artifact retrieval
//! service into `<dir>/staged/<staged name>`, and the worker is told `<dir>`
//! as its `SEMI_PERSISTENT_DIRECTORY`.
//!
//! That is how a pipeline's pickled main session (`save_main_session=True`,
//! which the seed's pipeline sets so its lambdas can call `worker.…`) reaches
//! the worker; without it, names the pipeline's `__main__` imported are
//! undefined in the worker.
//!
//! Unlike boot, nothing is installed: packages the pipeline staged
//! (requirements, extra packages, an sdist of the pipeline) are placed but not
//! pip-installed, because the Python the operator named is the environment.
//! Each such file is logged, naming what to install instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use beam_proto::job_management::GetArtifactRequest;
use beam_proto::job_management::artifact_retrieval_service_client::ArtifactRetrievalServiceClient;
use beam_proto::pipeline::{ArtifactInformation, ArtifactStagingToRolePayload};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::grpc::{WorkerChannel, worker_channel};

/// Role of an artifact the SDK expects under a file name of its own.
pub const STAGING_TO_ROLE: &str = "beam:artifact:role:staging_to:v1";
/// Role of a requirements file boot would `pip install -r`.
pub const PIP_REQUIREMENTS_ROLE: &str = "beam:artifact:role:pip_requirements_file:v1";

/// The folder inside the semi-persistent directory `sdk_worker_main` reads
/// (`<dir>/staged/pickled_main_session`).
pub const STAGED_DIR: &str = "staged";

/// Everything a runner lists for one worker must arrive within this; a runner
/// waits for `StartWorker`, and a stuck retrieval must not hold it forever.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes staged for one worker at most: the runner's files go to disk, not
/// memory, but a runner must not be able to fill the disk either.
pub const MAX_STAGED_BYTES: u64 = 4 << 30;
/// Largest single response chunk accepted (runners send about 1-2 MB).
const MAX_CHUNK_BYTES: usize = 64 << 20;

/// File names (or suffixes) of what the pipeline staged for boot to install.
const PACKAGE_NAMES: &[&str] = &[
    "requirements.txt",
    "extra_packages.txt",
    "workflow.tar.gz",
    "dataflow_python_sdk.tar",
];
const PACKAGE_SUFFIXES: &[&str] = &[".whl", ".tar.gz", ".zip", ".tar"];

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(
        "dependency {index} (type {type_urn}) has role {role:?}, not {STAGING_TO_ROLE}: \
         the worker would not know its file name"
    )]
    NoStagedName {
        index: usize,
        type_urn: String,
        role: String,
    },
    #[error("dependency {index} has an undecodable staging role payload: {why}")]
    BadRolePayload { index: usize, why: String },
    #[error("staged name {0:?} is not a plain file name")]
    BadName(String),
    #[error("two dependencies are both staged as {0:?}")]
    Duplicate(String),
    #[error("cannot reach the runner's artifact service at {url}: {why}")]
    Connect { url: String, why: String },
    #[error("fetching {name:?} from the runner's artifact service failed: {why}")]
    Fetch { name: String, why: String },
    #[error("the staged artifacts exceed {MAX_STAGED_BYTES} bytes (at {name:?})")]
    TooLarge { name: String },
    #[error("writing {path}: {why}")]
    Write { path: String, why: String },
    #[error(
        "the runner's artifact service did not deliver the worker's {count} dependencies \
         within {} s",
        FETCH_TIMEOUT.as_secs()
    )]
    Timeout { count: usize },
}

/// What was staged for one worker.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Staged {
    /// Staged names, in the runner's order.
    pub names: Vec<String>,
    pub bytes: u64,
}

/// The file name `dependency` is to be staged under.
pub fn staged_name(
    index: usize,
    dependency: &ArtifactInformation,
) -> Result<String, ArtifactError> {
    if dependency.role_urn != STAGING_TO_ROLE && dependency.role_urn != PIP_REQUIREMENTS_ROLE {
        return Err(ArtifactError::NoStagedName {
            index,
            type_urn: dependency.type_urn.clone(),
            role: dependency.role_urn.clone(),
        });
    }
    let name = if dependency.role_urn == PIP_REQUIREMENTS_ROLE {
        "requirements.txt".to_owned()
    } else {
        ArtifactStagingToRolePayload::decode(dependency.role_payload.clone())
            .map_err(|e| ArtifactError::BadRolePayload {
                index,
                why: e.to_string(),
            })?
            .staged_name
    };
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255;
    if plain {
        Ok(name)
    } else {
        Err(ArtifactError::BadName(name))
    }
}

/// Whether Beam's boot would pip-install a file staged under `name`.
pub fn is_package(name: &str) -> bool {
    PACKAGE_NAMES.contains(&name) || PACKAGE_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Fetches every dependency from the artifact service at `url` into
/// `dir/staged/`. `dir` is created; on error, what was written stays for the
/// caller to remove with the folder.
pub async fn stage(
    url: &str,
    worker_id: &str,
    dependencies: &[ArtifactInformation],
    dir: &Path,
) -> Result<Staged, ArtifactError> {
    let names = dependencies
        .iter()
        .enumerate()
        .map(|(i, d)| staged_name(i, d))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(dup) = first_duplicate(&names) {
        return Err(ArtifactError::Duplicate(dup.to_owned()));
    }
    let staged_dir = dir.join(STAGED_DIR);
    tokio::fs::create_dir_all(&staged_dir)
        .await
        .map_err(|e| write_error(&staged_dir, e))?;
    let count = dependencies.len();
    let fetch_all = async {
        let channel = worker_channel(url, worker_id).map_err(|e| ArtifactError::Connect {
            url: url.to_owned(),
            why: e.to_string(),
        })?;
        let mut client =
            ArtifactRetrievalServiceClient::new(channel).max_decoding_message_size(MAX_CHUNK_BYTES);
        let mut staged = Staged::default();
        for (dependency, name) in dependencies.iter().zip(&names) {
            let path = staged_dir.join(name);
            let budget = MAX_STAGED_BYTES - staged.bytes;
            staged.bytes += fetch_one(&mut client, dependency, name, &path, budget).await?;
            staged.names.push(name.clone());
        }
        Ok(staged)
    };
    let staged = tokio::time::timeout(FETCH_TIMEOUT, fetch_all)
        .await
        .map_err(|_| ArtifactError::Timeout { count })??;
    report(worker_id, &staged);
    Ok(staged)
}

/// Streams one artifact into `path`; returns its size. At most `budget`
/// bytes are accepted.
async fn fetch_one(
    client: &mut ArtifactRetrievalServiceClient<WorkerChannel>,
    dependency: &ArtifactInformation,
    name: &str,
    path: &Path,
    budget: u64,
) -> Result<u64, ArtifactError> {
    let fetch_error = |why: String| ArtifactError::Fetch {
        name: name.to_owned(),
        why,
    };
    let mut stream = client
        .get_artifact(GetArtifactRequest {
            artifact: Some(dependency.clone()),
        })
        .await
        .map_err(|s| fetch_error(s.message().to_owned()))?
        .into_inner();
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| write_error(path, e))?;
    let mut written = 0u64;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| fetch_error(s.message().to_owned()))?
    {
        written += chunk.data.len() as u64;
        if written > budget {
            return Err(ArtifactError::TooLarge {
                name: name.to_owned(),
            });
        }
        file.write_all(&chunk.data)
            .await
            .map_err(|e| write_error(path, e))?;
    }
    file.flush().await.map_err(|e| write_error(path, e))?;
    debug!(name, bytes = written, "artifact staged");
    Ok(written)
}

fn report(worker_id: &str, staged: &Staged) {
    info!(
        worker_id,
        artifacts = staged.names.len(),
        bytes = staged.bytes,
        "staged the pipeline's artifacts for the Python SDK worker"
    );
    for name in staged.names.iter().filter(|n| is_package(n)) {
        warn!(
            worker_id,
            artifact = %name,
            "the pipeline staged a package that Beam's boot would pip-install; this pool \
             installs nothing per worker: install what it provides into the --python environment"
        );
    }
}

fn first_duplicate(names: &[String]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    names
        .iter()
        .find(|n| !seen.insert(n.as_str()))
        .map(String::as_str)
}

fn write_error(path: &Path, e: std::io::Error) -> ArtifactError {
    ArtifactError::Write {
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

/// The folder under which the pool stages each delegated worker's files: one
/// per pool process, so two pools on a host never share one.
pub fn default_root() -> PathBuf {
    std::env::temp_dir().join(format!("beam-rust-worker-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staging(name: &str) -> ArtifactInformation {
        ArtifactInformation {
            type_urn: "beam:artifact:type:file:v1".into(),
            type_payload: Default::default(),
            role_urn: STAGING_TO_ROLE.into(),
            role_payload: ArtifactStagingToRolePayload {
                staged_name: name.into(),
            }
            .encode_to_vec()
            .into(),
        }
    }

    #[test]
    fn staged_names_come_from_the_role_payload() {
        assert_eq!(
            staged_name(0, &staging("pickled_main_session")).unwrap(),
            "pickled_main_session"
        );
        let requirements = ArtifactInformation {
            role_urn: PIP_REQUIREMENTS_ROLE.into(),
            ..Default::default()
        };
        assert_eq!(staged_name(0, &requirements).unwrap(), "requirements.txt");
    }

    #[test]
    fn names_that_could_escape_the_folder_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "nul\0"] {
            assert!(
                matches!(
                    staged_name(3, &staging(bad)),
                    Err(ArtifactError::BadName(_))
                ),
                "{bad:?} was accepted"
            );
        }
        let long = "x".repeat(256);
        assert!(staged_name(0, &staging(&long)).is_err());
    }

    #[test]
    fn unknown_roles_are_named_in_the_error() {
        let other = ArtifactInformation {
            type_urn: "beam:artifact:type:url:v1".into(),
            role_urn: "beam:artifact:role:go_worker_binary:v1".into(),
            ..Default::default()
        };
        let e = staged_name(2, &other).unwrap_err().to_string();
        assert!(
            e.contains("dependency 2") && e.contains("go_worker_binary"),
            "{e}"
        );
    }

    #[test]
    fn packages_are_told_apart_from_plain_files() {
        assert!(is_package("requirements.txt"));
        assert!(is_package("mylib-1.0-py3-none-any.whl"));
        assert!(is_package("workflow.tar.gz"));
        assert!(!is_package("pickled_main_session"));
        assert!(!is_package("submission_environment_dependencies.txt"));
    }

    #[test]
    fn duplicates_are_found() {
        let names = vec!["a".to_owned(), "b".to_owned(), "a".to_owned()];
        assert_eq!(first_duplicate(&names), Some("a"));
        assert_eq!(first_duplicate(&names[..2]), None);
    }
}
