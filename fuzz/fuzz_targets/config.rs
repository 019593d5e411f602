//! libFuzzer target `config` (see `src/targets.rs`).
#![no_main]

#[unsafe(no_mangle)]
pub extern "C" fn LLVMFuzzerTestOneInput(data: *const u8, size: usize) -> i32 {
    patgate_fuzz::run(data, size, patgate_fuzz::targets::config)
}
