//! Responses decided before the request body was read to the end (413 for
//! a body over `max_body_bytes`, 404 for no route) reach clients that are
//! still sending, over HTTP/2 and HTTP/1.1: the real `curl` binary, an h2
//! client, and a raw HTTP/1.1 connection, against the real gateway.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::{TestGateway, demo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far longer than anything under test takes; a failure, not a measurement.
const BOUND: Duration = Duration::from_secs(30);

/// A body limit far below the bodies sent.
const SMALL_BODIES: &str = "[server]\nmax_body_bytes = 1024\n";

/// A file of `size` bytes under target/, made once per size.
fn body_file(size: usize) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("early-response-{size}.bin"));
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(size as u64) {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let partial = path.with_extension(format!("{}.part", std::process::id()));
        std::fs::write(&partial, data).expect("write a body file");
        std::fs::rename(&partial, &path).expect("move the body file into place");
    }
    path
}

/// Fails unless a `curl` binary is on PATH: a test that skipped would
/// pass without testing anything.
fn require_curl() {
    let version = std::process::Command::new("curl").arg("--version").output();
    assert!(
        version.is_ok_and(|out| out.status.success()),
        "curl is needed on PATH (e.g. `apt-get install curl`)"
    );
}

/// Runs curl, uploading `file`; returns its exit code, the status it
/// printed and its stderr.
async fn curl_upload(args: &[&str], file: &Path, url: &str) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "60",
        ])
        // Without this curl waits for 100-continue and never sends the
        // body when the answer is a final status: nothing left to test.
        .args(["-H", "Expect:"])
        .args(args)
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(url)
        .output();
    let output = tokio::time::timeout(BOUND, output)
        .await
        .expect("curl finishes")
        .expect("run curl");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn curl_sees_the_413_and_404_while_still_sending_over_http2_and_http1() {
    require_curl();
    let gw = TestGateway::start(&demo(SMALL_BODIES)).await;
    // 2 MiB is read and thrown away after the response; 40 MiB is more
    // than the gateway throws away, so the stream is reset (HTTP/2) or the
    // connection closed (HTTP/1.1) while curl is still sending.
    let sizes = [2 << 20, 40 << 20];
    let protocols: [&[&str]; 2] = [&["--http2-prior-knowledge"], &["--http1.1"]];
    let framings: [&[&str]; 2] = [
        &[],
        &["-H", "content-length:", "-H", "transfer-encoding: chunked"],
    ];
    for size in sizes {
        let file = body_file(size);
        for protocol in protocols {
            for framing in framings {
                for (path, want) in [("/echo", "413"), ("/nowhere", "404")] {
                    let args = [protocol, framing].concat();
                    let url = format!("{}{path}", gw.url);
                    let (code, status, stderr) = curl_upload(&args, &file, &url).await;
                    assert_eq!(
                        (code, status.as_str()),
                        (Some(0), want),
                        "curl {args:?} {size} bytes to {path}: {stderr}"
                    );
                }
            }
        }
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn an_h2_client_gets_the_413_then_a_no_error_reset_and_keeps_its_connection() {
    let gw = TestGateway::start(&demo(SMALL_BODIES)).await;
    let tcp = TcpStream::connect(gw.address()).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let chunk = Bytes::from(vec![b'x'; 16 << 10]);

    // A client that finishes its body after the 413: no reset at all.
    let request = http::Request::post(format!("{}/echo", gw.url))
        .body(())
        .expect("request");
    let (response, mut upload) = client.send_request(request, false).expect("send");
    upload.send_data(chunk.clone(), false).expect("send data");
    let response = tokio::time::timeout(BOUND, response)
        .await
        .expect("a response")
        .expect("the response, not a reset");
    assert_eq!(response.status(), 413);
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        data.expect("the whole 413 body");
    }
    upload
        .send_data(chunk.clone(), true)
        .expect("finish the body");

    // The connection still serves.
    let mut client = client.ready().await.expect("ready again");
    let request = http::Request::get(format!("{}/hello", gw.url))
        .body(())
        .expect("request");
    let (response, _) = client.send_request(request, true).expect("send");
    let response = tokio::time::timeout(BOUND, response)
        .await
        .expect("a response")
        .expect("response");
    assert_eq!(response.status(), 200);

    // A client that stops sending: the gateway gives up on the body after
    // the response, with NO_ERROR (RFC 9113 8.1), never CANCEL.
    let mut client = client.ready().await.expect("ready again");
    let request = http::Request::post(format!("{}/echo", gw.url))
        .body(())
        .expect("request");
    let (response, mut upload) = client.send_request(request, false).expect("send");
    upload.send_data(chunk, false).expect("send data");
    let response = tokio::time::timeout(BOUND, response)
        .await
        .expect("a response")
        .expect("the response, not a reset");
    assert_eq!(response.status(), 413);
    let reset = tokio::time::timeout(BOUND, std::future::poll_fn(|cx| upload.poll_reset(cx)))
        .await
        .expect("the gateway ends the stream")
        .expect("a reset reason");
    assert_eq!(reset, h2::Reason::NO_ERROR);

    drop(client);
    driver.abort();
    gw.shutdown().await;
}

/// Reads one HTTP/1.1 response with a Content-Length: its head and body.
async fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let reading = async {
        loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .expect("a content-length");
                if data.len() >= end + 4 + length {
                    let body = data[end + 4..end + 4 + length].to_vec();
                    data.drain(..end + 4 + length);
                    return (head, body);
                }
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "connection closed; read so far: {data:?}");
            data.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(BOUND, reading)
        .await
        .expect("a whole response")
}

#[tokio::test]
async fn an_http1_client_gets_the_413_sends_its_body_and_keeps_its_connection() {
    let gw = TestGateway::start(&demo(SMALL_BODIES)).await;
    let mut stream = TcpStream::connect(gw.address()).await.expect("connect");
    let size = 2 << 20;
    let head = format!("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("send head");
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    // The gateway reads the body it refused instead of closing on it
    // (which would reset the connection while the client sends)...
    tokio::time::timeout(BOUND, stream.write_all(&vec![b'x'; size]))
        .await
        .expect("the body is taken")
        .expect("the body is taken, not reset");
    // ...and the connection serves the next request.
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("send");
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!body.is_empty());
    gw.shutdown().await;
}
