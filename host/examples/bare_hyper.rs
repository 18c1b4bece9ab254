//! The benchmark ceiling: a bare hyper server with the gateway's tokio and
//! hyper setup and no WebAssembly. `/hello` answers like the `hello`
//! handler; `/cpu?iters=N` runs the `cpu` handler's loop natively.
//!
//! `cargo run --release -p wasmgate --example bare_hyper -- 127.0.0.1:0`
//! prints `listening on http://ADDR`. Used by `cargo xtask bench`.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match request.uri().path() {
        "/cpu" => {
            let iters = request
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("iters="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(cpu_work::DEFAULT_ITERS);
            format!("{}\n", cpu_work::spin(iters))
        }
        _ => "hi from wasmgate: hello\n".to_owned(),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let connection = builder
            .serve_connection(TokioIo::new(stream), service_fn(handle))
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
