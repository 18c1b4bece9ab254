//! Attacks on the control plane that once worked (issue 26), against a
//! real `wasmgate serve`: a FIFO or socket in a static directory (404 at
//! once, no thread left waiting in `open`; devices are in the unit tests,
//! as making one needs root), the `Bearer`
//! scheme in any case, and routes no request could match (control
//! characters, non-ASCII, `%`), refused with 400 and logged escaped.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Served, serve_command};
use wasmgate_handler_components as components;

const ROOT: &str = "attacks-root-token";

/// A fresh folder under target/ with a config: tenant `demo` on every host
/// with hello at /hello and `site/` mounted at /site, holding `file.txt`,
/// a FIFO `pipe` and a folder whose `index.html` is a FIFO.
fn setup(name: &str) -> (PathBuf, PathBuf) {
    let base = common::scratch(&format!("attacks-{name}"));
    let site = base.join("site");
    std::fs::create_dir_all(site.join("fifo-dir")).expect("create site");
    std::fs::write(site.join("file.txt"), "a regular file\n").expect("write");
    let made = std::process::Command::new("mkfifo")
        .arg(site.join("pipe"))
        .arg(site.join("fifo-dir/index.html"))
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let mount = format!(
        "[[tenant.static]]\nroute = \"/site\"\ndir = \"{}\"\n",
        site.display()
    );
    let config = format!(
        "[runtime]\nworkers = 1\n{}{mount}",
        common::tenant("demo", "*", "", &["hello"])
    );
    std::fs::write(base.join("wasmgate.toml"), common::config_text(&config)).expect("write config");
    (base, site)
}

/// `wasmgate serve` on `base`'s config with the root token, its log
/// (stderr) written to `base/log`.
fn serve(base: &Path) -> Served {
    let log = std::fs::File::create(base.join("log")).expect("create log");
    Served::spawn(
        serve_command()
            .arg("--config")
            .arg(base.join("wasmgate.toml"))
            .env("WASMGATE_ADMIN_TOKEN", ROOT)
            .stderr(log),
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Whether some process holds the FIFO open for reading: opening it for
/// writing without blocking fails with `ENXIO` when none does. A thread
/// blocked in `open` for reading counts as a reader.
fn has_reader(fifo: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
    {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => false,
        Err(e) => panic!("open {} for writing: {e}", fifo.display()),
    }
}

#[tokio::test]
async fn a_fifo_or_socket_in_a_static_dir_is_404_at_once() {
    let (base, site) = setup("fifo");
    let _socket =
        std::os::unix::net::UnixListener::bind(site.join("socket")).expect("bind a socket");
    let served = serve(&base);
    let client = client();
    let get = |path: &str| client.get(format!("{}{path}", served.url)).send();

    let response = get("/site/file.txt").await.expect("GET file");
    assert_eq!(response.status(), 200);
    for path in ["/site/pipe", "/site/fifo-dir/", "/site/socket"] {
        // Well within the client's 30 s: a request stuck in `open` would
        // wait for a writer that never comes.
        let response = tokio::time::timeout(Duration::from_secs(10), get(path))
            .await
            .unwrap_or_else(|_| panic!("GET {path} did not answer within 10 s"))
            .expect("GET");
        assert_eq!(response.status(), 404, "{path}");
    }
    // No thread of the gateway is left in `open` on the FIFOs.
    assert!(!has_reader(&site.join("pipe")), "pipe is held open");
    assert!(
        !has_reader(&site.join("fifo-dir/index.html")),
        "fifo-dir/index.html is held open"
    );
    // And the gateway still serves.
    let response = get("/site/file.txt").await.expect("GET file");
    assert_eq!(response.text().await.expect("body"), "a regular file\n");
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let (base, _site) = setup("bearer");
    let served = serve(&base);
    let client = client();
    let list = |authorization: String| {
        client
            .get(format!("{}/admin/tenants/demo/handlers", served.admin))
            .header("authorization", authorization)
            .send()
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let response = list(format!("{scheme} {ROOT}")).await.expect("GET");
        assert_eq!(response.status(), 200, "{scheme}");
    }
    let response = list(format!("Basic {ROOT}")).await.expect("GET");
    assert_eq!(response.status(), 401);
    let response = list("bearer wrong".to_owned()).await.expect("GET");
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn a_route_no_request_could_match_is_400_and_logged_escaped() {
    let (base, _site) = setup("routes");
    let served = serve(&base);
    let client = client();
    let hello = std::fs::read(components::require(components::HELLO)).expect("read hello");
    let put = |name: &str, route: &str| {
        client
            .put(format!(
                "{}/admin/tenants/demo/handlers/{name}?route={route}",
                served.admin
            ))
            .bearer_auth(ROOT)
            .header("content-type", "application/wasm")
            .body(hello.clone())
            .send()
    };
    // The admin API decodes the query: an escape sequence, a space, a
    // non-ASCII name, a `%` and a character clients encode.
    for (route, says) in [
        ("/e%1b%5b31mRED", "printable ASCII"),
        ("/a%20b", "printable ASCII"),
        ("/caf%C3%A9", "printable ASCII"),
        ("/caf%25C3%25A9", "'%'"),
        ("/a%3Cb", "'<'"),
    ] {
        let response = put("red", route).await.expect("PUT");
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("JSON body");
        assert_eq!(status, 400, "{route}: {body}");
        assert_eq!(body["error"], "invalid_request", "{route}: {body}");
        let message = body["message"].as_str().expect("a message");
        assert!(message.contains(says), "{route}: {message}");
        assert!(
            message.chars().all(|c| c.is_ascii_graphic() || c == ' '),
            "{route}: {message:?}"
        );
    }
    // Nothing was deployed; a plain route still is.
    let response = put("red", "/red").await.expect("PUT");
    assert_eq!(response.status(), 201);
    let response = client
        .get(format!("{}/red", served.url))
        .send()
        .await
        .expect("GET /red");
    assert_eq!(response.status(), 200);

    // The refusals were logged, escaped: no raw escape byte in the log.
    let log_path = base.join("log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read(&log_path).expect("read log");
        let text = String::from_utf8_lossy(&log).into_owned();
        if text.contains("\\u{1b}[31mRED") || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains("\\u{1b}[31mRED"),
        "the refusal is logged, escaped:\n{text}"
    );
    assert!(!log.contains(&0x1b), "a raw escape byte reached the log");
    assert!(
        !text.contains("café"),
        "a raw non-ASCII route reached the log"
    );
}
