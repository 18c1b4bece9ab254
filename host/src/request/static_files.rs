//! Static files: a tenant's directory served read-only under a route
//! (`[[tenant.static]]`), by the host, without a guest.
//!
//! What it answers: `GET` and `HEAD` (anything else 405 with `Allow`), the
//! content type by extension, a strong `ETag` and `Last-Modified` with
//! `If-None-Match` / `If-Modified-Since` -> 304, one byte range -> 206
//! (several ranges get the whole file, 200; an unsatisfiable one 416), a
//! directory's `index.html` (no listings; a directory asked for without its
//! trailing `/` is 301 to it). Everything else is 404.
//!
//! Nothing outside the directory is reachable: the path is percent-decoded
//! once, and a decoded `..` or `.` segment, a backslash or a NUL is 404;
//! the file is then resolved with every link followed and must still lie
//! inside the directory's canonical path, so a link pointing out of the
//! directory is 404 too. Hidden files and folders (a name starting with
//! `.`, such as `.git` or `.env`, asked for or reached through a link) are
//! 404 too, except `.well-known` (RFC 8615), which exists to be served.
//!
//! Files are opened and read on tokio's blocking threads (`tokio::fs`) and
//! streamed in pieces of [`CHUNK`] bytes as the client takes them, so a
//! large file costs one piece of memory, and the server's write clock
//! applies as to any response. Static bodies are not held in memory and so
//! do not count against `server.max_buffered_bytes`.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};

use crate::control::table::StaticMount;
use crate::request::body::ResponseBody;

/// The most of a file read and handed to hyper at once.
pub const CHUNK: usize = 64 << 10;

/// A file opened for a request, with what the headers need.
struct Opened {
    /// The open file.
    file: std::fs::File,
    /// Its canonical path, for the content type.
    path: PathBuf,
    /// Its length in bytes.
    size: u64,
    /// Its modification time.
    modified: SystemTime,
    /// It is a directory's `index.html`.
    directory: bool,
}

impl StaticMount {
    /// Answers a request routed to this mount.
    pub async fn serve(&self, head: &http::request::Parts) -> Response<ResponseBody> {
        if head.method != Method::GET && head.method != Method::HEAD {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let Some(relative) = relative_path(&self.route, head.uri.path()) else {
            return not_found();
        };
        let root = self.root.clone();
        let opened = tokio::task::spawn_blocking(move || open_within(&root, &relative)).await;
        let Ok(Some(opened)) = opened else {
            return not_found();
        };
        if opened.directory && !head.uri.path().ends_with('/') {
            return to_directory(head);
        }
        respond(opened, head).await
    }
}

/// The file path below the mount that `path` (as sent, percent-encoded)
/// names, or `None` when it is not a plain path inside it.
fn relative_path(route: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let rest = path.strip_prefix(route)?;
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(rest).collect();
    let mut relative = PathBuf::new();
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" => {}
            b"." | b".." => return None,
            s if s.contains(&b'\\') || s.contains(&0) || is_hidden(s) => return None,
            s => relative.push(std::ffi::OsStr::from_bytes(s)),
        }
    }
    Some(relative)
}

/// A file or folder name that is not served: one starting with `.`
/// (`.git`, `.env`, `.htpasswd`), except `.well-known`.
fn is_hidden(name: &[u8]) -> bool {
    name.starts_with(b".") && name != b".well-known"
}

/// Whether `path` (canonical) lies inside `root` (canonical) with no hidden
/// name on the way, so a link cannot lead to a dotfile either.
fn servable(root: &Path, path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    path.strip_prefix(root).is_ok_and(|inside| {
        inside
            .components()
            .all(|c| !is_hidden(c.as_os_str().as_bytes()))
    })
}

/// Opens `relative` under `root` (a directory's `index.html` for a
/// directory), with links followed, if it is a regular file that lies
/// inside `root` with no hidden name on its way. Blocking, but never for
/// long: see [`open_nonblocking`].
fn open_within(root: &Path, relative: &Path) -> Option<Opened> {
    let path = std::fs::canonicalize(root.join(relative)).ok()?;
    if !servable(root, &path) {
        return None;
    }
    let (file, meta) = open_nonblocking(&path)?;
    if meta.is_dir() {
        let index = std::fs::canonicalize(path.join("index.html")).ok()?;
        if !servable(root, &index) {
            return None;
        }
        let (file, meta) = open_nonblocking(&index)?;
        return regular(file, &meta, index, true);
    }
    regular(file, &meta, path, false)
}

/// Opens `path` read-only with `O_NONBLOCK`, with its metadata as of the
/// open handle.
///
/// A FIFO's `open` waits for a writer, forever if none comes, holding a
/// blocking thread all along; a device's may wait too. `O_NONBLOCK` makes
/// `open` return at once, and the type is taken from the handle (no window
/// between check and open), so the caller refuses what is not a regular
/// file. The flag stays set: reads of a regular file ignore it.
fn open_nonblocking(path: &Path) -> Option<(std::fs::File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    Some((file, meta))
}

/// `file` as [`Opened`] if it is a regular file: never a FIFO, socket or
/// device.
fn regular(
    file: std::fs::File,
    meta: &std::fs::Metadata,
    path: PathBuf,
    directory: bool,
) -> Option<Opened> {
    meta.is_file().then(|| Opened {
        file,
        path,
        size: meta.len(),
        modified: meta.modified().unwrap_or(UNIX_EPOCH),
        directory,
    })
}

/// The response for an opened file: 200, 206, 304 or 416.
async fn respond(opened: Opened, head: &http::request::Parts) -> Response<ResponseBody> {
    let Opened {
        file,
        path,
        size,
        modified,
        directory: _,
    } = opened;
    let since_epoch = modified.duration_since(UNIX_EPOCH).unwrap_or_default();
    // Strong: size and modification time to the nanosecond change whenever
    // the bytes do, short of a same-size rewrite within the file system's
    // time resolution (the trade nginx and Apache make as well); a strong
    // tag lets clients resume downloads with If-Range.
    let etag = format!("\"{size:x}-{:x}\"", since_epoch.as_nanos());
    // HTTP dates have whole seconds.
    let modified = UNIX_EPOCH + std::time::Duration::from_secs(since_epoch.as_secs());
    let last_modified = httpdate::fmt_http_date(modified);
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    if let Ok(value) = HeaderValue::from_str(&last_modified) {
        headers.insert(header::LAST_MODIFIED, value);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    if not_modified(&head.headers, &etag, modified) {
        return with_headers(StatusCode::NOT_MODIFIED, headers, ResponseBody::default());
    }
    let mime = mime_guess::from_path(&path).first_or_octet_stream();
    if let Ok(value) = HeaderValue::from_str(mime.as_ref()) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    let range = match head.headers.get(header::RANGE) {
        Some(range) if if_range_holds(&head.headers, &etag, &last_modified) => {
            parse_range(range.to_str().unwrap_or(""), size)
        }
        _ => Range::Full,
    };
    let (status, start, length) = match range {
        Range::Full => (StatusCode::OK, 0, size),
        Range::Part { start, end } => {
            let content_range = format!("bytes {start}-{end}/{size}");
            if let Ok(value) = HeaderValue::from_str(&content_range) {
                headers.insert(header::CONTENT_RANGE, value);
            }
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Range::Unsatisfiable => {
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                headers.insert(header::CONTENT_RANGE, value);
            }
            headers.remove(header::CONTENT_TYPE);
            return with_headers(
                StatusCode::RANGE_NOT_SATISFIABLE,
                headers,
                ResponseBody::from("range not satisfiable\n"),
            );
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if head.method == Method::HEAD || length == 0 {
        return with_headers(status, headers, ResponseBody::default());
    }
    let mut file = tokio::fs::File::from_std(file);
    if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
        return not_found();
    }
    let body = FileBody {
        file,
        left: length,
        buffer: vec![0; CHUNK.min(usize::try_from(length).unwrap_or(CHUNK))],
    };
    with_headers(status, headers, ResponseBody::streaming(body))
}

/// Whether the client's copy is current: `If-None-Match` when sent (weak
/// comparison, RFC 9110 13.1.2), else `If-Modified-Since`.
fn not_modified(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    if let Some(tags) = headers.get(header::IF_NONE_MATCH) {
        let Ok(tags) = tags.to_str() else {
            return false;
        };
        return tags
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag);
    }
    headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| modified <= since)
}

/// Whether a `Range` is to be honoured: no `If-Range`, or one that names
/// this version exactly (strong tag or the `Last-Modified` date).
fn if_range_holds(headers: &HeaderMap, etag: &str, last_modified: &str) -> bool {
    match headers.get(header::IF_RANGE).map(HeaderValue::to_str) {
        None => true,
        Some(Ok(value)) => value == etag || value == last_modified,
        Some(Err(_)) => false,
    }
}

/// What a `Range` header asks of a file.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// The whole file: no range, several ranges, or one we ignore as
    /// malformed (RFC 9110 14.2 allows ignoring).
    Full,
    /// Bytes `start..=end`.
    Part {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// A well-formed range that no byte of the file satisfies.
    Unsatisfiable,
}

fn parse_range(header: &str, size: u64) -> Range {
    let Some(spec) = header
        .split_once('=')
        .filter(|(unit, _)| unit.trim().eq_ignore_ascii_case("bytes"))
        .map(|(_, spec)| spec.trim())
    else {
        return Range::Full;
    };
    if spec.contains(',') {
        return Range::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Range::Full;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // `-N`: the last N bytes.
        return match number(last) {
            None => Range::Full,
            Some(0) => Range::Unsatisfiable,
            Some(_) if size == 0 => Range::Unsatisfiable,
            Some(n) => Range::Part {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        };
    }
    // `A-` or `A-B`.
    let Some(start) = number(first) else {
        return Range::Full;
    };
    let end = match (last.is_empty(), number(last)) {
        (true, _) => None,
        (false, Some(end)) if end >= start => Some(end),
        (false, _) => return Range::Full,
    };
    if start >= size {
        return Range::Unsatisfiable;
    }
    Range::Part {
        start,
        end: end.map_or(size - 1, |end| end.min(size - 1)),
    }
}

fn with_headers(
    status: StatusCode,
    headers: HeaderMap,
    body: ResponseBody,
) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    with_headers(status, headers, ResponseBody::from(text))
}

/// 301 to the same path with a `/` added, so that the relative links of a
/// directory's `index.html` resolve inside the directory.
fn to_directory(head: &http::request::Parts) -> Response<ResponseBody> {
    // One leading slash only: `//host/` would send the client elsewhere.
    let path = format!("/{}/", head.uri.path().trim_start_matches('/'));
    let location = match head.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut response = plain(StatusCode::MOVED_PERMANENTLY, "moved permanently\n");
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn not_found() -> Response<ResponseBody> {
    plain(StatusCode::NOT_FOUND, "not found\n")
}

/// `left` bytes of a file from its current position, read as hyper asks
/// for them, one [`CHUNK`] at a time.
struct FileBody {
    /// The file, positioned at the next byte to send.
    file: tokio::fs::File,
    /// Bytes still to send.
    left: u64,
    /// Where one piece is read into.
    buffer: Vec<u8>,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let want = this
            .buffer
            .len()
            .min(usize::try_from(this.left).unwrap_or(usize::MAX));
        let mut read = ReadBuf::new(&mut this.buffer[..want]);
        match Pin::new(&mut this.file).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                let piece = Bytes::copy_from_slice(read.filled());
                this.left -= piece.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            // Shorter than it was when opened, or unreadable: end early.
            // The response is then shorter than its Content-Length, which
            // hyper and clients treat as a broken response, not a whole one.
            outcome => {
                tracing::warn!(
                    "static file ended {} bytes early: {:?}",
                    this.left,
                    outcome.map(|r| r.err())
                );
                this.left = 0;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_decoded_once_and_must_stay_inside() {
        let table: &[(&str, Option<&str>)] = &[
            ("/assets", Some("")),
            ("/assets/", Some("")),
            ("/assets/a/b.txt", Some("a/b.txt")),
            ("/assets//a", Some("a")),
            ("/assets/a%20b.txt", Some("a b.txt")),
            ("/assets/%252e%252e/x", Some("%2e%2e/x")),
            ("/assets/../x", None),
            ("/assets/a/../../x", None),
            ("/assets/%2e%2e/x", None),
            ("/assets/%2E%2E%2Fx", None),
            ("/assets/./x", None),
            ("/assets/a%5c..%5cx", None),
            ("/assets/a\\x", None),
            ("/assets/a%00.txt", None),
            ("/assets/.env", None),
            ("/assets/.git/config", None),
            ("/assets/a/%2egit/HEAD", None),
            ("/assets/..x", None),
            (
                "/assets/.well-known/security.txt",
                Some(".well-known/security.txt"),
            ),
            ("/assets/a.b/c.d", Some("a.b/c.d")),
            ("/other/x", None),
        ];
        for (path, want) in table {
            let got = relative_path("/assets", path);
            assert_eq!(got.as_deref(), want.map(Path::new), "{path}");
        }
    }

    /// Runs `open_within` on a thread of its own, so a test that would
    /// block in `open` fails instead of hanging.
    fn open_soon(root: &Path, relative: &str) -> Option<Option<PathBuf>> {
        let (root, relative) = (root.to_owned(), PathBuf::from(relative));
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(open_within(&root, &relative).map(|o| o.path));
        });
        receiver
            .recv_timeout(std::time::Duration::from_secs(10))
            .ok()
    }

    #[test]
    fn only_regular_files_are_opened_and_nothing_waits() {
        let dir = std::env::temp_dir().join(format!("wasmgate-static-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("fifo-dir")).expect("create dir");
        let root = std::fs::canonicalize(&dir).expect("canonical");
        std::fs::write(root.join("file.txt"), "x").expect("write");
        let made = std::process::Command::new("mkfifo")
            .arg(root.join("pipe"))
            .arg(root.join("fifo-dir/index.html"))
            .status()
            .expect("run mkfifo");
        assert!(made.success(), "mkfifo failed");
        let _socket =
            std::os::unix::net::UnixListener::bind(root.join("socket")).expect("bind a socket");

        assert_eq!(
            open_soon(&root, "file.txt"),
            Some(Some(root.join("file.txt")))
        );
        for relative in ["pipe", "fifo-dir", "socket"] {
            assert_eq!(open_soon(&root, relative), Some(None), "{relative}");
        }
        // A device: /dev/null lies inside /dev.
        assert_eq!(open_soon(Path::new("/dev"), "null"), Some(None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        use Range::*;
        let table: &[(&str, u64, Range)] = &[
            ("bytes=0-9", 100, Part { start: 0, end: 9 }),
            ("bytes=90-", 100, Part { start: 90, end: 99 }),
            ("bytes=90-200", 100, Part { start: 90, end: 99 }),
            ("bytes=-10", 100, Part { start: 90, end: 99 }),
            ("bytes=-200", 100, Part { start: 0, end: 99 }),
            ("BYTES = 1-1", 100, Part { start: 1, end: 1 }),
            ("bytes=100-", 100, Unsatisfiable),
            ("bytes=-0", 100, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=0-1,5-6", 100, Full),
            ("bytes=5-1", 100, Full),
            ("bytes=a-b", 100, Full),
            ("bytes=-", 100, Full),
            ("bytes=+1-2", 100, Full),
            ("items=0-1", 100, Full),
            ("", 100, Full),
        ];
        for (header, size, want) in table {
            assert_eq!(parse_range(header, *size), *want, "{header} of {size}");
        }
    }

    #[test]
    fn conditionals_compare_tags_weakly_and_dates_by_second() {
        let etag = "\"a-1\"";
        let modified = UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let headers = |name: header::HeaderName, value: &str| {
            let mut map = HeaderMap::new();
            map.insert(name, HeaderValue::from_str(value).expect("valid value"));
            map
        };
        assert!(not_modified(
            &headers(header::IF_NONE_MATCH, "\"a-1\""),
            etag,
            modified
        ));
        assert!(not_modified(
            &headers(header::IF_NONE_MATCH, "\"x\", W/\"a-1\""),
            etag,
            modified
        ));
        assert!(not_modified(
            &headers(header::IF_NONE_MATCH, "*"),
            etag,
            modified
        ));
        assert!(!not_modified(
            &headers(header::IF_NONE_MATCH, "\"a-2\""),
            etag,
            modified
        ));
        let date = httpdate::fmt_http_date(modified);
        assert!(not_modified(
            &headers(header::IF_MODIFIED_SINCE, &date),
            etag,
            modified
        ));
        let earlier = httpdate::fmt_http_date(modified - std::time::Duration::from_secs(1));
        assert!(!not_modified(
            &headers(header::IF_MODIFIED_SINCE, &earlier),
            etag,
            modified
        ));
        // If-None-Match wins over If-Modified-Since.
        let mut both = headers(header::IF_NONE_MATCH, "\"other\"");
        both.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_str(&date).expect("date"),
        );
        assert!(!not_modified(&both, etag, modified));
    }
}
