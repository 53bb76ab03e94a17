//! The agent's exec endpoint (kubelet's `/exec/{ns}/{pod}/{container}
//! ?command=...&stdin=&stdout=&stderr=&tty=`), which the masters proxy
//! `kubectl exec` to: a WebSocket speaking Kubernetes' channel protocol
//! (`v5.channel.k8s.io`, or `v4`): each binary message starts with its
//! channel (0 stdin, 1 stdout, 2 stderr, 3 the final status, 4 terminal
//! resize; v5 adds 255, "close this channel", which ends stdin). The
//! command runs in the container through the runtime; when its output ends
//! the endpoint sends its exit as a `Status` on channel 3 (`Success`, or
//! `NonZeroExitCode` with the code, which kubectl exits with) and closes.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::Ctx;
use crate::runtime::{ExecCommand, OutputStream, RuntimeError};

/// The channel protocols served, most preferred first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
/// v5: the next byte names a channel the peer will send no more on.
const CLOSE: u8 = 255;

/// What the query asks for.
#[derive(Debug, Default, PartialEq)]
pub struct ExecQuery {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecQuery {
    /// Parses `command=a&command=b&stdin=true...` (every `command` an
    /// argument, in order).
    pub fn parse(q: &str) -> ExecQuery {
        let mut e = ExecQuery::default();
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            let on = matches!(&*v, "true" | "1" | "True");
            match &*k {
                "command" => e.command.push(v.into_owned()),
                "stdin" => e.stdin = on,
                "stdout" => e.stdout = on,
                "stderr" => e.stderr = on,
                "tty" => e.tty = on,
                _ => {}
            }
        }
        e
    }
}

/// The final status as the API server's `Status`: Success, or Failure
/// with the exit code (`NonZeroExitCode`) or why the command did not run.
pub fn status(r: &Result<i32, RuntimeError>, argv: &[String]) -> serde_json::Value {
    match r {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command {argv:?}, exit code {code}"
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => json!({
            "metadata": {},
            "status": "Failure",
            "message": e.to_string(),
            "reason": "InternalError",
            "code": 500,
        }),
    }
}

fn err(code: StatusCode, msg: String) -> Response {
    (code, msg).into_response()
}

/// `GET /exec/{namespace}/{pod}/{container}` with a WebSocket upgrade.
pub async fn handle(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let q = ExecQuery::parse(q.as_deref().unwrap_or(""));
    if q.command.is_empty() {
        return err(StatusCode::BAD_REQUEST, "no command given".into());
    }
    let key = format!("{ns}/{pod}/{container}");
    let entry = ctx.running.lock().expect("running lock").get(&key).cloned();
    let Some((handle, config)) = entry else {
        return err(
            StatusCode::NOT_FOUND,
            format!(
                "container {container:?} of pod {ns}/{pod} is not running on node {}",
                ctx.cfg.name
            ),
        );
    };
    let Some(sandbox) = ctx
        .pods
        .lock()
        .expect("pods lock")
        .get(&format!("{ns}/{pod}"))
        .cloned()
    else {
        return err(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not running on node {}", ctx.cfg.name),
        );
    };
    if !ctx.runtime.is_running(&handle).await {
        return err(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} of pod {ns}/{pod} is not running"),
        );
    }
    let ws = ws.protocols(PROTOCOLS);
    let v5 = ws
        .selected_protocol()
        .is_some_and(|p| p.as_bytes() == PROTOCOLS[0].as_bytes());
    let span = tracing::info_span!("exec", pod = %format!("{ns}/{pod}"), %container);
    ws.on_upgrade(move |socket| {
        let cmd = ExecCommand {
            argv: q.command.clone(),
            stdin: q.stdin,
            tty: q.tty,
        };
        let started = ctx.runtime.exec_stream(&sandbox, &config, &handle, cmd);
        tracing::Instrument::instrument(session(socket, started, q, v5), span)
    })
}

/// Relays one command's streams over `socket` until it ends.
async fn session(
    mut socket: WebSocket,
    started: crate::runtime::BoxFut<Result<crate::runtime::ExecSession, RuntimeError>>,
    q: ExecQuery,
    v5: bool,
) {
    let mut s = match started.await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "exec could not start");
            finish(&mut socket, &status(&Err(e), &q.command)).await;
            return;
        }
    };
    tracing::info!(argv = ?q.command, stdin = q.stdin, tty = q.tty, "exec started");
    let mut stdin = s.stdin.take();
    loop {
        tokio::select! {
            m = socket.recv() => match m {
                Some(Ok(Message::Binary(b))) => match (b.first(), b.get(1)) {
                    (Some(&STDIN), _) => {
                        if let Some(w) = stdin.as_mut()
                            && w.write_all(&b[1..]).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    (Some(&CLOSE), Some(&STDIN)) if v5 => {
                        if let Some(mut w) = stdin.take() {
                            let _ = w.shutdown().await;
                        }
                    }
                    // Terminal resizes and anything else: nothing to do.
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The caller left: the command is dropped with the session.
                    tracing::info!("exec caller went away");
                    return;
                }
                Some(Ok(_)) => {}
            },
            out = s.output.next() => match out {
                Some(Ok((which, bytes))) => {
                    let ch = match which {
                        OutputStream::Stdout if q.stdout => STDOUT,
                        OutputStream::Stderr if q.stderr => STDERR,
                        _ => continue,
                    };
                    let mut m = Vec::with_capacity(bytes.len() + 1);
                    m.push(ch);
                    m.extend_from_slice(&bytes);
                    if socket.send(Message::Binary(m.into())).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "exec output failed");
                    break;
                }
                None => break,
            },
        }
    }
    drop(stdin);
    let code = s.exit.await;
    tracing::info!(code = ?code, "exec finished");
    finish(&mut socket, &status(&code, &q.command)).await;
}

/// Sends the final status on the error channel and closes with 1000
/// (normal closure: client-go reads a close without a code as an error).
async fn finish(socket: &mut WebSocket, st: &serde_json::Value) {
    let mut m = vec![ERROR];
    m.extend_from_slice(st.to_string().as_bytes());
    let _ = socket.send(Message::Binary(m.into())).await;
    let close = CloseFrame {
        code: close_code::NORMAL,
        reason: "".into(),
    };
    let _ = socket.send(Message::Close(Some(close))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_argument_is_kept_in_order() {
        let q = ExecQuery::parse(
            "command=sh&command=-c&command=echo+a%26b%3Dc&stdin=true&stdout=1&stderr=false&tty=true",
        );
        assert_eq!(q.command, ["sh", "-c", "echo a&b=c"]);
        assert!(q.stdin && q.stdout && !q.stderr && q.tty);
        assert_eq!(ExecQuery::parse(""), ExecQuery::default());
    }

    #[test]
    fn the_status_carries_the_exit_code() {
        let argv = ["sh".to_string()];
        assert_eq!(status(&Ok(0), &argv)["status"], "Success");
        let s = status(&Ok(3), &argv);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        let s = status(&Err(RuntimeError::CannotRun("no such file".into())), &argv);
        assert_eq!(
            (s["status"].as_str(), s["code"].as_i64()),
            (Some("Failure"), Some(500))
        );
    }
}
