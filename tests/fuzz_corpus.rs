//! Replays every saved fuzz input (`fuzz/corpus/<target>/`, seeds plus what libFuzzer
//! found interesting) through the same target bodies the fuzzer runs
//! (`fuzz/src/targets.rs`), without the fuzzer: a regression test of everything the
//! fuzzing found. Run the fuzzer itself with `fuzz/run <target>`.

#[path = "../fuzz/src/targets.rs"]
mod targets;

#[test]
fn every_saved_fuzz_input_replays_without_a_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in targets::TARGETS {
        let dir = root.join(name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panics", path.display());
            n += 1;
        }
        assert!(n > 0, "{name}: empty corpus");
    }
}

#[path = "../fuzz/src/pipeline.rs"]
mod pipeline;

/// The `pipeline` target's corpus (raw client connections; see
/// `fuzz/src/pipeline.rs`), replayed through the real gateway over in-memory IO.
#[test]
fn every_saved_pipeline_input_replays_with_its_properties() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/pipeline");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| pipeline::pipeline(&data));
        assert!(outcome.is_ok(), "pipeline: {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "pipeline: empty corpus");
    // The seeds reach what they should, so the properties above are exercised.
    let seed = |name: &str| {
        let data = std::fs::read(dir.join(name)).unwrap();
        pipeline::pipeline(&data)
    };
    assert_eq!(
        seed("seed-valid"),
        1,
        "an authenticated request reaches the upstream"
    );
    assert_eq!(seed("seed-unknown"), 0);
    assert_eq!(
        seed("seed-spoof-public"),
        1,
        "auth: none, spoofed identity stripped"
    );
    assert_eq!(
        seed("seed-pipelined-unauth"),
        1,
        "only the authenticated one of two"
    );
    assert_eq!(
        seed("seed-dotdot"),
        0,
        "`/public/../api/` is the authenticated route"
    );
}
