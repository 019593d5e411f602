//! Property-based fuzzing of the whole request pipeline — honestly labelled: this is
//! proptest (random generation with shrinking), not coverage-guided fuzzing
//! (cargo-fuzz/AFL are not available offline). It drives the real `patgate` binary
//! over loopback with arbitrary methods, paths (including dot segments, encoded
//! separators, non-UTF-8 bytes), header names and values (including identity-header
//! spellings, framing headers, control bytes) and bodies, against a recording
//! upstream, and checks the invariants that must hold for *any* input:
//!
//! 1. the gateway answers with a well-formed HTTP/1.1 status line, or closes the
//!    connection — and is still alive afterwards (nothing on the request path
//!    panics or aborts);
//! 2. no 500: every failure is one of the documented statuses;
//! 3. the upstream never receives a request for an authenticated route (no token is
//!    ever sent), never a client `X-Auth-*` header in any spelling, and never
//!    ambiguous framing.
//!
//! Run longer with `PROPTEST_CASES=5000 cargo test --release --test fuzz_pipeline`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::gateway::GatewayProcess;
use common::recorder::{Recorder, statuses};
use common::redis::RedisServer;
use proptest::prelude::*;

struct World {
    _rt: tokio::runtime::Runtime,
    _redis: RedisServer,
    upstream: Recorder,
    gw: GatewayProcess,
}

/// One gateway for every case (starting one per case would dominate the run time),
/// owned by the test so that its processes are killed when the test ends (a `static`
/// is never dropped: its redis-server and patgate would outlive the test binary).
fn world() -> World {
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let upstream = rt.block_on(Recorder::start());
        let redis = RedisServer::start();
        let gw = GatewayProcess::start(&format!(
            r#"
store:
  backend: redis
  redis:
    url: "{}"
tokens:
  prefix: pat_
timeouts:
  header_read_seconds: 2
limits:
  max_body_bytes: 65536
routes:
  - name: site
    path_prefix: /
    upstream: "{up}"
    auth: none
  - name: admin
    path_prefix: /admin
    upstream: "{up}"
  - name: private
    path_prefix: /private/
    upstream: "{up}"
"#,
            redis.url(),
            up = upstream.url()
        ));
        World {
            _rt: rt,
            _redis: redis,
            upstream,
            gw,
        }
    }
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("PUT".to_string()),
        Just("HEAD".to_string()),
        Just("OPTIONS".to_string()),
        Just("DELETE".to_string()),
        Just("CONNECT".to_string()),
        "[A-Z]{1,8}",
    ]
}

fn path() -> impl Strategy<Value = Vec<u8>> {
    let segment = prop_oneof![
        Just(b"admin".to_vec()),
        Just(b"ADMIN".to_vec()),
        Just(b"private".to_vec()),
        Just(b"api".to_vec()),
        Just(b"..".to_vec()),
        Just(b".".to_vec()),
        Just(b"%2e%2e".to_vec()),
        Just(b"%2E.".to_vec()),
        Just(b"..;".to_vec()),
        Just(b"%2f".to_vec()),
        Just(b"%5c".to_vec()),
        Just(b"%61dmin".to_vec()),
        Just(b"\\".to_vec()),
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..6),
        "[a-z0-9._~%-]{0,8}".prop_map(String::into_bytes),
    ];
    proptest::collection::vec(segment, 0..6).prop_map(|segs| {
        let mut p = Vec::new();
        for s in segs {
            p.push(b'/');
            p.extend(s);
        }
        if p.is_empty() {
            p.push(b'/');
        }
        p
    })
}

fn header_line() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        Just("X-Auth-User-Id".to_string()),
        Just("x_auth_user_id".to_string()),
        Just("X-AUTH-SCOPES".to_string()),
        Just("X_Auth-Org_Id".to_string()),
        Just("Content-Length".to_string()),
        Just("Transfer-Encoding".to_string()),
        Just("Connection".to_string()),
        Just("Upgrade".to_string()),
        Just("Expect".to_string()),
        Just("Authorization".to_string()),
        Just("X-Forwarded-For".to_string()),
        Just("Host".to_string()),
        "[A-Za-z0-9_-]{1,12}",
    ];
    let value = prop_oneof![
        Just(b"chunked".to_vec()),
        Just(b"chunked, identity".to_vec()),
        Just(b"0".to_vec()),
        Just(b"5".to_vec()),
        Just(b"100-continue".to_vec()),
        Just(b"close, x-auth-user-id".to_vec()),
        Just(b"Bearer pat_".to_vec()),
        Just(b"websocket".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..24),
        "[ -~]{0,24}".prop_map(String::into_bytes),
    ];
    (name, value).prop_map(|(n, v)| {
        let mut line = n.into_bytes();
        line.extend_from_slice(b": ");
        line.extend(v);
        line.extend_from_slice(b"\r\n");
        line
    })
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        method(),
        path(),
        proptest::collection::vec(header_line(), 0..8),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(m, p, headers, body)| {
            let mut r = m.into_bytes();
            r.push(b' ');
            r.extend(p);
            r.extend_from_slice(b" HTTP/1.1\r\nHost: fuzz\r\n");
            for h in headers {
                r.extend(h);
            }
            r.extend_from_slice(b"Connection: close\r\n\r\n");
            r.extend(body);
            r
        })
}

/// The documented answers (SPEC §3, README) for a request without a valid token.
const EXPECTED: &[u16] = &[
    100, 101, 200, 400, 401, 403, 404, 405, 408, 411, 413, 414, 417, 431, 501, 502, 503, 504, 505,
];

fn send(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

fn cgi(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

#[test]
fn any_request_gets_a_documented_answer_and_nothing_unauthorised_reaches_the_upstream() {
    let w = world();
    let config = ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    if let Err(e) = runner.run(&request(), |req| check(&w, &req)) {
        panic!("{e}");
    }
}

/// One case: the answer is documented, the gateway still answers, and the upstream
/// saw nothing unauthenticated or spoofed.
fn check(w: &World, req: &[u8]) -> Result<(), TestCaseError> {
    let addr = w.gw.url.trim_start_matches("http://");
    let answer = send(addr, req);
    let codes = statuses(&answer);
    for c in &codes {
        prop_assert!(
            EXPECTED.contains(c),
            "status {} for {:?}",
            c,
            String::from_utf8_lossy(req)
        );
    }
    if !answer.is_empty() {
        prop_assert!(
            answer.starts_with(b"HTTP/1.1 "),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // Alive: a plain request still works.
    let ok = send(
        addr,
        b"GET /alive HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    prop_assert_eq!(
        statuses(&ok),
        vec![200],
        "gateway not answering after {:?}",
        String::from_utf8_lossy(req)
    );
    for seen in w.upstream.take() {
        if seen.truncated || seen.target == "/alive" {
            continue;
        }
        prop_assert!(
            !seen.garbage && !seen.ambiguous_framing,
            "{:?}",
            String::from_utf8_lossy(&seen.raw)
        );
        // Exact case: route prefixes are case-sensitive (see SECURITY.md).
        let p = &seen.target;
        prop_assert!(
            !p.starts_with("/admin") && !p.starts_with("/private/"),
            "unauthenticated request reached {}",
            seen.target
        );
        for (name, _) in &seen.headers {
            prop_assert!(
                !cgi(name).starts_with("X_AUTH_"),
                "client identity header {} forwarded",
                name
            );
        }
    }
    Ok(())
}
