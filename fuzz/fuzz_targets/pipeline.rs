//! libFuzzer target `pipeline` (see `src/pipeline.rs`).
#![no_main]

fn target(data: &[u8]) {
    patgate_fuzz::pipeline::pipeline(data);
}

#[unsafe(no_mangle)]
pub extern "C" fn LLVMFuzzerTestOneInput(data: *const u8, size: usize) -> i32 {
    patgate_fuzz::run(data, size, target)
}
