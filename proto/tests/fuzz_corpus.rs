//! Replays the committed fuzz corpora (`fuzz/corpus/`, `fuzz/seeds/`) and any crash inputs kept
//! as regressions (`fuzz/regressions/`) through the same entry points the fuzz targets call, so
//! CI checks every input the fuzzers found interesting without a fuzzing toolchain.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("readable directory entry").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        files.len() >= 10,
        "the {target} corpus is missing: found {} files under fuzz/",
        files.len()
    );
    for path in &files {
        let data = match std::fs::read(path) {
            Ok(data) => data,
            // A fuzzer running beside the tests deletes inputs it has reduced.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("reading {}: {e}", path.display()),
        };
        // A panic names the input, so a failure here reproduces with `cargo fuzz run TARGET FILE`.
        eprintln!("replaying {}", path.display());
        run(&data);
    }
}

#[test]
fn decoder_corpus_replays_clean() {
    replay("decoder", proto::fuzz::decoder);
}

#[test]
fn bodies_corpus_replays_clean() {
    replay("bodies", proto::fuzz::bodies);
}
