//! `patgate dev` as a child process: started on port 0, its banner parsed for the
//! token, admin key and addresses it prints. Killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::gateway::binary;
use super::secrets;

/// A running `patgate dev`.
pub struct DevProcess {
    child: Child,
    banner: Vec<String>,
}

impl DevProcess {
    /// Starts `patgate dev`; `no_path` empties `PATH` so no `redis-server` is reachable.
    pub fn start(no_path: bool) -> DevProcess {
        let mut cmd = Command::new(binary());
        cmd.args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if no_path {
            cmd.env("PATH", "/nonexistent");
        }
        let mut child = cmd.spawn().expect("spawn patgate dev");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let done = line.contains("Ctrl-C");
                lines.push(line);
                if done {
                    let _ = tx.send(lines.clone());
                }
            }
        });
        let banner = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("dev banner");
        let dev = DevProcess { child, banner };
        secrets::register(&dev.word_after("export PAT="));
        secrets::register(&dev.word_after("export PATGATE_ADMIN_KEY="));
        dev
    }

    /// The first word after `marker` in the banner.
    pub fn word_after(&self, marker: &str) -> String {
        self.banner
            .iter()
            .find_map(|l| {
                l.split_once(marker)
                    .map(|(_, r)| r.split_whitespace().next().unwrap_or("").to_string())
            })
            .unwrap_or_else(|| panic!("no {marker} in {:?}", self.banner))
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
