//! The HTTP side of `dpop mcp`: an MCP Streamable HTTP client (protocol 2025-11-25) that
//! passes JSON-RPC messages through as bytes.
//!
//! Written here over dpop-client's [`DpopClient::send`] (which adds the proof, `Authorization:
//! DPoP` and answers `use_dpop_nonce` once) rather than with rmcp: rmcp's
//! `StreamableHttpClient` takes and returns typed `ClientJsonRpcMessage` /
//! `ServerJsonRpcMessage`s and its worker drives the initialize handshake itself, so every
//! message would be parsed into rmcp's model and serialised again (key order changed, fields
//! its model does not know dropped, methods it does not know refused). A bridge must hand on
//! what it was given. Messages are only *peeked at* here (`id`, `method`, the negotiated
//! `protocolVersion`), never rewritten; a JSON body is printed as one line by dropping the
//! CR/LF that can only be whitespace between JSON tokens.
//!
//! SSE answers are decoded by the `sse-stream` crate; this module keeps the stream's state
//! (last event id, `retry:`) and resumes a dropped stream with a GET carrying
//! `Last-Event-ID`.
//!
//! What is read of a message lives in `message.rs`; this file is the exchanges themselves
//! (POST and its answer, the GET stream, reconnection, DELETE), about 600 lines that share
//! one session state and one error path, so they stay together.

use std::sync::{Arc, Mutex};

use dpop_client::http::reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue,
};
use dpop_client::http::reqwest::{Method, Response, StatusCode};
use dpop_client::http::{DpopClient, ResourceAuthorizer, TokenCache, Url};
use futures_util::StreamExt;
use serde_json::Value;
use sse_stream::SseStream;
use tokio::sync::{mpsc, watch};

use super::message::{
    Cursor, Incoming, Outgoing, event_message, is_session_id, media_type, negotiated_version,
    one_line,
};
use super::stdio::Line;
use crate::output::printable;

const SESSION_ID: &str = "mcp-session-id";
const PROTOCOL_VERSION: &str = "mcp-protocol-version";
const LAST_EVENT_ID: &str = "last-event-id";
/// Accept of a POST: the server answers a request with JSON or with an SSE stream.
const ACCEPT_POST: &str = "application/json, text/event-stream";
const ACCEPT_SSE: &str = "text/event-stream";

/// A dropped SSE stream is given up after this many reconnections in a row that brought
/// nothing (an answer's stream) or failed (the GET stream).
const MAX_RESUME: u32 = 5;
/// The largest JSON answer read into memory (a tool result may carry a file).
const MAX_JSON_ANSWER: usize = 64 * 1024 * 1024;
/// The largest error body read (to tell a JSON-RPC error from an HTML page).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// JSON-RPC error code of the answers the bridge makes up for a request the server did not
/// answer (the implementation-defined server-error range).
const BRIDGE_ERROR: i64 = -32000;

/// How reading an SSE stream ended.
enum StreamEnd {
    /// The answer awaited came.
    Answered,
    /// The stream ended or broke first; `received` says whether it carried anything.
    Dropped { received: bool },
    /// The client is gone (standard output closed).
    ClientGone,
}

/// Why the bridge stops, other than the end of standard input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    Running,
    /// The server answered 404 to a request with the session id: the session is over.
    SessionEnded,
    /// Standard output is closed: nobody reads the answers.
    ClientGone,
    /// SIGTERM or SIGINT: the session is DELETEd at once, without waiting for answers.
    Terminated,
    /// The bridge is ending the session itself (end of standard input): streams that drop
    /// now are not reconnected.
    Closing,
}

/// The session: what the initialize answer set.
#[derive(Default)]
struct Session {
    id: Option<HeaderValue>,
    protocol_version: Option<HeaderValue>,
}

/// The Streamable HTTP client of one MCP endpoint.
pub(crate) struct Transport {
    http: DpopClient,
    url: Url,
    auth: ResourceAuthorizer,
    /// With `--allow-bearer`: where the saved token is, to tell a Bearer token (sent as
    /// `Authorization: Bearer`) from a DPoP-bound one.
    bearer_check: Option<(TokenCache, String)>,
    session: Mutex<Session>,
    out: mpsc::UnboundedSender<Line>,
    stop: watch::Sender<Stop>,
    verbose: bool,
}

impl Transport {
    pub(crate) fn new(
        http: DpopClient,
        url: Url,
        auth: ResourceAuthorizer,
        bearer_check: Option<(TokenCache, String)>,
        out: mpsc::UnboundedSender<Line>,
        stop: watch::Sender<Stop>,
        verbose: bool,
    ) -> Transport {
        Transport {
            http,
            url,
            auth,
            bearer_check,
            session: Mutex::new(Session::default()),
            out,
            stop,
            verbose,
        }
    }

    fn log(&self, message: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!("dpop mcp: {}", message());
        }
    }

    /// Prints one message line for the client.
    fn emit(&self, line: Vec<u8>) -> bool {
        self.out.send(Line::Message(line)).is_ok() && *self.stop.borrow() != Stop::ClientGone
    }

    /// Whether the saved token is a Bearer one (only ever with `--allow-bearer`).
    fn is_bearer(&self) -> bool {
        self.bearer_check.as_ref().is_some_and(|(cache, name)| {
            cache
                .load(name)
                .is_ok_and(|saved| !saved.token_type.eq_ignore_ascii_case("DPoP"))
        })
    }

    fn session_id(&self) -> Option<HeaderValue> {
        self.session.lock().expect("session lock").id.clone()
    }

    /// The session is over: the bridge stops (once).
    fn end_session(&self) {
        self.stop.send_if_modified(|stop| {
            if *stop == Stop::Running {
                eprintln!("dpop mcp: the server ended the session");
                *stop = Stop::SessionEnded;
                true
            } else {
                false
            }
        });
    }

    /// One HTTP request to the endpoint with the session's headers, the token (when there is
    /// one) and a proof. A 401 or 403 goes to the authorizer, and the request is sent once
    /// more when it got a token. Returns the answer and whether the session id went with it.
    async fn exchange(
        &self,
        method: Method,
        body: Option<&[u8]>,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<(Response, bool)> {
        let mut challenged = false;
        loop {
            let (session_id, version) = {
                let session = self.session.lock().expect("session lock");
                (session.id.clone(), session.protocol_version.clone())
            };
            let sent_session = session_id.is_some();
            let mut request = self
                .http
                .reqwest()
                .request(method.clone(), self.url.clone());
            request = match body {
                Some(body) => request
                    .header(CONTENT_TYPE, "application/json")
                    .header(ACCEPT, ACCEPT_POST)
                    .body(body.to_vec()),
                None if method == Method::GET => request.header(ACCEPT, ACCEPT_SSE),
                None => request,
            };
            if let Some(id) = session_id {
                request = request.header(SESSION_ID, id);
            }
            if let Some(version) = version {
                request = request.header(PROTOCOL_VERSION, version);
            }
            if let Some(id) = last_event_id {
                request = request.header(LAST_EVENT_ID, id);
            }
            let token = self.auth.token(&self.http).await?;
            let mut request = request.build()?;
            let token = match token {
                Some(token) if self.is_bearer() => {
                    // A Bearer token (accepted with --allow-bearer) goes as such: a server
                    // without DPoP would refuse `Authorization: DPoP`. The proof still goes
                    // along, unbound, and such a server ignores it.
                    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.as_str()))
                        .map_err(|_| {
                            anyhow::anyhow!("the saved token is not a valid header value")
                        })?;
                    value.set_sensitive(true);
                    request.headers_mut().insert(AUTHORIZATION, value);
                    None
                }
                token => token,
            };
            let retries = self.http.nonce_retries();
            let response = self
                .http
                .send(request, token.as_ref().map(|t| t.as_str()))
                .await?;
            if self.http.nonce_retries() != retries {
                self.log(|| "answered a use_dpop_nonce challenge with one retry".into());
            }
            let status = response.status();
            if !challenged
                && (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN)
            {
                challenged = true;
                self.log(|| format!("{method} answered {status}: asking for authorization"));
                if self
                    .auth
                    .on_challenge(&self.http, status, response.headers())
                    .await?
                {
                    continue;
                }
            }
            return Ok((response, sent_session));
        }
    }

    /// Sends one message from the client and prints what the server answers to it. Returns
    /// whether the server took it.
    pub(crate) async fn post(self: Arc<Self>, line: Vec<u8>, message: Outgoing) -> bool {
        self.log(|| format!("-> {}", message.describe()));
        let result = self.post_inner(&line, &message).await;
        let taken = result.is_ok();
        if let Err(e) = result {
            let reason = format!("{e:#}");
            eprintln!("dpop mcp: {}: {}", message.describe(), printable(&reason));
            self.answer_error(&message, &reason);
        }
        taken
    }

    async fn post_inner(&self, line: &[u8], message: &Outgoing) -> anyhow::Result<()> {
        let (response, sent_session) = self.exchange(Method::POST, Some(line), None).await?;
        let status = response.status();
        let media = media_type(response.headers());
        self.log(|| {
            format!(
                "<- {status}{} for {}",
                media
                    .as_deref()
                    .map(|m| format!(" {m}"))
                    .unwrap_or_default(),
                message.describe()
            )
        });
        if status == StatusCode::NOT_FOUND && sent_session {
            self.end_session();
            return Ok(());
        }
        if !status.is_success() {
            let body = read_limited(response, MAX_ERROR_BODY)
                .await
                .unwrap_or_default();
            return self.pass_error(message, status, &body);
        }
        if message.is_initialize() {
            self.open_session(response.headers());
        }
        match media.as_deref() {
            _ if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT => {
                if message.request_id().is_some() {
                    anyhow::bail!("the server accepted the request but sent no answer ({status})");
                }
                Ok(())
            }
            Some("text/event-stream") => {
                self.read_answer_stream(response, message).await;
                Ok(())
            }
            Some("application/json") => {
                let body = read_limited(response, MAX_JSON_ANSWER).await?;
                let line = one_line(&body);
                if line.is_empty() {
                    return Ok(());
                }
                if message.is_initialize() {
                    self.negotiated(&line);
                }
                self.emit(line);
                Ok(())
            }
            // An answer to a notification or a response needs no body.
            _ if message.request_id().is_none() => Ok(()),
            other => anyhow::bail!(
                "the server answered {status} with content type {}",
                printable(other.unwrap_or("(none)"))
            ),
        }
    }

    /// An error status: a JSON-RPC answer in the body goes to the client as it is; otherwise a
    /// request gets an error answer made here, and a notification is only logged.
    fn pass_error(
        &self,
        message: &Outgoing,
        status: StatusCode,
        body: &[u8],
    ) -> anyhow::Result<()> {
        if let Some(id) = message.request_id()
            && Incoming::peek(body).is_some_and(|m| m.answers(id))
        {
            self.emit(one_line(body));
            return Ok(());
        }
        let detail = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        anyhow::bail!("the server answered {status}{detail}")
    }

    /// The answer the bridge makes up when the server's never comes, so the client does not
    /// wait forever.
    fn answer_error(&self, message: &Outgoing, reason: &str) {
        let Some(id) = message.request_id() else {
            return;
        };
        let answer = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": { "code": BRIDGE_ERROR, "message": format!("dpop mcp: {reason}") },
        });
        self.emit(serde_json::to_vec(&answer).expect("JSON serializes"));
    }

    /// Keeps the session id of the initialize answer (visible ASCII only, as the spec says).
    fn open_session(&self, headers: &HeaderMap) {
        let Some(id) = headers.get(SESSION_ID) else {
            self.log(|| "the server uses no session".into());
            return;
        };
        if !is_session_id(id) {
            eprintln!("dpop mcp: ignoring a session id that is not visible ASCII");
            return;
        }
        self.log(|| {
            format!(
                "session {}",
                printable(&String::from_utf8_lossy(id.as_bytes()))
            )
        });
        self.session.lock().expect("session lock").id = Some(id.clone());
    }

    /// Keeps the protocol version of the initialize result, for `MCP-Protocol-Version`.
    fn negotiated(&self, line: &[u8]) {
        if let Some(version) = negotiated_version(line) {
            self.log(|| {
                format!(
                    "protocol version {}",
                    printable(version.to_str().unwrap_or(""))
                )
            });
            self.session.lock().expect("session lock").protocol_version = Some(version);
        }
    }

    /// Prints the messages of an SSE answer to a POST until the answer to the request comes,
    /// resuming the stream with `Last-Event-ID` when it drops first.
    async fn read_answer_stream(&self, response: Response, message: &Outgoing) {
        let mut cursor = Cursor::default();
        let awaited = message.request_id();
        let initialize = message.is_initialize();
        let mut end = self
            .read_events(response, &mut cursor, awaited, initialize)
            .await;
        if awaited.is_none() {
            return;
        }
        let mut fruitless = 0;
        loop {
            match end {
                StreamEnd::Answered | StreamEnd::ClientGone => return,
                StreamEnd::Dropped { received } => {
                    fruitless = if received { 0 } else { fruitless + 1 };
                }
            }
            if cursor.last_event_id.is_none() {
                self.answer_error(message, "the server's stream ended before the answer");
                return;
            }
            if fruitless > MAX_RESUME {
                self.answer_error(
                    message,
                    "the server's stream dropped and could not be resumed",
                );
                return;
            }
            let stream = format!("the stream answering {}", message.describe());
            match self.reconnect(&mut cursor, &stream).await {
                Some(response) => {
                    end = self
                        .read_events(response, &mut cursor, awaited, initialize)
                        .await;
                }
                None if *self.stop.borrow() != Stop::Running => return,
                None => end = StreamEnd::Dropped { received: false },
            }
        }
    }

    /// Waits the stream's retry delay and GETs the stream again from the last event id.
    /// `None` when that failed, or when the bridge stops meanwhile.
    async fn reconnect(&self, cursor: &mut Cursor, stream: &str) -> Option<Response> {
        if *self.stop.borrow() != Stop::Running {
            return None;
        }
        let delay = cursor.delay();
        self.log(|| {
            format!(
                "{stream} dropped: reconnecting in {} ms{}",
                delay.as_millis(),
                cursor
                    .last_event_id
                    .as_deref()
                    .map(|id| format!(" from event {}", printable(id)))
                    .unwrap_or_default()
            )
        });
        tokio::time::sleep(delay).await;
        if *self.stop.borrow() != Stop::Running {
            return None;
        }
        match self
            .exchange(Method::GET, None, cursor.last_event_id.as_deref())
            .await
        {
            Ok((response, sent_session)) => {
                let status = response.status();
                if status == StatusCode::NOT_FOUND && sent_session {
                    self.end_session();
                    return None;
                }
                if status.is_success()
                    && media_type(response.headers()).as_deref() == Some("text/event-stream")
                {
                    return Some(response);
                }
                self.log(|| format!("reconnection answered {status}"));
                None
            }
            Err(e) => {
                self.log(|| format!("reconnection failed: {}", printable(&format!("{e:#}"))));
                None
            }
        }
    }

    /// Prints each message of an SSE stream as it arrives, until the stream ends or carries
    /// the answer to `awaited`.
    async fn read_events(
        &self,
        response: Response,
        cursor: &mut Cursor,
        awaited: Option<&Value>,
        initialize: bool,
    ) -> StreamEnd {
        let mut events = SseStream::new(dpop_client::http::reqwest::Body::from(response));
        let mut received = false;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    self.log(|| format!("stream broke: {}", printable(&e.to_string())));
                    break;
                }
            };
            cursor.advance(&event);
            let Some(line) = event_message(&event) else {
                continue;
            };
            received = true;
            let answer =
                awaited.is_some_and(|id| Incoming::peek(&line).is_some_and(|m| m.answers(id)));
            if answer && initialize {
                self.negotiated(&line);
            }
            if !self.emit(line) {
                return StreamEnd::ClientGone;
            }
            if answer {
                return StreamEnd::Answered;
            }
        }
        StreamEnd::Dropped { received }
    }

    /// The GET stream for messages the server sends on its own: opened once the session is
    /// initialized, reconnected (from the last event id) whenever it drops, as the spec's
    /// polling asks (a quiet stream cut by a proxy's idle timeout is reconnected too); given
    /// up after [`MAX_RESUME`] failed reconnections in a row. A 405 means the server offers
    /// none.
    pub(crate) async fn listen(self: Arc<Self>) {
        let mut cursor = Cursor::default();
        let response = match self.exchange(Method::GET, None, None).await {
            Ok((response, sent_session)) => {
                let status = response.status();
                if status == StatusCode::METHOD_NOT_ALLOWED {
                    self.log(|| "the server offers no GET stream (405)".into());
                    return;
                }
                if status == StatusCode::NOT_FOUND && sent_session {
                    self.end_session();
                    return;
                }
                if !status.is_success()
                    || media_type(response.headers()).as_deref() != Some("text/event-stream")
                {
                    eprintln!("dpop mcp: the server refused the GET stream ({status})");
                    return;
                }
                self.log(|| "GET stream open".into());
                response
            }
            Err(e) => {
                eprintln!(
                    "dpop mcp: opening the GET stream: {}",
                    printable(&format!("{e:#}"))
                );
                return;
            }
        };
        let mut end = self.read_events(response, &mut cursor, None, false).await;
        let mut failed = 0;
        loop {
            if matches!(end, StreamEnd::Answered | StreamEnd::ClientGone) {
                return;
            }
            end = match self.reconnect(&mut cursor, "the GET stream").await {
                Some(response) => {
                    failed = 0;
                    self.read_events(response, &mut cursor, None, false).await
                }
                None if *self.stop.borrow() != Stop::Running => return,
                None => {
                    failed += 1;
                    if failed >= MAX_RESUME {
                        eprintln!("dpop mcp: the GET stream dropped and could not be resumed");
                        return;
                    }
                    StreamEnd::Dropped { received: false }
                }
            };
        }
    }

    /// Ends the session at the server (DELETE); a 405 (the server does not let clients end
    /// sessions) is fine. Streams that drop after this are not reconnected.
    pub(crate) async fn delete_session(&self) {
        self.stop.send_if_modified(|stop| {
            let running = *stop == Stop::Running;
            if running {
                *stop = Stop::Closing;
            }
            running
        });
        if self.session_id().is_none() {
            return;
        }
        match self.exchange(Method::DELETE, None, None).await {
            Ok((response, _)) => {
                let status = response.status();
                self.log(|| format!("DELETE session: {status}"));
                if !status.is_success()
                    && status != StatusCode::METHOD_NOT_ALLOWED
                    && status != StatusCode::NOT_FOUND
                {
                    eprintln!("dpop mcp: ending the session: the server answered {status}");
                }
            }
            Err(e) => eprintln!(
                "dpop mcp: ending the session: {}",
                printable(&format!("{e:#}"))
            ),
        }
    }
}

/// The body, read up to `limit` bytes (more is an error).
async fn read_limited(mut response: Response, limit: usize) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            anyhow::bail!("the server's answer is larger than {} MiB", limit >> 20);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
