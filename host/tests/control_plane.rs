//! The control plane under attack: uploads compile in a bounded child
//! process outside the writer (a compile past `admin.compile_timeout_ms`
//! is refused naming the bound, leaves nothing on disk, and is remembered
//! so a retry costs nothing), and a start never depends on the code cache
//! alone without saying so.
//!
//! The compile bomb these tests upload is small to send and slow to
//! compile: a component instantiating a core module whose functions push
//! many constants before adding them up, so every value is live at once.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Served, serve_command};
use wasmgate_handler_components as components;

const ROOT: &str = "root-secret-for-compile-tests";

/// `wasmgate serve` on `config` with the root token `ROOT`.
fn serve(dir: &Path, config: &str) -> Served {
    let mut command = common::serve_config(dir, config);
    command.env("WASMGATE_ADMIN_TOKEN", ROOT);
    Served::spawn(&mut command)
}

/// `wasmgate serve` in a fresh folder `name` with `[admin]` `keys` and a
/// tenant `demo`.
fn serve_demo(name: &str, keys: &str) -> (std::path::PathBuf, Served) {
    let dir = common::scratch(name);
    let gw = serve(
        &dir,
        &format!("[admin]\n{keys}\n\n[[tenant]]\nname = \"demo\"\n"),
    );
    (dir, gw)
}

/// PUTs `bytes` as handler `name` of tenant `demo` at `/{name}`: status
/// and body.
async fn upload(gw: &Served, name: &str, bytes: Vec<u8>) -> (u16, String) {
    upload_to(gw, "demo", name, bytes).await
}

/// PUTs `bytes` as handler `name` of `tenant` at `/{name}`.
async fn upload_to(gw: &Served, tenant: &str, name: &str, bytes: Vec<u8>) -> (u16, String) {
    let route = format!("/{name}");
    common::put_component(&gw.admin, ROOT, (tenant, name, &route), bytes).await
}

/// The files in `dir` (none if it does not exist).
fn files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).map_or_else(
        |_| Vec::new(),
        |entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_past_its_timeout_is_refused_remembered_and_leaves_nothing() {
    // 1 ms: no component compiles that fast, so every upload crosses it.
    let (dir, gw) = serve_demo("compile-timeout", "compile_timeout_ms = 1");
    let hello = std::fs::read(components::require(components::HELLO)).expect("hello");
    let (status, body) = upload(&gw, "hello", hello.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("admin.compile_timeout_ms (1 ms)") && body.contains("invalid_component"),
        "{body}"
    );
    let data = dir.join("wasmgate-data");
    assert_eq!(files(&data.join("components")), Vec::<String>::new());
    assert_eq!(files(&data.join("staging")), Vec::<String>::new());
    // The same bytes again: refused at once with the same reason, from
    // memory (a compile would cost at least the child's start).
    let started = Instant::now();
    let (again, body_again) = upload(&gw, "hello", hello).await;
    assert_eq!((again, body_again), (status, body));
    assert!(started.elapsed() < Duration::from_secs(1));
    // The handler was never created.
    let response = reqwest::get(format!("{}/hello", gw.url))
        .await
        .expect("get");
    assert_eq!(response.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_the_child_refuses_is_refused_with_its_reason() {
    let (dir, gw) = serve_demo("compile-refused", "");
    // A valid wasm module header, but a core module, not a component.
    let (status, body) = upload(&gw, "core", b"\0asm\x01\0\0\0".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_component"), "{body}");
    assert!(body.contains("core"), "the child's own reason: {body}");
    let data = dir.join("wasmgate-data");
    assert_eq!(files(&data.join("components")), Vec::<String>::new());
    assert_eq!(files(&data.join("staging")), Vec::<String>::new());
    // A good upload right after is compiled, stored and served.
    let hello = std::fs::read(components::require(components::HELLO)).expect("hello");
    let (status, body) = upload(&gw, "hello", hello).await;
    assert_eq!(status, 201, "{body}");
    let response = reqwest::get(format!("{}/hello", gw.url))
        .await
        .expect("get");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(files(&data.join("components")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_component_gone_from_the_data_dir_is_a_warning_then_a_clear_error() {
    let dir = common::scratch("compile-missing");
    let config = "[[tenant]]\nname = \"demo\"\n";
    let hello = std::fs::read(components::require(components::HELLO)).expect("hello");
    {
        let gw = serve(&dir, config);
        let (status, body) = upload(&gw, "hello", hello).await;
        assert_eq!(status, 201, "{body}");
    }
    let data = dir.join("wasmgate-data");
    for file in files(&data.join("components")) {
        std::fs::remove_file(data.join("components").join(file)).expect("remove");
    }
    // The code cache alone still has it: the gateway starts, serves, and
    // says what is missing.
    let path = dir.join("wasmgate.toml");
    let mut command = serve_command();
    command
        .arg("--config")
        .arg(&path)
        .env("WASMGATE_ADMIN_TOKEN", ROOT)
        .stderr(std::process::Stdio::piped());
    let mut gw = Served::spawn(&mut command);
    let response = reqwest::get(format!("{}/hello", gw.url))
        .await
        .expect("get");
    assert_eq!(response.status().as_u16(), 200);
    let _ = gw.child.kill();
    let mut output = String::new();
    if let Some(mut stderr) = gw.child.stderr.take() {
        use std::io::Read;
        let _ = stderr.read_to_string(&mut output);
    }
    assert!(
        output.contains("component missing from the data dir"),
        "{output}"
    );
    // Without the cache too, the start fails and names the handler.
    std::fs::remove_dir_all(data.join("cache")).expect("clear the cache");
    let output = std::process::Command::new(common::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .expect("run serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tenant \"demo\" handler \"hello\""),
        "{stderr}"
    );
}

/// The compile bomb: `funcs` functions of `per` constants each. It fits no
/// world (it exports nothing), but only after it has been compiled.
fn bomb(funcs: u32, per: u32) -> Vec<u8> {
    fn leb(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    let mut bodies = Vec::new();
    leb(u64::from(funcs), &mut bodies);
    for f in 0..funcs {
        // No locals; `i32.const k` (a small positive LEB) each, then adds.
        let mut code = vec![0];
        for k in 0..per {
            code.push(0x41);
            leb(
                u64::from((k.wrapping_mul(2_654_435_761) ^ f) & 0x3f_ffff),
                &mut code,
            );
        }
        code.extend(std::iter::repeat_n(0x6a, per as usize - 1));
        code.push(0x0b);
        leb(code.len() as u64, &mut bodies);
        bodies.extend(code);
    }
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 1, 0x7f], &mut module);
    let mut functions = Vec::new();
    leb(u64::from(funcs), &mut functions);
    functions.extend(std::iter::repeat_n(0, funcs as usize));
    section(3, &functions, &mut module);
    section(10, &bodies, &mut module);
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component);
    // Instantiated, so the engine compiles it.
    section(2, &[1, 0, 0, 0], &mut component);
    component
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_past_its_memory_cap_is_refused_naming_it() {
    let (_dir, gw) = serve_demo("compile-memory", "compile_memory_bytes = 67108864");
    // About 200 MB to compile.
    let (status, body) = upload(&gw, "bomb", bomb(8, 125_000)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("admin.compile_memory_bytes"), "{body}");
    // The cap leaves room for ordinary components.
    let hello = std::fs::read(components::require(components::HELLO)).expect("hello");
    let (status, body) = upload(&gw, "hello", hello).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_compile_holds_up_no_other_tenants_deploy() {
    let dir = common::scratch("compile-other-tenant");
    let gw = serve(
        &dir,
        "[[tenant]]\nname = \"slow\"\nhosts = [\"slow\"]\n\n\
         [[tenant]]\nname = \"demo\"\nhosts = [\"demo\"]\n",
    );
    let bomb = bomb(8, 60_000);
    let slow = {
        let admin = gw.admin.clone();
        tokio::spawn(async move {
            let response = reqwest::Client::new()
                .put(format!(
                    "{admin}/admin/tenants/slow/handlers/bomb?route=/bomb"
                ))
                .bearer_auth(ROOT)
                .header("content-type", "application/wasm")
                .body(bomb)
                .send()
                .await
                .expect("upload");
            (response.status().as_u16(), Instant::now())
        })
    };
    // Well into the bomb's compile (seconds), another tenant deploys.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hello = std::fs::read(components::require(components::HELLO)).expect("hello");
    let (status, body) = upload_to(&gw, "demo", "hello", hello).await;
    let deployed = Instant::now();
    assert_eq!(status, 201, "{body}");
    let (slow_status, slow_done) = slow.await.expect("the slow upload");
    assert_eq!(slow_status, 400, "the bomb fits no world");
    assert!(
        deployed < slow_done,
        "the other tenant's deploy waited for the slow compile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_fresh_forgets_what_the_api_deployed_and_keeps_the_file() {
    let dir = common::scratch("compile-fresh");
    let config = format!(
        "[[tenant]]\nname = \"demo\"\n\n[[tenant.handler]]\nname = \"hello\"\n\
         route = \"/hello\"\ncomponent = \"{}\"\n",
        components::require(components::HELLO)
    );
    let hello = std::fs::read(components::require(components::HELLO)).expect("hello");
    {
        let gw = serve(&dir, &config);
        let (status, body) = upload(&gw, "api", hello).await;
        assert_eq!(status, 201, "{body}");
    }
    let get = async |gw: &Served, path: &str| {
        reqwest::get(format!("{}{path}", gw.url))
            .await
            .expect("get")
            .status()
            .as_u16()
    };
    // A plain restart keeps the API's handler.
    let gw = serve(&dir, &config);
    assert_eq!(
        (get(&gw, "/api").await, get(&gw, "/hello").await),
        (200, 200)
    );
    drop(gw);
    let mut command = common::serve_config(&dir, &config);
    command.arg("--fresh").env("WASMGATE_ADMIN_TOKEN", ROOT);
    let gw = Served::spawn(&mut command);
    assert_eq!(
        (get(&gw, "/api").await, get(&gw, "/hello").await),
        (404, 200)
    );
    let data = dir.join("wasmgate-data");
    assert_eq!(files(&data.join("components")).len(), 1, "only the file's");
}
