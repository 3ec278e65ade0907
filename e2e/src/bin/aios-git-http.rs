//! Serves the bare git repositories under a directory over git's smart HTTP protocol,
//! fetch and push, for the agent pods of a local run: each request is handed to
//! `git http-backend` (git's own CGI program) and its answer returned. Local use only:
//! anyone who reaches the address may push.
//!
//!   aios-git-http --root DIR --listen 10.88.0.1:8080   # http://10.88.0.1:8080/<repo>.git

use std::{net::SocketAddr, path::PathBuf, process::Stdio, sync::Arc};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use clap::Parser;
use tokio::io::AsyncWriteExt;

#[derive(Debug, Parser)]
#[command(
    name = "aios-git-http",
    about = "Serves bare git repositories over smart HTTP (git http-backend)"
)]
struct Args {
    /// The directory holding the bare repositories.
    #[arg(long)]
    root: PathBuf,
    /// The address to listen on.
    #[arg(long)]
    listen: SocketAddr,
}

/// The largest request body accepted (a push's pack).
const MAX_BODY: usize = 512 * 1024 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = Arc::new(std::fs::canonicalize(&args.root)?);
    let app = Router::new().fallback(backend).with_state(root);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "aios-git-http: serving {} on http://{}",
        args.root.display(),
        args.listen
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// One request, through `git http-backend`.
async fn backend(
    State(root): State<Arc<PathBuf>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(err) => return (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
    };
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root.as_os_str())
        .env("GIT_HTTP_EXPORT_ALL", "1")
        // A remote user turns on receive-pack (push), which is off for anonymous users.
        .env("REMOTE_USER", "aios")
        .env("REMOTE_ADDR", peer.ip().to_string())
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, value) in cgi_variables(&parts.headers) {
        command.env(name, value);
    }
    match run(command, body).await {
        Ok(out) => cgi_response(&out),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

/// Runs the CGI program with `body` on its stdin; its stdout.
async fn run(mut command: tokio::process::Command, body: Bytes) -> std::io::Result<Vec<u8>> {
    let mut child = command.spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin"))?;
    // Written while the output is read: a large answer must not block a large request.
    let writer = tokio::spawn(async move {
        let written = stdin.write_all(&body).await;
        drop(stdin);
        written
    });
    let out = child.wait_with_output().await?;
    writer.await.map_err(std::io::Error::other)??;
    Ok(out.stdout)
}

/// The request headers as CGI variables: `CONTENT_TYPE`, and `HTTP_<NAME>` for the
/// others (git reads `HTTP_CONTENT_ENCODING` and `HTTP_GIT_PROTOCOL`).
fn cgi_variables(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?.to_owned();
            let upper = name.as_str().to_ascii_uppercase().replace('-', "_");
            Some(match upper.as_str() {
                "CONTENT_TYPE" => (upper, value),
                "CONTENT_LENGTH" => return None,
                _ => (format!("HTTP_{upper}"), value),
            })
        })
        .collect()
}

/// A CGI program's output as an HTTP response: its header lines (`Status:` among
/// them), a blank line, the body.
fn cgi_response(out: &[u8]) -> Response {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            out.windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        });
    let Some((end, body_start)) = split else {
        return (
            StatusCode::BAD_GATEWAY,
            "git http-backend answered without headers",
        )
            .into_response();
    };
    let mut status = StatusCode::OK;
    let mut headers = HeaderMap::new();
    for line in String::from_utf8_lossy(&out[..end]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            if let Some(code) = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                status = code;
            }
        } else if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.trim()),
            HeaderValue::try_from(value),
        ) {
            headers.append(name, value);
        }
    }
    (status, headers, Body::from(out[body_start..].to_vec())).into_response()
}
