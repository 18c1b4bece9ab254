//! Uploads to the admin API against the real `wasmgate serve` process:
//! what is not a component is refused before anything reaches the data
//! dir, and parallel uploads are admitted against one byte budget
//! (2 x `admin.max_upload_bytes`), so the server's memory stays bounded
//! however many arrive, and the budget is whole again once they are done.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::Served;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROOT: &str = "root-secret-for-upload-tests";

/// `wasmgate serve` on `config` (in `dir`) with the root token `ROOT`.
async fn serve(dir: &Path, config: &str) -> Served {
    let mut command = common::serve_config(dir, config);
    command.env("WASMGATE_ADMIN_TOKEN", ROOT);
    tokio::task::spawn_blocking(move || Served::spawn(&mut command))
        .await
        .expect("startup lines")
}

/// Every file under `dir`, recursively, as paths relative to it.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, found);
            } else {
                let relative = path.strip_prefix(root).unwrap_or(&path);
                found.push(relative.display().to_string());
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, dir, &mut found);
    found.sort();
    found
}

/// `VmRSS` or `VmHWM` (peak) of process `pid`, in bytes.
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    kib * 1024
}

/// A `PUT` of handler `name` of tenant `demo` sent by hand: the head
/// declares `declared` bytes, of which `body` is sent.
fn head(name: &str, declared: usize) -> String {
    format!(
        "PUT /admin/tenants/demo/handlers/{name}?route=/{name} HTTP/1.1\r\n\
         Host: admin\r\nAuthorization: Bearer {ROOT}\r\n\
         Content-Type: application/wasm\r\nContent-Length: {declared}\r\n\r\n"
    )
}

/// Sends `body` whole as handler `name`, reading the answer while it
/// writes (the gateway may answer before it has read everything): the
/// answer's head and body.
async fn put_raw(admin: String, name: String, body: Arc<Vec<u8>>) -> String {
    let stream = TcpStream::connect(admin.trim_start_matches("http://"))
        .await
        .expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = head(&name, body.len());
    let writer = tokio::spawn(async move {
        // The gateway stops reading a refused body: the write then fails.
        if write.write_all(head.as_bytes()).await.is_ok() {
            let _ = write.write_all(&body).await;
        }
        write
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), read.read_to_end(&mut answer)).await;
    writer.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status of a raw answer (0 when there was none).
fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_uploads_are_refused_before_anything_reaches_the_data_dir() {
    let dir = common::scratch("uploads-junk");
    let gw = serve(&dir, "[[tenant]]\nname = \"demo\"\n").await;
    let data = dir.join("wasmgate-data");
    let before = tree(&data);
    let client = reqwest::Client::new();
    let uploads = (0..3).map(|i| {
        let request = client
            .put(format!(
                "{}/admin/tenants/demo/handlers/junk{i}?route=/junk{i}",
                gw.admin
            ))
            .bearer_auth(ROOT)
            .header("content-type", "application/wasm")
            .body(vec![b'j'; 20_000_000]);
        async move {
            let response = request.send().await.expect("upload");
            (
                response.status().as_u16(),
                response.text().await.expect("body"),
            )
        }
    });
    for (status, body) in futures_join(uploads).await {
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("invalid_component"), "{body}");
        assert!(
            body.contains(r#"not a WebAssembly file (it starts with \"jjjjjjjj\""#),
            "{body}"
        );
    }
    assert_eq!(tree(&data), before, "nothing of the junk stays, anywhere");
    assert!(
        !data.join("staging").exists(),
        "refused before it was staged for a compile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_uploads_past_the_budget_get_503_and_memory_stays_bounded() {
    const MAX: usize = 8 << 20;
    const UPLOADS: usize = 24;
    let dir = common::scratch("uploads-budget");
    let gw = serve(
        &dir,
        &format!("[admin]\nmax_upload_bytes = {MAX}\n\n[[tenant]]\nname = \"demo\"\n"),
    )
    .await;
    let pid = gw.child.id();
    let rss_before = memory(pid, "VmRSS");

    // 24 x 8 MiB at once against a budget of 16 MiB: only two fit at a
    // time; the rest are told to come back.
    let junk = Arc::new(vec![0u8; MAX]);
    let answers = futures_join(
        (0..UPLOADS).map(|i| put_raw(gw.admin.clone(), format!("u{i}"), Arc::clone(&junk))),
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(|a| status_of(a)).collect();
    // Unbounded, the bodies alone would be 24 x 8 MiB = 192 MiB (read
    // whole, then copied): the budget holds them to 16 MiB.
    let peak = memory(pid, "VmHWM").saturating_sub(rss_before);
    assert!(peak < 64 << 20, "the server grew by {} MiB", peak >> 20);

    assert!(
        statuses.iter().all(|s| [400, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&400), "some were read: {statuses:?}");
    let busy = answers
        .iter()
        .find(|a| status_of(a) == 503)
        .unwrap_or_else(|| panic!("some were refused: {statuses:?}"));
    assert!(busy.contains("\"busy\""), "{busy}");
    assert!(
        busy.to_ascii_lowercase().contains("retry-after: 2"),
        "{busy}"
    );
    assert!(busy.contains("2 x admin.max_upload_bytes"), "{busy}");
    // The budget is whole again: a body that declares all of one half
    // and stalls is admitted, and so is a full upload of the other half.
    let mut holder = TcpStream::connect(gw.admin.trim_start_matches("http://"))
        .await
        .expect("connect");
    holder
        .write_all(head("holder", MAX).as_bytes())
        .await
        .expect("write head");
    holder.write_all(b"\0asm").await.expect("write");
    // Admitted and waiting for its bytes: no answer comes.
    let mut buf = [0; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), holder.read(&mut buf)).await;
    assert!(early.is_err(), "the holder was answered: {early:?}");
    let mut second = String::new();
    for _ in 0..50 {
        // The refused uploads' connections may still be closing.
        second = put_raw(gw.admin.clone(), "second".into(), Arc::clone(&junk)).await;
        if status_of(&second) != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status_of(&second), 400, "{second}");
    let still = tokio::time::timeout(Duration::from_millis(100), holder.read(&mut buf)).await;
    assert!(
        still.is_err(),
        "the holder was refused after all: {still:?}"
    );
}

/// Runs `futures` concurrently (each on a task of its own) and returns
/// their outputs in order.
async fn futures_join<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outputs.push(task.await.expect("task"));
    }
    outputs
}
