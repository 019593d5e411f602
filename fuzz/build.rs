//! Links libFuzzer (Debian `libfuzzer-14-dev`, or `LIBFUZZER` = path to libFuzzer.a):
//! it provides `main` and drives `LLVMFuzzerTestOneInput`.
fn main() {
    let lib = std::env::var("LIBFUZZER")
        .unwrap_or_else(|_| "/usr/lib/llvm-14/lib/libFuzzer.a".to_string());
    println!("cargo:rerun-if-env-changed=LIBFUZZER");
    println!("cargo:rustc-link-arg-bins={lib}");
    println!("cargo:rustc-link-arg-bins=-lstdc++");
}
