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
    /// Started with `--cluster-enabled yes`.
    cluster: bool,
    /// A one-node cluster: every slot is assigned to this node once it answers.
    own_all_slots: bool,
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
        Self::start_with_opts(cluster, cluster)
    }

    /// `cluster`: `--cluster-enabled yes`; `own_all_slots`: assign every slot to this
    /// node (a one-node cluster) — off for nodes that join a multi-node cluster.
    fn start_with_opts(cluster: bool, own_all_slots: bool) -> Self {
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
                        own_all_slots,
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
                return !self.own_all_slots || self.init_cluster(deadline);
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

/// A Redis Cluster of `n` masters (no replicas), each its own `redis-server` with
/// `--cluster-enabled yes`, joined by `redis-cli --cluster create`. Killed on drop.
pub struct RedisCluster {
    /// The nodes, in slot order (node 0 owns the first third, …).
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (≥ 3) empty cluster nodes, creates the cluster and waits until every
    /// node reports `cluster_state:ok`. Blocking: call it before an in-process
    /// upstream starts, or on `spawn_blocking`.
    pub fn start(n: usize) -> Self {
        assert!(
            n >= 3,
            "redis-cli --cluster create needs at least 3 masters"
        );
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| RedisServer::start_with_opts(true, false))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = command(node.port, &["CLUSTER", "INFO"]).unwrap_or_default();
                if info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{n}"))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster did not become ok: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// Redis Sentinel: a master, one replica and three sentinels monitoring the master
/// as [`SentinelSet::MASTER_NAME`], each on an ephemeral port with its own temp dir.
/// The first master runs with `min-replicas-to-write 1` (the production setting that
/// keeps a demoted master from accepting writes it will lose). Killed on drop.
pub struct SentinelSet {
    /// The initial master.
    pub master: RedisServer,
    /// Its replica (the one a failover promotes).
    pub replica: RedisServer,
    sentinels: Vec<(u16, Child, tempfile::TempDir)>,
}

impl SentinelSet {
    /// The monitored master's name.
    pub const MASTER_NAME: &'static str = "mymaster";

    /// Starts master, replica (synced) and three sentinels that know the replica.
    /// Blocking: call it before an in-process upstream starts, or on `spawn_blocking`.
    pub fn start() -> Self {
        let master = RedisServer::start();
        let replica = RedisServer::start_with_opts(false, false);
        let _ = command(
            replica.port,
            &["REPLICAOF", "127.0.0.1", &master.port.to_string()],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !command(replica.port, &["INFO", "replication"])
            .is_some_and(|i| i.contains("master_link_status:up"))
        {
            assert!(Instant::now() < deadline, "replica did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
        // The master refuses writes without a replica: once the replica is promoted,
        // the demoted master cannot take writes that its later resync with the new
        // master would throw away. (Only on the first master: with a single replica,
        // the new master has none until Sentinel reconfigures the old one, ~10 s.)
        let _ = command(
            master.port,
            &["CONFIG", "SET", "min-replicas-to-write", "1"],
        );
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir for sentinel");
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {} 127.0.0.1 {} 2\nsentinel down-after-milliseconds {} 1000\nsentinel failover-timeout {} 10000\nsentinel parallel-syncs {} 1\n",
                    dir.path().display(),
                    Self::MASTER_NAME,
                    master.port,
                    Self::MASTER_NAME,
                    Self::MASTER_NAME,
                    Self::MASTER_NAME,
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server --sentinel");
            sentinels.push((port, child, dir));
        }
        let set = SentinelSet {
            master,
            replica,
            sentinels,
        };
        // Each sentinel must know the replica (from the master's INFO) before a
        // failover can promote it.
        for (port, _, _) in &set.sentinels {
            loop {
                let replicas = command(*port, &["SENTINEL", "REPLICAS", Self::MASTER_NAME])
                    .unwrap_or_default();
                if replicas.contains(&set.replica.port.to_string()) {
                    break;
                }
                assert!(
                    Instant::now() < deadline + Duration::from_secs(10),
                    "sentinel on {port} does not see the replica: {replicas}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        set
    }

    /// Sentinel URLs.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(p, _, _)| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The port the first sentinel names as master.
    pub fn master_port(&self) -> Option<u16> {
        let reply = command(
            self.sentinels[0].0,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER_NAME],
        )?;
        // *2\r\n$9\r\n127.0.0.1\r\n$5\r\n12345\r\n
        reply.split("\r\n").nth(4)?.parse().ok()
    }

    /// `SENTINEL FAILOVER` and waits (up to 15 s) until the sentinels name the replica
    /// as master and it reports `role:master`. Blocking.
    pub fn failover(&self) {
        let reply = command(
            self.sentinels[0].0,
            &["SENTINEL", "FAILOVER", Self::MASTER_NAME],
        )
        .unwrap_or_default();
        assert!(reply.starts_with("+OK"), "SENTINEL FAILOVER: {reply}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.master_port() == Some(self.replica.port)
                && command(self.replica.port, &["ROLE"]).is_some_and(|r| r.contains("master"))
            {
                return;
            }
            assert!(Instant::now() < deadline, "failover did not complete");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
