//! The HTTP port over real sockets: the router served by [`server::serve`]
//! with short limits, in front of a handle whose driver never answers (the
//! behaviour under test happens before a request would reach it), talked
//! to with raw TCP so that clients can misbehave.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::server::{HttpLimits, serve};
use super::{HttpState, router};
use crate::metrics::Metrics;
use crate::raft::{LogIndex, NodeId, RoleState, Term};
use crate::server::{Health, NodeHandle};

/// Long enough never to matter in a test unless it is the one under test.
const LONG: Duration = Duration::from_secs(600);
/// How long a test waits for what it expects before it fails.
const BOUND: Duration = Duration::from_secs(10);

struct Running {
    addr: std::net::SocketAddr,
    health: watch::Sender<Health>,
    /// The driver's end of the request channel, kept open (never read).
    _requests: Box<dyn std::any::Any + Send>,
}

async fn start(limits: HttpLimits, max_body_bytes: usize) -> Running {
    let (tx, rx) = mpsc::channel(16);
    let handle = NodeHandle::new(NodeId(1), 7, Duration::from_secs(1), tx, None);
    let (health, health_rx) = watch::channel(Health {
        last_loop: Instant::now(),
        leader: None,
        commit_index: LogIndex::ZERO,
        leader_commit: LogIndex::ZERO,
        applied_index: LogIndex::ZERO,
        role: RoleState::Follower,
        term: Term::ZERO,
    });
    let state = HttpState {
        handle,
        health: health_rx,
        metrics: Arc::new(Metrics::new().unwrap()),
        max_body_bytes,
        body_timeout: limits.body_timeout,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        router(state),
        limits,
        None,
        std::future::pending(),
    ));
    Running {
        addr,
        health,
        _requests: Box::new(rx),
    }
}

fn limits() -> HttpLimits {
    HttpLimits {
        header_timeout: LONG,
        body_timeout: LONG,
        idle_timeout: LONG,
        max_connections: 1000,
    }
}

/// Reads until the server closes the connection; what it sent.
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(BOUND, tcp.read_to_end(&mut out))
        .await
        .expect("the server did not close the connection in time");
    String::from_utf8_lossy(&out).into_owned()
}

/// One whole response on a keep-alive connection (small bodies only).
async fn read_response(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(BOUND, tcp.read(&mut buf))
            .await
            .expect("no answer in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

fn json_body(response: &str) -> serde_json::Value {
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn a_slowloris_client_is_disconnected_within_the_header_timeout() {
    let timeout = Duration::from_millis(300);
    let r = start(
        HttpLimits {
            header_timeout: timeout,
            ..limits()
        },
        1024,
    )
    .await;
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    let started = Instant::now();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Keep trickling header lines (each well within the timeout) until the
    // server hangs up: the head as a whole must arrive in time.
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(BOUND, async {
        loop {
            tokio::select! {
                n = tcp.read(&mut buf) => break n,
                _ = tokio::time::sleep(timeout / 4) => {
                    if tcp.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        break Ok(0);
                    }
                }
            }
        }
    })
    .await
    .expect("a slowloris connection was never closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert!(started.elapsed() >= timeout);
}

#[tokio::test]
async fn an_oversized_content_length_gets_413_without_the_body_being_sent() {
    let r = start(limits(), 1024).await;
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut tcp).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert_eq!(json_body(&response)["code"], "too_large");
    // The admin API has its own, smaller limit, checked the same way.
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"POST /v1/members HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut tcp).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
}

#[tokio::test]
async fn a_trickling_body_is_cut_off_with_408() {
    let r = start(
        HttpLimits {
            body_timeout: Duration::from_millis(300),
            ..limits()
        },
        1024,
    )
    .await;
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let response = read_to_close(&mut tcp).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.to_ascii_lowercase().contains("connection: close"));
    assert_eq!(json_body(&response)["code"], "request_timeout");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let r = start(
        HttpLimits {
            idle_timeout: Duration::from_millis(300),
            ..limits()
        },
        1024,
    )
    .await;
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut tcp).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let answered = Instant::now();
    assert_eq!(read_to_close(&mut tcp).await, "");
    assert!(answered.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn idle_connections_beyond_the_bound_do_not_block_a_fresh_healthz() {
    const MAX: usize = 8;
    const IDLE: usize = 50;
    let r = start(
        HttpLimits {
            max_connections: MAX,
            ..limits()
        },
        1024,
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(r.addr).await.unwrap());
    }
    // Some of the idle ones have sent half a request head (slowloris).
    for tcp in idle.iter_mut().step_by(2) {
        tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    }
    r.health.send_modify(|h| h.last_loop = Instant::now());
    let mut fresh = TcpStream::connect(r.addr).await.unwrap();
    fresh
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut fresh).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // The server made room by closing the connections idle the longest: at
    // most MAX stay open (the fresh one among them).
    let mut closes: FuturesUnordered<_> = idle
        .iter_mut()
        .map(|tcp| async move {
            let mut buf = [0u8; 16];
            matches!(tcp.read(&mut buf).await, Ok(0) | Err(_))
        })
        .collect();
    let closed = tokio::time::timeout(BOUND, async {
        let mut closed = 0;
        while closed < IDLE + 1 - MAX {
            match closes.next().await {
                Some(true) => closed += 1,
                Some(false) => {}
                None => break,
            }
        }
        closed
    })
    .await
    .expect("idle connections beyond the bound were not closed");
    assert!(closed > IDLE - MAX, "only {closed} of {IDLE} closed");
}

/// One request on its own connection; the whole response.
async fn request(addr: std::net::SocketAddr, method: &str, path: &str, body: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    read_to_close(&mut tcp).await
}

#[tokio::test]
async fn member_add_refuses_bad_urls_with_400() {
    let r = start(limits(), 1024).await;
    for bad in crate::server::bad_member_urls() {
        let shown = bad[..bad.len().min(40)].to_string();
        for body in [
            serde_json::json!({ "peer_url": bad, "learner": true }),
            serde_json::json!({ "peer_url": "http://10.0.0.9:2380", "client_url": bad, "learner": true }),
        ] {
            // An empty client URL means "none": not an error.
            if body["client_url"] == "" {
                continue;
            }
            let response = request(
                r.addr,
                "POST",
                "/v1/members",
                &serde_json::to_vec(&body).unwrap(),
            )
            .await;
            assert!(
                response.starts_with("HTTP/1.1 400"),
                "{shown:?}: {response}"
            );
            let answer = json_body(&response);
            assert_eq!(answer["code"], "invalid_argument", "{shown:?}");
            let message = answer["error"].as_str().unwrap();
            assert!(message.contains("_url"), "{shown:?}: {message}");
            assert!(message.len() < 1024, "the answer echoes a huge URL back");
        }
    }
}
