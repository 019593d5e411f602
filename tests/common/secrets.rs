//! Every raw token a test sees is registered here; every gateway's logs are scanned
//! for them when the gateway is dropped. A full token in a log fails the test.

use std::sync::Mutex;

static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remembers a raw token (or admin key) that must never be logged.
pub fn register(secret: &str) {
    SEEN.lock().unwrap().push(secret.to_string());
}

/// Panics if any line holds a registered secret (unless already panicking).
pub fn check_logs(lines: &[String]) {
    if std::thread::panicking() {
        return;
    }
    let seen = SEEN.lock().unwrap().clone();
    for line in lines {
        for s in &seen {
            assert!(
                !line.contains(s.as_str()),
                "a full token/admin key appeared in the gateway's logs: {line}"
            );
        }
    }
}
