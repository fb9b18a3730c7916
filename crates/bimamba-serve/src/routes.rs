//! The HTTP endpoints: OpenAI's request and response shapes over the scheduler.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bimamba_text::Tokenizer;
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{parse, ChatRequest, CompletionRequest, Limits};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::scheduler::{Event, Finish, Generation, Job, Submitter, Usage};
use crate::template::ChatTemplate;

/// Largest request body accepted (a prompt of about a million words).
const MAX_BODY_BYTES: usize = 8 << 20;

/// Everything a handler needs.
pub struct AppState {
    pub submitter: Submitter,
    pub tokenizer: Arc<Tokenizer>,
    pub limits: Limits,
    /// How chat messages become the prompt.
    pub chat: ChatTemplate,
    pub metrics: Arc<Metrics>,
    pub api_key: Option<String>,
    /// Unix time the server started (the model's `created`).
    pub started: u64,
    pub next_id: AtomicU64,
}

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// With `--api-key`, every endpoint but /health needs `Authorization: Bearer KEY`.
async fn require_api_key(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let ok = given.and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|g| constant_time_eq(g.trim(), key));
        if !ok {
            app.metrics.request("auth", 401);
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first difference (the key's bytes do not leak by timing).
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

fn model_object(app: &AppState) -> Value {
    json!({"id": app.limits.model_id, "object": "model", "created": app.started, "owned_by": "bimamba"})
}

async fn models(State(app): State<Arc<AppState>>) -> Json<Value> {
    app.metrics.request("models", 200);
    Json(json!({"object": "list", "data": [model_object(&app)]}))
}

async fn model(State(app): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id != app.limits.model_id {
        app.metrics.request("models", 404);
        return ApiError::model_not_found(&id, &app.limits.model_id).into_response();
    }
    app.metrics.request("models", 200);
    Json(model_object(&app)).into_response()
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render()).into_response()
}

/// Which endpoint a response is for: its object names and how a chunk carries text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Completions,
    Chat,
}

impl Endpoint {
    fn metric(self) -> &'static str {
        match self {
            Endpoint::Completions => "completions",
            Endpoint::Chat => "chat_completions",
        }
    }
}

async fn completions(State(app): State<Arc<AppState>>, body: Bytes) -> Response {
    let request = parse::<CompletionRequest>(&body).and_then(|r| {
        Ok((r.generation(&app.limits, |t| encode(&app.tokenizer, t))?, r.stream(), include_usage(&r.common)))
    });
    respond(app, Endpoint::Completions, request).await
}

async fn chat_completions(State(app): State<Arc<AppState>>, body: Bytes) -> Response {
    let request = parse::<ChatRequest>(&body).and_then(|r| {
        let generation = r.generation_with(&app.limits, &app.chat, |t| encode(&app.tokenizer, t))?;
        Ok((generation, r.stream(), include_usage(&r.common)))
    });
    respond(app, Endpoint::Chat, request).await
}

fn include_usage(c: &crate::api::Common) -> bool {
    c.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
}

fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, ApiError> {
    tok.encode(text).map_err(|e| ApiError::invalid("prompt", format!("the prompt could not be tokenized: {e}")))
}

/// Submits a checked request and answers it whole or as a stream of server-sent events.
async fn respond(
    app: Arc<AppState>,
    endpoint: Endpoint,
    request: Result<(Generation, bool, bool), ApiError>,
) -> Response {
    let (generation, stream, usage_chunk) = match request {
        Ok(r) => r,
        Err(e) => {
            app.metrics.request(endpoint.metric(), e.status.as_u16());
            return e.into_response();
        }
    };
    let (tx, rx) = unbounded_channel();
    let logprobs = generation.logprobs;
    let job = Job { generation, events: tx, arrived: Instant::now() };
    if let Err(e) = app.submitter.submit(job) {
        app.metrics.request(endpoint.metric(), e.status.as_u16());
        return e.into_response();
    }
    let id = app.next_id.fetch_add(1, Ordering::Relaxed);
    let reply = Reply { endpoint, id, model: app.limits.model_id.clone(), created: unix_now(), logprobs };
    if stream {
        app.metrics.request(endpoint.metric(), 200);
        return Sse::new(event_stream(reply, rx, usage_chunk)).keep_alive(KeepAlive::default()).into_response();
    }
    let (status, body) = collect(&reply, rx).await;
    app.metrics.request(endpoint.metric(), status.as_u16());
    (status, Json(body)).into_response()
}

/// What every response of one request shares.
struct Reply {
    endpoint: Endpoint,
    id: u64,
    model: String,
    created: u64,
    logprobs: bool,
}

/// One generated token as reported.
struct Token {
    token: String,
    logprob: f64,
}

impl Reply {
    fn id(&self) -> String {
        match self.endpoint {
            Endpoint::Completions => format!("cmpl-{}", self.id),
            Endpoint::Chat => format!("chatcmpl-{}", self.id),
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    /// The `logprobs` object of a choice, in the endpoint's shape; `offset` is where the first
    /// token's text starts in the completion.
    fn logprobs_value(&self, tokens: &[Token], offset: usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.endpoint {
            Endpoint::Completions => {
                let mut at = offset;
                let offsets: Vec<usize> = tokens
                    .iter()
                    .map(|t| {
                        let o = at;
                        at += t.token.len();
                        o
                    })
                    .collect();
                json!({
                    "tokens": tokens.iter().map(|t| t.token.as_str()).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                    "top_logprobs": Value::Null,
                    "text_offset": offsets,
                })
            }
            Endpoint::Chat => json!({
                "content": tokens.iter().map(|t| json!({
                    "token": t.token, "logprob": t.logprob, "bytes": t.token.as_bytes(), "top_logprobs": [],
                })).collect::<Vec<_>>()
            }),
        }
    }

    /// One choice of a whole response or of a chunk.
    fn choice(&self, text: &str, tokens: &[Token], offset: usize, finish: Option<Finish>, chunk: bool) -> Value {
        let finish = finish.map(Finish::name);
        let logprobs = self.logprobs_value(tokens, offset);
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => {
                json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish})
            }
            (Endpoint::Chat, false) => json!({
                "index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": logprobs, "finish_reason": finish,
            }),
            (Endpoint::Chat, true) => {
                let delta = if finish.is_some() && text.is_empty() { json!({}) } else { json!({"content": text}) };
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
        }
    }

    fn body(&self, choices: Value, usage: Option<&Usage>, chunk: bool) -> Value {
        let mut v = json!({
            "id": self.id(), "object": self.object(chunk), "created": self.created, "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = usage_value(u);
        }
        v
    }
}

fn usage_value(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// Waits for the whole generation and builds the response.
async fn collect(reply: &Reply, mut rx: UnboundedReceiver<Event>) -> (StatusCode, Value) {
    let mut text = String::new();
    let mut tokens = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Token { text: t, token, logprob } => {
                text.push_str(&t);
                if let Some(lp) = logprob {
                    tokens.push(Token { token, logprob: lp });
                }
            }
            Event::Done { text: t, finish, usage } => {
                text.push_str(&t);
                let choice = reply.choice(&text, &tokens, 0, Some(finish), false);
                return (StatusCode::OK, reply.body(json!([choice]), Some(&usage), false));
            }
            Event::Failed(message) => {
                let e = ApiError::internal(message);
                return (e.status, e.body());
            }
        }
    }
    let e = ApiError::shutting_down();
    (e.status, e.body())
}

/// The server-sent events of a streamed response, ending with `data: [DONE]`. Dropping the
/// stream (the client went away) drops the receiver, which cancels the sequence.
fn event_stream(
    reply: Reply,
    rx: UnboundedReceiver<Event>,
    usage_chunk: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct StreamState {
        reply: Reply,
        rx: UnboundedReceiver<Event>,
        out: VecDeque<SseEvent>,
        /// Bytes of completion text sent so far (text offsets of log-probabilities).
        sent: usize,
        done: bool,
    }
    let mut out = VecDeque::new();
    if reply.endpoint == Endpoint::Chat {
        let choice =
            json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null});
        out.push_back(SseEvent::default().data(reply.body(json!([choice]), None, true).to_string()));
    }
    let state = StreamState { reply, rx, out, sent: 0, done: false };
    stream::unfold(state, move |mut s| async move {
        loop {
            if let Some(e) = s.out.pop_front() {
                return Some((Ok(e), s));
            }
            if s.done {
                return None;
            }
            let data = |v: Value| SseEvent::default().data(v.to_string());
            match s.rx.recv().await {
                Some(Event::Token { text, token, logprob }) => {
                    let tokens: Vec<Token> = logprob.map(|lp| Token { token, logprob: lp }).into_iter().collect();
                    if text.is_empty() && tokens.is_empty() {
                        continue;
                    }
                    let choice = s.reply.choice(&text, &tokens, s.sent, None, true);
                    s.sent += text.len();
                    s.out.push_back(data(s.reply.body(json!([choice]), None, true)));
                }
                Some(Event::Done { text, finish, usage }) => {
                    let choice = s.reply.choice(&text, &[], s.sent, Some(finish), true);
                    s.out.push_back(data(s.reply.body(json!([choice]), None, true)));
                    if usage_chunk {
                        s.out.push_back(data(s.reply.body(json!([]), Some(&usage), true)));
                    }
                    s.out.push_back(SseEvent::default().data("[DONE]"));
                    s.done = true;
                }
                Some(Event::Failed(message)) => {
                    s.out.push_back(data(ApiError::internal(message).body()));
                    s.out.push_back(SseEvent::default().data("[DONE]"));
                    s.done = true;
                }
                None => {
                    s.out.push_back(data(ApiError::shutting_down().body()));
                    s.done = true;
                }
            }
        }
    })
}
