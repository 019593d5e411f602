//! libFuzzer glue for patgate's fuzz targets (`src/targets.rs`).
//!
//! This crate is the only place with `unsafe` in the repository: libFuzzer hands each
//! input over as a pointer and a length.

pub mod pipeline;
pub mod targets;

/// Runs `target` on libFuzzer's input. Always returns 0 (a panic aborts: a finding).
pub fn run(data: *const u8, size: usize, target: fn(&[u8])) -> i32 {
    let input: &[u8] = if data.is_null() || size == 0 {
        &[]
    } else {
        // SAFETY: libFuzzer passes a valid, initialised buffer of `size` bytes that
        // lives for the duration of this call.
        unsafe { std::slice::from_raw_parts(data, size) }
    };
    target(input);
    0
}
