//! What `dpop mcp` reads of the messages it passes on (never rewriting them): the `id` and
//! `method` of a client's message, whether a server message answers it, the negotiated
//! protocol version and session id, a JSON body made one line, an SSE event's message, and
//! the cursor (last event id, `retry:`) a dropped stream resumes from.

use std::time::Duration;

use dpop_client::http::reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use sse_stream::Sse;

use crate::output::printable;

/// The wait before a reconnection when the server gave no `retry:`.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// A server's `retry:` is honoured up to this.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// What the bridge reads of a message from the client: enough to know whether an answer is
/// due and whether it opens the session.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Outgoing {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
}

impl Outgoing {
    /// Peeks at `line`; a line that is not a JSON object is forwarded all the same.
    pub(crate) fn peek(line: &[u8]) -> Outgoing {
        serde_json::from_slice(line).unwrap_or_default()
    }

    /// The id of a request (a message with a method and an id): an answer is due.
    pub(super) fn request_id(&self) -> Option<&Value> {
        self.method.as_ref().and(self.id.as_ref())
    }

    /// Whether this is the `initialize` request, whose answer opens the session.
    pub(crate) fn is_initialize(&self) -> bool {
        self.method.as_deref() == Some("initialize") && self.id.is_some()
    }

    /// Whether this is the notification that ends the initialization.
    pub(crate) fn is_initialized_notification(&self) -> bool {
        self.method.as_deref() == Some("notifications/initialized") && self.id.is_none()
    }

    /// A short name for logs: the method, "response", or "message" (not JSON-RPC).
    pub(super) fn describe(&self) -> String {
        let what = match (&self.method, &self.id) {
            (Some(method), _) => method.as_str(),
            (None, Some(_)) => "response",
            (None, None) => "message",
        };
        match &self.id {
            Some(id) => format!("{} (id {id})", printable(what)),
            None => printable(what).to_string(),
        }
    }
}

/// What the bridge reads of a message from the server.
#[derive(Debug, Deserialize)]
pub(super) struct Incoming {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    result: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

/// The initialize answer, for the version it negotiated.
#[derive(Debug, Deserialize)]
pub(super) struct InitializeAnswer {
    result: InitializeResult,
}

#[derive(Debug, Deserialize)]
pub(super) struct InitializeResult {
    #[serde(rename = "protocolVersion", default)]
    protocol_version: Option<Value>,
}

impl Incoming {
    pub(super) fn peek(data: &[u8]) -> Option<Incoming> {
        serde_json::from_slice(data).ok()
    }

    /// Whether this is the answer (result or error) to the request `id`.
    pub(super) fn answers(&self, id: &Value) -> bool {
        self.method.is_none()
            && (self.result.is_some() || self.error.is_some())
            && self.id.as_ref() == Some(id)
    }
}

/// A JSON body as one line: CR and LF are dropped. In valid JSON they can only be whitespace
/// between tokens (inside strings they are escaped), so the message means the same.
pub(crate) fn one_line(body: &[u8]) -> Vec<u8> {
    let mut line: Vec<u8> = body
        .iter()
        .copied()
        .filter(|&b| b != b'\n' && b != b'\r')
        .collect();
    // Trailing blanks are not part of the message.
    while line.last().is_some_and(u8::is_ascii_whitespace) {
        line.pop();
    }
    line
}

/// The JSON-RPC message an SSE event carries, as one line: events of type `message` (or none)
/// with data; priming events (an id and empty data) and other types carry none.
pub(crate) fn event_message(event: &Sse) -> Option<Vec<u8>> {
    if event.event.as_deref().is_some_and(|e| e != "message") {
        return None;
    }
    let data = event.data.as_deref()?;
    if data.trim().is_empty() {
        return None;
    }
    Some(one_line(data.as_bytes()))
}

/// The position in an SSE stream: what a reconnection needs.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    pub(super) last_event_id: Option<String>,
    retry: Option<Duration>,
}

impl Cursor {
    /// Takes in an event's `id:` and `retry:` (an empty id resets it, as in the SSE spec).
    pub(crate) fn advance(&mut self, event: &Sse) {
        if let Some(id) = &event.id {
            self.last_event_id = (!id.is_empty()).then(|| id.clone());
        }
        if let Some(ms) = event.retry {
            self.retry = Some(Duration::from_millis(ms).min(MAX_RETRY));
        }
    }

    /// How long to wait before the next reconnection.
    pub(super) fn delay(&self) -> Duration {
        self.retry.unwrap_or(DEFAULT_RETRY)
    }
}

/// Whether `value` can be a session id: visible ASCII only (0x21 to 0x7e), not empty.
pub(super) fn is_session_id(value: &HeaderValue) -> bool {
    !value.is_empty() && value.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b))
}

/// The `protocolVersion` of an initialize result, as a header value (none when the answer
/// is an error or the version cannot be a header).
pub(super) fn negotiated_version(answer: &[u8]) -> Option<HeaderValue> {
    serde_json::from_slice::<InitializeAnswer>(answer)
        .ok()
        .and_then(|a| a.result.protocol_version)
        .and_then(|v| v.as_str().and_then(|v| HeaderValue::from_str(v).ok()))
}

/// The media type of a response, lower case, without parameters.
pub(super) fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[test]
    fn a_json_body_becomes_one_line_with_its_bytes_otherwise_kept() {
        let body = b"{\"z\":1,\r\n  \"a\":{\"unknown\":\"x\\ny\"}}\n";
        assert_eq!(
            one_line(body),
            b"{\"z\":1,  \"a\":{\"unknown\":\"x\\ny\"}}".to_vec()
        );
        let single = br#"{"b":2,"a":1,"_extra":[true]}"#;
        assert_eq!(one_line(single), single.to_vec());
    }

    #[test]
    fn sse_events_carry_messages_only_with_data() {
        let message = Sse::default().data("{\"jsonrpc\":\"2.0\",\"method\":\"x\"}");
        assert_eq!(
            event_message(&message).unwrap(),
            b"{\"jsonrpc\":\"2.0\",\"method\":\"x\"}".to_vec()
        );
        // Multi-line data is joined with LF by the decoder; the line drops it.
        let split = Sse::default().data("{\"a\":\n1}");
        assert_eq!(event_message(&split).unwrap(), b"{\"a\":1}".to_vec());
        let typed = Sse::default().event("message").data("{}");
        assert_eq!(event_message(&typed).unwrap(), b"{}".to_vec());
        // A priming event: an id and empty data.
        assert!(event_message(&Sse::default().id("1").data("")).is_none());
        assert!(event_message(&Sse::default().retry(10)).is_none());
        assert!(event_message(&Sse::default().event("ping").data("{}")).is_none());
    }

    #[tokio::test]
    async fn decoded_stream_keeps_the_last_event_id_and_retry() {
        let body = "id: a1\ndata: \n\nretry: 250\n\nid: a2\ndata: {\"id\":1,\"result\":{}}\n\ndata: {\"method\":\"n\"}\n\n";
        let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes_of(body))]);
        let mut events = sse_stream::SseByteStream::new(stream);
        let mut cursor = Cursor::default();
        let mut lines = Vec::new();
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            cursor.advance(&event);
            lines.extend(event_message(&event));
        }
        assert_eq!(
            lines,
            vec![
                b"{\"id\":1,\"result\":{}}".to_vec(),
                b"{\"method\":\"n\"}".to_vec()
            ]
        );
        // Events without an id do not reset it (the SSE spec keeps the last one).
        assert_eq!(cursor.last_event_id.as_deref(), Some("a2"));
        assert_eq!(cursor.delay(), Duration::from_millis(250));
    }

    fn bytes_of(s: &str) -> std::io::Cursor<Vec<u8>> {
        std::io::Cursor::new(s.as_bytes().to_vec())
    }

    #[test]
    fn retry_is_bounded_and_an_empty_id_resets() {
        let mut cursor = Cursor::default();
        assert_eq!(cursor.delay(), DEFAULT_RETRY);
        cursor.advance(&Sse::default().id("7").retry(10_000_000));
        assert_eq!(cursor.delay(), MAX_RETRY);
        assert_eq!(cursor.last_event_id.as_deref(), Some("7"));
        cursor.advance(&Sse::default().id(""));
        assert_eq!(cursor.last_event_id, None);
    }

    #[test]
    fn outgoing_messages_are_told_apart() {
        let init = Outgoing::peek(br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#);
        assert!(init.is_initialize());
        assert_eq!(init.request_id(), Some(&Value::from(0)));
        let note = Outgoing::peek(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert!(note.request_id().is_none() && !note.is_initialize());
        let response = Outgoing::peek(br#"{"jsonrpc":"2.0","id":"s1","result":{}}"#);
        assert!(response.request_id().is_none());
        let junk = Outgoing::peek(b"not json");
        assert!(junk.request_id().is_none());
    }

    #[test]
    pub(super) fn answers_are_matched_by_id() {
        let id = Value::from("r-1");
        let answer = Incoming::peek(br#"{"jsonrpc":"2.0","id":"r-1","result":{"x":1}}"#).unwrap();
        assert!(answer.answers(&id));
        let error =
            Incoming::peek(br#"{"jsonrpc":"2.0","id":"r-1","error":{"code":1,"message":"m"}}"#)
                .unwrap();
        assert!(error.answers(&id));
        let other = Incoming::peek(br#"{"jsonrpc":"2.0","id":2,"result":{}}"#).unwrap();
        assert!(!other.answers(&id));
        // A request from the server with the same id is not the answer.
        let request =
            Incoming::peek(br#"{"jsonrpc":"2.0","id":"r-1","method":"sampling/createMessage"}"#)
                .unwrap();
        assert!(!request.answers(&id));
    }

    #[test]
    fn session_ids_are_visible_ascii() {
        assert!(is_session_id(&HeaderValue::from_static("1868a90c-4e7b")));
        assert!(!is_session_id(&HeaderValue::from_static("with space")));
        assert!(!is_session_id(&HeaderValue::from_static("")));
        assert!(!is_session_id(
            &HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()
        ));
    }

    #[test]
    fn the_negotiated_version_comes_from_the_initialize_result() {
        let answer = br#"{"result":{"capabilities":{},"protocolVersion":"2025-06-18"},"jsonrpc":"2.0","id":0}"#;
        assert_eq!(negotiated_version(answer).unwrap(), "2025-06-18");
        let error = br#"{"jsonrpc":"2.0","id":0,"error":{"code":-32602,"message":"no"}}"#;
        assert!(negotiated_version(error).is_none());
        let odd = br#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"bad\nversion"}}"#;
        assert!(negotiated_version(odd).is_none());
    }

    #[test]
    fn media_types_ignore_parameters_and_case() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("Text/Event-Stream; charset=utf-8"),
        );
        assert_eq!(media_type(&headers).as_deref(), Some("text/event-stream"));
    }
}
