//! Replays every committed fuzz input (`fuzz/corpus/<target>/` seeds and
//! `fuzz/regressions/<target>/` crashes found and fixed) through the same
//! harness functions libFuzzer runs, on stable Rust, so CI catches a
//! regression without nightly or cargo-fuzz.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use beam_rust_worker::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Folder names under `dir`, sorted.
fn folders(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

#[test]
fn every_committed_fuzz_input_runs_through_its_harness() {
    let root = fuzz_dir();
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, harness) in TARGETS {
        let seeds = files(&root.join("corpus").join(target));
        // An empty corpus would make this test pass having checked nothing.
        assert!(
            !seeds.is_empty(),
            "no seed inputs in {}: the corpus is committed with the repository \
             (regenerate it with `cargo test --release -p beam-integration --test fuzz_seeds \
             -- --ignored`)",
            root.join("corpus").join(target).display()
        );
        let regressions = files(&root.join("regressions").join(target));
        for path in seeds.iter().chain(&regressions) {
            let data = std::fs::read(path).expect("a readable fuzz input");
            if catch_unwind(AssertUnwindSafe(|| harness(&data))).is_err() {
                failures.push(path.display().to_string());
            }
            replayed += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} fuzz inputs panicked (the panics are printed above): {failures:#?}",
        failures.len()
    );
}

/// Inputs filed under a name that is not a target would never be replayed.
#[test]
fn every_fuzz_input_folder_names_a_target() {
    let root = fuzz_dir();
    let known: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    for kind in ["corpus", "regressions"] {
        for folder in folders(&root.join(kind)) {
            assert!(
                known.contains(&folder.as_str()),
                "fuzz/{kind}/{folder} is not a target of beam_rust_worker::fuzzing::TARGETS \
                 ({known:?}); its inputs would not be replayed"
            );
        }
    }
    let targets = folders(&root.join("corpus"));
    assert_eq!(
        targets.len(),
        known.len(),
        "fuzz/corpus must hold one folder per target: {targets:?} vs {known:?}"
    );
}

/// The fuzz crate's targets are the harness's: a target added to one and not
/// the other would go unfuzzed or unreplayed.
#[test]
fn the_fuzz_crate_has_one_target_per_harness() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml"))
        .expect("fuzz/Cargo.toml is in the repository");
    for (target, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml has no [[bin]] {target}"
        );
        let source =
            std::fs::read_to_string(fuzz_dir().join("fuzz_targets").join(format!("{target}.rs")))
                .expect("the target's source file");
        assert!(
            source.contains(&format!("fuzzing::{target}(")),
            "fuzz_targets/{target}.rs does not call fuzzing::{target}"
        );
    }
}
