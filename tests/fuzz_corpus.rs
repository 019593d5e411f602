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
