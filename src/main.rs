//! The `patgate` binary: everything lives in the library; see `patgate::cli`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    patgate::cli::run()
}
