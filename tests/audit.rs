//! `scripts/audit`, the offline dependency audit: its built-in checker's self-test,
//! and the checker run on a tiny fake advisory database and `Cargo.lock`.

use std::path::Path;
use std::process::{Command, Output};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.current_dir(repo())
        .output()
        .expect("run the audit script")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_checker_passes_its_self_test() {
    let o = run(Command::new("scripts/audit").arg("--self-test"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("self-test:"), "{}", text(&o));
}

/// A one-advisory database: `demo` is fixed in `^1.4.2` and `>= 2.1.0`.
fn fake_db(dir: &Path, extra: &str) {
    let crate_dir = dir.join("db/crates/demo");
    std::fs::create_dir_all(&crate_dir).unwrap();
    std::fs::write(
        crate_dir.join("RUSTSEC-2099-0001.md"),
        format!(
            "```toml\n[advisory]\nid = \"RUSTSEC-2099-0001\"\npackage = \"demo\"\ndate = \"2099-01-01\"\n{extra}\n\n[versions]\npatched = [\"^1.4.2\", \">= 2.1.0\"]\nunaffected = [\"< 1.0.0\"]\n```\n\n# Demo is broken\n"
        ),
    )
    .unwrap();
}

fn check_lock(dir: &Path, version: &str) -> Output {
    let lock = dir.join("Cargo.lock");
    std::fs::write(
        &lock,
        format!(
            "version = 4\n\n[[package]]\nname = \"demo\"\nversion = \"{version}\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n"
        ),
    )
    .unwrap();
    run(Command::new("python3")
        .arg("scripts/audit.py")
        .arg("--db")
        .arg(dir.join("db"))
        .arg("--lock")
        .arg(&lock)
        .arg("--ignore-file")
        .arg(dir.join("no-ignores")))
}

#[test]
fn a_vulnerable_lock_fails_and_a_patched_one_passes() {
    let dir = tempfile::tempdir().unwrap();
    fake_db(dir.path(), "");
    let o = check_lock(dir.path(), "1.4.1");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("error: RUSTSEC-2099-0001 demo 1.4.1"));
    for fixed in ["1.4.2", "1.9.9", "2.1.0", "0.9.0"] {
        let o = check_lock(dir.path(), fixed);
        assert_eq!(o.status.code(), Some(0), "{fixed}: {}", text(&o));
    }
    let o = check_lock(dir.path(), "2.0.0");
    assert_eq!(o.status.code(), Some(1), "between the patched ranges");
}

#[test]
fn unmaintained_is_a_warning_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    fake_db(dir.path(), "informational = \"unmaintained\"");
    let o = check_lock(dir.path(), "1.4.1");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("warning (unmaintained)"), "{}", text(&o));
}

#[test]
fn without_a_database_the_audit_is_skipped_with_a_message() {
    let o =
        run(Command::new("scripts/audit").env("PATGATE_ADVISORY_DB", "/nonexistent/advisory-db"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("audit: skipped"), "{}", text(&o));
}
