//! `faults`: misbehaves on purpose so the gateway's limits can be tested.
//! Mounted at `/faults`; the last path segment picks the fault, and a query
//! parameter `n` sizes it where it has a size:
//!
//! | path | what the guest does | what the gateway should do |
//! |---|---|---|
//! | `/faults/loop` | spins forever | stop it when fuel or the deadline runs out |
//! | `/faults/oom` | allocates 1 MiB chunks until refused | trap at the memory cap |
//! | `/faults/panic` | panics | report the trap |
//! | `/faults/stack` | recurses without bound | trap on stack overflow |
//! | `/faults/badstatus` | returns status 1000 | answer 502 `bad_response` |
//! | `/faults/metrics` | writes 5000 metric names plus invalid ones, then 200 | drop the excess and invalid names |
//! | `/faults/headers?n=100000` | answers with `n` distinct header names | 502, the worker survives |
//! | `/faults/bighead?n=1100000` | answers with one header value of `n` bytes | 502 (response head limit) |
//! | `/faults/big?n=8388608` | answers 200 with a body of `n` bytes | 502 above `max_response_bytes` |
//! | `/faults/sleep?n=30000` | `std::thread::sleep` for `n` ms (a blocking host call) | 504 at the deadline |
//! | `/faults/poll?n=30000` | `wasi:io/poll.poll` on an `n` ms timer | 504 at the deadline |
//! | `/faults/logflood?n=0` | calls `log` `n` times (0: until stopped) | rate-limit the log, count drops |
//! | `/faults/lognewline` | logs a message with CR, LF and an ANSI escape | escape them: one log line |
//! | `/faults/hopbyhop` | answers with hop-by-hop headers and `x-wasmgate-error` | strip them |
//! | `/faults/counterwrap` | adds `u64::MAX` to a counter twice | the counter saturates, never wraps |
//! | `/faults/histinf` | observes `f64::MAX` in a histogram several times | the sum stays finite |
//! | `/faults/stderr?n=1048576` | writes `n` bytes to stderr and `n` to stdout, then panics | keep at most 4 KiB of stderr |
//! | `/faults/wasi?tcp=127.0.0.1:9` | reports what WASI gives it: env, args, files, network (a TCP connection to `tcp`), clocks | nothing but clocks and random |
//!
//! Any other path gets 404 with the list of faults.

use std::hint::black_box;
use std::io::Write;

use wasmgate_sdk::http::StatusCode;
use wasmgate_sdk::{IntoResponse, RawResponse, Request, log, metrics};

/// Every fault, for the 404 text.
const FAULTS: &str = "loop, oom, panic, stack, badstatus, metrics, headers, bighead, big, \
                      sleep, poll, logflood, lognewline, hopbyhop, counterwrap, histinf, \
                      stderr, wasi";

/// Distinct valid counter names `metrics` registers.
const FLOOD_NAMES: u32 = 5000;

#[wasmgate_sdk::handler]
fn faults(req: Request) -> RawResponse {
    let fault = req.uri().path().rsplit('/').next().unwrap_or_default();
    let n = |default: u64| size(req.uri().query()).unwrap_or(default);
    match fault {
        "loop" => spin_forever(),
        "oom" => exhaust_memory(),
        "panic" => panic!("faults: deliberate panic"),
        "stack" => {
            let seed = req.uri().path().len() as u64;
            raw(StatusCode::OK, format!("{}\n", recurse(seed, 0)))
        }
        "badstatus" => RawResponse {
            status: 1000,
            headers: Vec::new(),
            body: b"status 1000\n".to_vec(),
        },
        "metrics" => {
            flood_metrics();
            raw(StatusCode::OK, "flooded\n")
        }
        "headers" => RawResponse {
            status: 200,
            headers: (0..n(100_000))
                .map(|i| (format!("x-h{i}"), b"v".to_vec()))
                .collect(),
            body: b"many headers\n".to_vec(),
        },
        "bighead" => RawResponse {
            status: 200,
            headers: vec![("x-big".to_owned(), vec![b'a'; n(1_100_000) as usize])],
            body: b"big head\n".to_vec(),
        },
        "big" => RawResponse {
            status: 200,
            headers: Vec::new(),
            body: vec![b'b'; n(8 << 20) as usize],
        },
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_millis(n(30_000)));
            raw(StatusCode::OK, "slept\n")
        }
        "poll" => {
            let timer = wasip2::clocks::monotonic_clock::subscribe_duration(n(30_000) * 1_000_000);
            wasip2::io::poll::poll(&[&timer]);
            raw(StatusCode::OK, "polled\n")
        }
        "logflood" => {
            let lines = n(0);
            let mut i = 0u64;
            while lines == 0 || i < lines {
                log::info(&format!("flood line {i}"));
                i += 1;
            }
            raw(StatusCode::OK, format!("logged {lines} lines\n"))
        }
        "lognewline" => {
            log::warn("first\nFORGED level=ERROR tenant=other\r\x1b[31mred\x1b[0m end");
            raw(StatusCode::OK, "logged\n")
        }
        "hopbyhop" => RawResponse {
            status: 200,
            headers: [
                ("connection", "x-secret, keep-alive"),
                ("x-secret", "should be dropped"),
                ("keep-alive", "timeout=99"),
                ("proxy-connection", "keep-alive"),
                ("proxy-authenticate", "Basic"),
                ("te", "trailers"),
                ("trailer", "x-t"),
                ("upgrade", "h2c"),
                ("transfer-encoding", "chunked"),
                ("content-length", "999"),
                ("x-wasmgate-error", "forged"),
                ("x-kept", "yes"),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect(),
            body: b"hop by hop\n".to_vec(),
        },
        "counterwrap" => {
            metrics::counter_add("wrapped", u64::MAX);
            metrics::counter_add("wrapped", u64::MAX);
            metrics::counter_add("wrapped", 5);
            raw(StatusCode::OK, "added\n")
        }
        "histinf" => {
            for _ in 0..4 {
                metrics::histogram_observe("huge", f64::MAX);
            }
            raw(StatusCode::OK, "observed\n")
        }
        "stderr" => {
            let chunk = vec![b'e'; n(1 << 20) as usize];
            // Writes past the gateway's cap fail; that is the point.
            let _ = std::io::stdout().write_all(&chunk);
            let _ = std::io::stderr().write_all(b"STDERR-START ");
            let _ = std::io::stderr().write_all(&chunk);
            panic!("faults: after a stderr flood");
        }
        "wasi" => {
            let tcp = param(req.uri().query(), "tcp").unwrap_or("127.0.0.1:9");
            raw(StatusCode::OK, wasi_report(tcp))
        }
        _ => raw(
            StatusCode::NOT_FOUND,
            format!("unknown fault; try one of: {FAULTS}\n"),
        ),
    }
}

/// The `n` query parameter, if present and a number.
fn size(query: Option<&str>) -> Option<u64> {
    param(query, "n")?.parse().ok()
}

/// The query parameter `key`, if present.
fn param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// An ordinary response as a [`RawResponse`], the one return type here.
fn raw(status: StatusCode, body: impl IntoResponse) -> RawResponse {
    (status, body).into_response().into()
}

/// One `key=value` line per capability probe, so a test can check each;
/// `tcp` is the address the network probe dials.
fn wasi_report(tcp: &str) -> String {
    let env = std::env::vars().count();
    let args = std::env::args().count();
    let root = std::fs::read_dir("/").map(|d| d.count());
    let file = std::fs::read("/etc/passwd").map(|b| b.len());
    let cwd = std::env::current_dir().map(|p| p.display().to_string());
    let tcp = tcp_connects(tcp);
    let dns = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80)).map(|a| a.count());
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .is_ok();
    format!(
        "env={env}\nargs={args}\nread_dir={}\nread_file={}\ncwd={}\ntcp={}\ndns={}\nclock={clock}\n",
        root.is_ok(),
        file.is_ok(),
        cwd.is_ok(),
        tcp,
        dns.is_ok(),
    )
}

/// Whether `wasi:sockets` lets the guest open a TCP connection to
/// `address` (`IPV4:PORT`). Asked of the sockets interface itself: std's
/// `TcpStream` fails on this target whatever the host allows.
fn tcp_connects(address: &str) -> bool {
    use wasip2::sockets::{instance_network, network, tcp_create_socket};
    let Ok(address) = address.parse::<std::net::SocketAddrV4>() else {
        return false;
    };
    let [a, b, c, d] = address.ip().octets();
    let remote = network::IpSocketAddress::Ipv4(network::Ipv4SocketAddress {
        port: address.port(),
        address: (a, b, c, d),
    });
    let Ok(socket) = tcp_create_socket::create_tcp_socket(network::IpAddressFamily::Ipv4) else {
        return false;
    };
    let network = instance_network::instance_network();
    if socket.start_connect(&network, remote).is_err() {
        return false;
    }
    loop {
        match socket.finish_connect() {
            Ok(_) => return true,
            Err(network::ErrorCode::WouldBlock) => socket.subscribe().block(),
            Err(_) => return false,
        }
    }
}

fn spin_forever() -> ! {
    let mut counter = 0u64;
    loop {
        // `black_box` makes every iteration observable, so no optimisation
        // can shrink this to anything but a loop that burns fuel.
        counter = black_box(counter.wrapping_add(1));
    }
}

fn exhaust_memory() -> ! {
    const CHUNK: usize = 1 << 20;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touching every page makes the memory real; the allocation failure
        // at the cap aborts, which traps the instance.
        let chunk = vec![black_box(1u8); CHUNK];
        chunks.push(black_box(chunk));
    }
}

/// Recurses until wasm's own call stack is gone. Everything stays in wasm
/// locals (nothing address-taken), so the overflow hits the engine's stack
/// limit (`stack_overflow`), not Rust's shadow stack in linear memory, which
/// would surface as an out-of-bounds memory access instead. The seed comes
/// from the request so nothing is known at compile time, and the result is
/// used after the call, so this is neither a loop nor a tail call.
fn recurse(seed: u64, depth: u64) -> u64 {
    if depth == u64::MAX {
        return seed;
    }
    let below = recurse(seed.rotate_left(7) ^ depth, depth + 1);
    below.wrapping_mul(31).wrapping_add(seed)
}

fn flood_metrics() {
    for i in 0..FLOOD_NAMES {
        metrics::counter_add(&format!("flood_{i}"), 1);
    }
    // Invalid names the gateway must drop without failing the request.
    metrics::counter_add("Bad-Name", 1);
    metrics::counter_add("", 1);
    metrics::counter_add(&"x".repeat(200), 1);
}
