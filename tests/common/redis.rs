//! A throwaway `redis-server` per test: ephemeral port, own temp dir, no persistence,
//! killed on drop. `stop()` / `restart()` simulate an outage on the same port.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) `redis-server` child process.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Started with `--cluster-enabled yes` (a one-node cluster owning every slot).
    cluster: bool,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a one-node Redis Cluster (every slot on this node) and waits until the
    /// cluster state is `ok`. Cross-slot commands fail on it exactly as on a real
    /// cluster, so it checks that a key layout is cluster-safe.
    pub fn start_cluster() -> Self {
        Self::start_with(true)
    }

    fn start_with(cluster: bool) -> Self {
        let mut last_err = String::new();
        for _ in 0..10 {
            let dir = tempfile::tempdir().expect("temp dir for redis-server");
            let port = free_port();
            match spawn(port, dir.path(), cluster) {
                Ok(child) => {
                    let mut server = RedisServer {
                        port,
                        dir,
                        child: Some(child),
                        cluster,
                    };
                    if server.wait_ready(Duration::from_secs(5)) {
                        return server;
                    }
                    // Port raced away or slow start: drop (kills it) and try another.
                    last_err = format!("redis-server on port {port} did not answer PING");
                }
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port (kept across `stop`/`restart`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `redis-cli -p <port> <args>` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: connections stay open but get
    /// no answer — the "Redis hangs" failure, unlike `stop`'s refused connections.
    pub fn freeze(&self, frozen: bool) {
        if let Some(c) = &self.child {
            let sig = if frozen { "-STOP" } else { "-CONT" };
            let _ = std::process::Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// Kills the server and waits for it to exit; the port is kept for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty data) and waits for PING.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match spawn(self.port, self.dir.path(), self.cluster) {
                Ok(child) => {
                    self.child = Some(child);
                    if self.wait_ready(Duration::from_secs(3)) {
                        return;
                    }
                    self.stop();
                }
                Err(e) => eprintln!("restart redis-server: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                return false; // exited (e.g. port taken)
            }
            if ping(self.port) {
                return !self.cluster || self.init_cluster(deadline);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl RedisServer {
    /// Assigns every slot to this node (kept in `nodes.conf` across restarts) and
    /// waits for `cluster_state:ok`.
    fn init_cluster(&self, deadline: Instant) -> bool {
        let _ = command(self.port, &["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
        while Instant::now() < deadline {
            if command(self.port, &["CLUSTER", "INFO"])
                .is_some_and(|info| info.contains("cluster_state:ok"))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn spawn(port: u16, dir: &std::path::Path, cluster: bool) -> Result<Child, String> {
    let mut cmd = Command::new("redis-server");
    if cluster {
        cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(dir.join("nodes.conf"));
    }
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .arg("--dir")
    .arg(dir)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            panic!("redis-server not found on PATH: run `apt-get install -y redis-server`")
        }
        format!("spawn redis-server: {e}")
    })
}

/// Raw RESP PING, so the helper does not depend on the client under test.
fn ping(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// Sends one command over raw RESP and returns the reply's bytes as text.
fn command(port: u16, args: &[&str]) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}
