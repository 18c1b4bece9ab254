//! `[[tenant.static]]` against the real gateway: content types, ETag and
//! 304, ranges, HEAD, 405, index.html, no way out of the directory and no
//! hidden files (raw TCP for the paths a client library would normalise), the request
//! metrics, a large file streamed whole, and the route rules of config and
//! admin API.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TestGateway, assert_metrics, handler, raw_text, require_metric, tenant};
use reqwest::header::HeaderValue;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fresh site folder under target/, with `secret.txt` next to it (the
/// file every escape attempt aims at).
fn site() -> (PathBuf, PathBuf) {
    static SITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("static-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let site = base.join("site");
    std::fs::create_dir_all(site.join("docs")).expect("create site");
    std::fs::create_dir_all(site.join("empty")).expect("create site");
    std::fs::write(base.join("secret.txt"), "secret").expect("write secret");
    std::fs::write(site.join("hello.txt"), "hello, static world\n").expect("write");
    std::fs::write(site.join("style.css"), "body { color: red }\n").expect("write");
    std::fs::write(site.join("app.js"), "console.log(1)\n").expect("write");
    std::fs::write(site.join("index.html"), "<h1>root</h1>\n").expect("write");
    std::fs::write(site.join("docs/index.html"), "<h1>docs</h1>\n").expect("write");
    std::fs::write(site.join("a b.txt"), "spaced\n").expect("write");
    std::fs::write(site.join("digits.txt"), "0123456789").expect("write");
    std::os::unix::fs::symlink(base.join("secret.txt"), site.join("escape.txt")).expect("link");
    std::os::unix::fs::symlink(&base, site.join("up")).expect("link");
    std::os::unix::fs::symlink(site.join("hello.txt"), site.join("inside.txt")).expect("link");
    std::fs::create_dir_all(site.join(".git")).expect("create site");
    std::fs::create_dir_all(site.join(".well-known")).expect("create site");
    std::fs::write(site.join(".env"), "secret").expect("write");
    std::fs::write(site.join(".git/config"), "secret").expect("write");
    std::fs::write(site.join(".well-known/security.txt"), "Contact: x\n").expect("write");
    std::os::unix::fs::symlink(site.join(".env"), site.join("env.txt")).expect("link");
    std::os::unix::fs::symlink(site.join(".git"), site.join("git")).expect("link");
    (base, site)
}

/// Tenant `demo` with hello, echo at `/assets/api`, and `site` mounted at
/// `/assets`.
fn config(site: &Path) -> String {
    format!(
        "{}{}[[tenant.static]]\nroute = \"/assets\"\ndir = \"{}\"\n",
        tenant("demo", "*", "", &["hello"]),
        handler("echo", "/assets/api", "{echo}"),
        site.display()
    )
}

/// A gateway serving a fresh [`site`] with [`config`]; the site's folder.
async fn serve_site() -> (TestGateway, PathBuf) {
    let (_base, site) = site();
    (TestGateway::start(&config(&site)).await, site)
}

/// `GET path` as it is, on a fresh connection that the gateway closes
/// after answering: the whole answer.
async fn raw_get(gw: &TestGateway, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    raw_text(gw.address(), &request).await
}

/// `GET path` with one header.
async fn get_with(gw: &TestGateway, path: &str, header: (&str, HeaderValue)) -> reqwest::Response {
    let request = gw.client.get(format!("{}{path}", gw.url));
    request
        .header(header.0, header.1)
        .send()
        .await
        .expect("GET")
}

#[tokio::test]
async fn files_come_with_their_type_length_and_validators() {
    let (gw, _) = serve_site().await;
    for (path, kind, body) in [
        ("/assets/hello.txt", "text/plain", "hello, static world\n"),
        ("/assets/style.css", "text/css", "body { color: red }\n"),
        ("/assets/app.js", "text/javascript", "console.log(1)\n"),
        ("/assets/a%20b.txt", "text/plain", "spaced\n"),
        ("/assets/inside.txt", "text/plain", "hello, static world\n"),
        ("/assets", "text/html", "<h1>root</h1>\n"),
        ("/assets/", "text/html", "<h1>root</h1>\n"),
        ("/assets/docs/", "text/html", "<h1>docs</h1>\n"),
    ] {
        let response = gw.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        let content_type = headers["content-type"].to_str().expect("ascii");
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        assert_eq!(headers["content-length"], body.len().to_string().as_str());
        assert!(headers.contains_key("etag"), "{path}");
        assert!(headers.contains_key("last-modified"), "{path}");
        assert_eq!(response.text().await.expect("body"), body, "{path}");
    }
    // The longer route wins: /assets/api is the echo handler's (which
    // answers an empty GET with 204 and no validators).
    let response = gw.get("/assets/api/x").await;
    assert_eq!(response.status(), 204);
    assert!(response.headers().get("etag").is_none());
    // No listings, no missing files.
    for path in ["/assets/empty/", "/assets/nothing.txt", "/assets/docs/x"] {
        assert_eq!(gw.get(path).await.status(), 404, "{path}");
    }
    // A directory without its slash is sent to it, so its page's relative
    // links resolve inside it.
    for (path, location) in [
        ("/assets/docs", "/assets/docs/"),
        ("/assets/docs?x=1", "/assets/docs/?x=1"),
        ("/assets", "/assets/"),
    ] {
        let answer = raw_get(&gw, path).await.to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 301"), "{path}: {answer}");
        assert!(
            answer.contains(&format!("\r\nlocation: {location}\r\n")),
            "{path}: {answer}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn etag_and_dates_give_304_and_a_change_gives_200() {
    let (gw, site) = serve_site().await;
    let url = "/assets/hello.txt";
    let first = gw.get(url).await;
    let etag = first.headers()["etag"].clone();
    let last_modified = first.headers()["last-modified"].clone();
    assert!(etag.to_str().expect("ascii").starts_with('"'), "strong");

    let cached = get_with(&gw, url, ("if-none-match", etag.clone())).await;
    assert_eq!(cached.status(), 304);
    assert_eq!(cached.headers()["etag"], etag);
    assert!(cached.bytes().await.expect("body").is_empty());

    let cached = get_with(&gw, url, ("if-modified-since", last_modified)).await;
    assert_eq!(cached.status(), 304);

    // A different file content and size: a different tag, the new bytes.
    std::fs::write(site.join("hello.txt"), "changed, and longer than before\n").expect("write");
    let fresh = get_with(&gw, url, ("if-none-match", etag.clone())).await;
    assert_eq!(fresh.status(), 200);
    assert_ne!(fresh.headers()["etag"], etag);
    assert_eq!(
        fresh.text().await.expect("body"),
        "changed, and longer than before\n"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn ranges_get_206_or_416_and_several_ranges_the_whole_file() {
    let (gw, _) = serve_site().await;
    let get = |range: &'static str| {
        get_with(
            &gw,
            "/assets/digits.txt",
            ("range", HeaderValue::from_static(range)),
        )
    };
    for (range, content_range, body) in [
        ("bytes=2-4", "bytes 2-4/10", "234"),
        ("bytes=7-", "bytes 7-9/10", "789"),
        ("bytes=-2", "bytes 8-9/10", "89"),
        ("bytes=8-100", "bytes 8-9/10", "89"),
    ] {
        let response = get(range).await;
        assert_eq!(response.status(), 206, "{range}");
        assert_eq!(response.headers()["content-range"], content_range);
        assert_eq!(response.text().await.expect("body"), body, "{range}");
    }
    let response = get("bytes=10-").await;
    assert_eq!(response.status(), 416);
    assert_eq!(response.headers()["content-range"], "bytes */10");
    let response = get("bytes=0-1,4-5").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "0123456789");
    // If-Range with an old tag: the whole file.
    let response = gw
        .client
        .get(format!("{}/assets/digits.txt", gw.url))
        .header("range", "bytes=0-1")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn head_has_the_length_and_no_body_and_other_methods_get_405() {
    let (gw, _) = serve_site().await;
    let answer = raw_text(
        gw.address(),
        "HEAD /assets/digits.txt HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let lower = answer.to_ascii_lowercase();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(lower.contains("content-length: 10\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "no body: {answer:?}");

    for method in ["POST", "PUT", "DELETE"] {
        let response = gw
            .client
            .request(
                method.parse().expect("method"),
                format!("{}/assets/hello.txt", gw.url),
            )
            .body("x")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 405, "{method}");
        assert_eq!(response.headers()["allow"], "GET, HEAD");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn nothing_outside_the_directory_is_served() {
    let (gw, _) = serve_site().await;
    for path in [
        "/assets/../secret.txt",
        "/assets/%2e%2e/secret.txt",
        "/assets/%2E%2E%2Fsecret.txt",
        "/assets/docs/../../secret.txt",
        "/assets/..%5csecret.txt",
        "/assets/..\\secret.txt",
        "/assets/hello.txt%00.png",
        "/assets/escape.txt",
        "/assets/up/secret.txt",
        "/assets/./hello.txt",
        "/assets/.env",
        "/assets/%2eenv",
        "/assets/.git/config",
        "/assets/env.txt",
        "/assets/git/config",
    ] {
        let answer = raw_get(&gw, path).await;
        assert!(
            answer.starts_with("HTTP/1.1 404") || answer.starts_with("HTTP/1.1 400"),
            "{path}: {answer}"
        );
        assert!(
            !answer.contains("secret\r\n") && !answer.ends_with("secret"),
            "{path}: {answer}"
        );
    }
    // The same client still reads what is inside, `.well-known` included.
    for path in ["/assets/hello.txt", "/assets/.well-known/security.txt"] {
        let answer = raw_get(&gw, path).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn static_requests_are_counted_under_their_mount() {
    let (gw, _) = serve_site().await;
    assert_eq!(gw.get("/assets/hello.txt").await.status(), 200);
    assert_eq!(gw.get("/assets/hello.txt").await.status(), 200);
    assert_eq!(gw.get("/assets/missing").await.status(), 404);
    let text = gw.metrics().await;
    let sample = |status: &str| {
        format!(
            r#"wasmgate_requests_total{{handler="static:/assets",status="{status}",tenant="demo"}}"#
        )
    };
    assert_eq!(require_metric(&text, &sample("200")), 2.0);
    assert_eq!(require_metric(&text, &sample("404")), 1.0);
    assert_eq!(
        require_metric(
            &text,
            r#"wasmgate_request_duration_seconds_count{handler="static:/assets",tenant="demo"}"#
        ),
        3.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_large_file_is_streamed_whole() {
    let (gw, site) = serve_site().await;
    // Far more than the kernel buffers between the gateway and a client
    // that does not read can hold.
    let size = 32 << 20;
    let data: Vec<u8> = (0..size).map(|i: usize| (i * 7 % 256) as u8).collect();
    std::fs::write(site.join("big.bin"), &data).expect("write");
    let mut stream = common::connect_small_window(gw.address(), 4096).await;
    let request = "GET /assets/big.bin HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("send");
    // The head and the first bytes of the body, then the client stalls.
    let mut answer = vec![0; 64 << 10];
    stream.read_exact(&mut answer).await.expect("the start");
    // Streamed: while most of the file is still unsent, none of it is held
    // in the buffered-bytes budget.
    assert_metrics(&gw.metrics().await, &[("wasmgate_buffered_bytes", 0.0)]);
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut answer))
        .await
        .expect("the rest within a generous bound")
        .expect("read");
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("\r\ncontent-type: application/octet-stream\r\n"),
        "{head}"
    );
    let body = &answer[end + 4..];
    assert_eq!(body.len(), size, "the whole file came after the stall");
    assert_eq!(Sha256::digest(body), Sha256::digest(&data));
    gw.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_refuses_a_mounts_route_and_reload_moves_mounts() {
    const ROOT: &str = "static-test-root-token";
    let (base, site) = site();
    let config_path = base.join("wasmgate.toml");
    let write_config = |route: &str| {
        let text = common::config_text(&config(&site))
            .replace("route = \"/assets\"\n", &format!("route = \"{route}\"\n"));
        std::fs::write(&config_path, format!("[runtime]\nworkers = 1\n{text}"))
            .expect("write config");
    };
    write_config("/assets");
    let served = common::Served::spawn(
        common::serve_command()
            .arg("--config")
            .arg(&config_path)
            .env("WASMGATE_ADMIN_TOKEN", ROOT),
    );
    let (url, admin) = (served.url.clone(), served.admin.clone());
    let client = reqwest::Client::new();

    let bytes = std::fs::read(wasmgate_handler_components::require(
        wasmgate_handler_components::HELLO,
    ))
    .expect("read hello");
    let response = client
        .put(format!(
            "{admin}/admin/tenants/demo/handlers/other?route=/assets"
        ))
        .bearer_auth(ROOT)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .expect("deploy");
    let status = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("static:/assets"), "{text}");

    // Reload: the mount moves to /files.
    write_config("/files");
    let response = client
        .post(format!("{admin}/admin/reload"))
        .bearer_auth(ROOT)
        .send()
        .await
        .expect("reload");
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );
    let get = |path: &str| client.get(format!("{url}{path}")).send();
    assert_eq!(get("/files/hello.txt").await.expect("GET").status(), 200);
    assert_eq!(get("/assets/hello.txt").await.expect("GET").status(), 404);
}
