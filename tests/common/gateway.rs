//! The real `patgate` binary as a child process, for integration tests.
//!
//! The config is written to the process's own temp dir with both listeners on port
//! 0; the bound addresses are read from the JSON `listening` log line. Every line the
//! process logs is kept (tests scan them for secrets). Killed on drop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running gateway process.
pub struct GatewayProcess {
    child: Child,
    /// Data-plane base URL.
    pub url: String,
    /// Admin base URL.
    pub admin_url: String,
    /// Everything it printed so far.
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Its config file.
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// The admin key every test gateway accepts.
pub const ADMIN_KEY: &str = "pgadm_test-admin-key-for-integration-tests";

/// SHA-256 hex of [`ADMIN_KEY`].
pub fn admin_key_sha256() -> String {
    patgate::token::TokenHash::of(ADMIN_KEY).to_hex()
}

/// Path of the built binary.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_patgate")
}

impl GatewayProcess {
    /// Starts `patgate serve` with `yaml` (which must not set `listen`, `admin` or
    /// `logging`: they are added here).
    pub fn start(yaml: &str) -> GatewayProcess {
        Self::start_with_admin(yaml, "")
    }

    /// [`Self::start`] with more keys for the `admin` section in `admin` (each line
    /// indented by two spaces, e.g. `"  tls: {cert: a, key: b}\n"`). With `admin.tls`
    /// the admin URL is still given as `http://`; callers switch the scheme.
    pub fn start_with_admin(yaml: &str, admin: &str) -> GatewayProcess {
        Self::start_with(yaml, admin, &[])
    }

    /// [`Self::start_with_admin`] with extra environment variables for the process.
    pub fn start_with(yaml: &str, admin: &str, env: &[(&str, &str)]) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("patgate.yaml");
        let full = format!(
            "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n  api_keys:\n    - name: test\n      sha256: \"{}\"\n{}logging:\n  format: json\n  level: info\n{}",
            admin_key_sha256(),
            admin,
            yaml
        );
        std::fs::write(&config_path, full).expect("write config");
        let mut child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn patgate");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(String, String)>();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.contains("\"listening\"")
                        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    {
                        let d = v["data.addr"].as_str().unwrap_or_default().to_string();
                        let a = v["admin.addr"].as_str().unwrap_or_default().to_string();
                        let _ = tx.send((d, a));
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let (data, admin) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(x) => x,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "patgate did not start:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        GatewayProcess {
            child,
            url: format!("http://{data}"),
            admin_url: format!("http://{admin}"),
            logs,
            config_path,
            _dir: dir,
        }
    }

    /// Sends SIGTERM and waits for exit (up to `timeout`); returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Copy of the logs so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::common::secrets::check_logs(&self.log_lines());
    }
}
