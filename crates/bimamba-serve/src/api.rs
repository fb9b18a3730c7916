//! The request bodies of OpenAI's completions and chat completions, and their checks.
//!
//! Fields this server has no use for (`user`, `frequency_penalty`, ...) are accepted and
//! ignored, as OpenAI-compatible servers do; a known field of the wrong type, or a value out of
//! range, is refused with a 400 that names it.

use bimamba_lm::sampling::SamplingParams;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::chat::{ChatMessage, Content};
use crate::error::ApiError;
use crate::scheduler::Generation;
use crate::template::ChatTemplate;

/// Limits a request is checked against (the server's options).
#[derive(Clone, Debug)]
pub struct Limits {
    /// The served model's id; a request naming another model is refused.
    pub model_id: String,
    pub max_prompt_tokens: usize,
    pub max_tokens: usize,
    /// Tokens the tokenizer can produce (token-id prompts must stay below it).
    pub vocab: usize,
}

/// A string or a list of strings (`stop`).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `prompt`: text, token ids, or a list of one of either (batches of prompts are refused).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// What both endpoints share.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// An extension (llama.cpp and vLLM take it too): sample among the k most likely tokens.
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<OneOrMany>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<i64>,
    /// An extension (vLLM's): do not stop at the end-of-sequence token.
    pub ignore_eos: Option<bool>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    /// Completions: the number of alternatives per position; only the chosen token's
    /// log-probability is reported, so any value from 0 to 5 asks for it.
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    /// Read from the same body by [`parse`].
    #[serde(skip)]
    pub common: Common,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub logprobs: Option<bool>,
    pub max_completion_tokens: Option<i64>,
    /// Read from the same body by [`parse`].
    #[serde(skip)]
    pub common: Common,
}

/// A request body with the fields both endpoints share.
pub trait WithCommon {
    fn common_mut(&mut self) -> &mut Common;
}

impl WithCommon for CompletionRequest {
    fn common_mut(&mut self) -> &mut Common {
        &mut self.common
    }
}

impl WithCommon for ChatRequest {
    fn common_mut(&mut self) -> &mut Common {
        &mut self.common
    }
}

/// Parses a JSON body, naming the field at fault when a value has the wrong type. (The shared
/// fields are read in a second pass over the same value rather than through `#[serde(flatten)]`,
/// which would lose the field's name in errors.)
pub fn parse<T: DeserializeOwned + WithCommon>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_body("the request body is empty; send a JSON object"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_body(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_body("the body does not have the expected fields: send a JSON object"));
    }
    let mut request: T = from_value_named(&value)?;
    *request.common_mut() = from_value_named(&value)?;
    Ok(request)
}

fn from_value_named<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad_body(format!("the body does not have the expected fields: {inner}"))
        } else {
            // The first segment names the request's field (`messages[0].role` → `messages`).
            ApiError::invalid(&path, format!("`{path}`: {inner}"))
        }
    })
}

/// Default `max_tokens` of a completion (OpenAI's) and of a chat reply.
const COMPLETION_DEFAULT_TOKENS: usize = 16;
const CHAT_DEFAULT_TOKENS: usize = 256;

/// The settings shared by both endpoints, checked: (max_tokens, sampling, stop sequences).
fn check_common(
    c: &Common,
    max_tokens: Option<i64>,
    default_tokens: usize,
    limits: &Limits,
) -> Result<(usize, SamplingParams, Vec<String>), ApiError> {
    if let Some(m) = &c.model {
        if m != &limits.model_id {
            return Err(ApiError::model_not_found(m, &limits.model_id));
        }
    }
    if let Some(n) = c.n {
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                format!("`n` is {n}; this server returns one choice per request (n = 1)"),
            ));
        }
    }
    let max_tokens = match max_tokens {
        None => default_tokens.min(limits.max_tokens),
        Some(m) if m >= 1 && m as u64 <= limits.max_tokens as u64 => m as usize,
        Some(m) => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("`max_tokens` is {m}; it must be between 1 and {} (--max-tokens-limit)", limits.max_tokens),
            ))
        }
    };
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("`temperature` is {temperature}; it must be between 0 and 2"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", format!("`top_p` is {top_p}; it must be above 0 and at most 1")));
    }
    let top_k = match c.top_k.unwrap_or(0) {
        k if k >= 0 => k as usize,
        k => return Err(ApiError::invalid("top_k", format!("`top_k` is {k}; it must be 0 (no limit) or more"))),
    };
    // u64::MAX asks the scheduler for a fresh seed (a request without one).
    let seed = c.seed.map_or(u64::MAX, |s| s as u64);
    let stop = match &c.stop {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s.clone()],
        Some(OneOrMany::Many(v)) => v.clone(),
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "`stop` takes at most 4 sequences, none of them empty"));
    }
    let sampling =
        SamplingParams { temperature: temperature as f32, top_k, top_p: top_p as f32, repeat_penalty: 1.0, seed };
    Ok((max_tokens, sampling, stop))
}

/// Refuses a prompt that is empty, too long or holds ids outside the vocabulary.
fn check_prompt(tokens: &[u32], limits: &Limits) -> Result<(), ApiError> {
    if tokens.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt is empty (it encodes to no tokens)"));
    }
    if tokens.len() > limits.max_prompt_tokens {
        return Err(ApiError::context_length(tokens.len(), limits.max_prompt_tokens));
    }
    if let Some(&id) = tokens.iter().find(|&&t| t as usize >= limits.vocab) {
        return Err(ApiError::invalid(
            "prompt",
            format!("token id {id} is outside the tokenizer's vocabulary of {} entries", limits.vocab),
        ));
    }
    Ok(())
}

impl CompletionRequest {
    /// The generation this request asks for; `encode` tokenizes text.
    pub fn generation(
        &self,
        limits: &Limits,
        encode: impl Fn(&str) -> Result<Vec<u32>, ApiError>,
    ) -> Result<Generation, ApiError> {
        let (max_tokens, sampling, stop) =
            check_common(&self.common, self.common.max_tokens, COMPLETION_DEFAULT_TOKENS, limits)?;
        if self.echo == Some(true) {
            return Err(ApiError::invalid("echo", "`echo` is not supported"));
        }
        let logprobs = match self.logprobs {
            None => false,
            Some(n) if (0..=5).contains(&n) => true,
            Some(n) => {
                return Err(ApiError::invalid("logprobs", format!("`logprobs` is {n}; it must be between 0 and 5")))
            }
        };
        let one = "`prompt` holds several prompts; send one per request";
        let prompt = match &self.prompt {
            Prompt::Text(t) => encode(t)?,
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::Texts(v) if v.len() == 1 => encode(&v[0])?,
            Prompt::TokenLists(v) if v.len() == 1 => v[0].clone(),
            Prompt::Texts(_) | Prompt::TokenLists(_) => return Err(ApiError::invalid("prompt", one)),
        };
        check_prompt(&prompt, limits)?;
        let ignore_eos = self.common.ignore_eos.unwrap_or(false);
        Ok(Generation { prompt, max_tokens, sampling, stop, logprobs, ignore_eos })
    }

    pub fn stream(&self) -> bool {
        self.common.stream.unwrap_or(false)
    }
}

impl ChatRequest {
    /// The generation this request asks for with the plain transcript ([`ChatTemplate::Transcript`]).
    pub fn generation(
        &self,
        limits: &Limits,
        encode: impl Fn(&str) -> Result<Vec<u32>, ApiError>,
    ) -> Result<Generation, ApiError> {
        self.generation_with(limits, &ChatTemplate::Transcript, encode)
    }

    /// The generation this request asks for: the messages rendered by `template`, and the
    /// template's end of turn as extra stop sequences.
    pub fn generation_with(
        &self,
        limits: &Limits,
        template: &ChatTemplate,
        encode: impl Fn(&str) -> Result<Vec<u32>, ApiError>,
    ) -> Result<Generation, ApiError> {
        let max_tokens = self.max_completion_tokens.or(self.common.max_tokens);
        let (max_tokens, sampling, mut stop) = check_common(&self.common, max_tokens, CHAT_DEFAULT_TOKENS, limits)?;
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "`messages` is empty"));
        }
        for (i, m) in self.messages.iter().enumerate() {
            if let Some(Content::Parts(parts)) = &m.content {
                if let Some(p) = parts.iter().find(|p| p.kind != "text" || p.text.is_none()) {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].content"),
                        format!("content parts of type `{}` are not supported; send text", p.kind),
                    ));
                }
            }
        }
        let text = template.render(&self.messages)?;
        stop.extend(template.stops());
        let prompt = encode(&text)?;
        check_prompt(&prompt, limits)?;
        let ignore_eos = self.common.ignore_eos.unwrap_or(false);
        Ok(Generation { prompt, max_tokens, sampling, stop, logprobs: self.logprobs.unwrap_or(false), ignore_eos })
    }

    pub fn stream(&self) -> bool {
        self.common.stream.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { model_id: "m".into(), max_prompt_tokens: 40, max_tokens: 100, vocab: 50 }
    }

    fn encode(s: &str) -> Result<Vec<u32>, ApiError> {
        Ok(s.bytes().map(|b| (b % 50) as u32).collect())
    }

    fn completion(body: &str) -> Result<Generation, ApiError> {
        parse::<CompletionRequest>(body.as_bytes())?.generation(&limits(), encode)
    }

    #[test]
    fn completion_fields_are_checked_by_name() {
        let g = completion(r#"{"model":"m","prompt":"abc","max_tokens":5,"temperature":0,"stop":"x","seed":3}"#)
            .expect("valid");
        assert_eq!((g.prompt.len(), g.max_tokens, g.stop.clone(), g.sampling.seed), (3, 5, vec!["x".to_string()], 3));
        assert_eq!(completion(r#"{"prompt":[1,2,3]}"#).expect("ids").prompt, vec![1, 2, 3]);
        let err = |body: &str| completion(body).expect_err(body);
        assert_eq!(err(r#"{"prompt":"a","max_tokens":"ten"}"#).param.as_deref(), Some("max_tokens"));
        assert_eq!(err(r#"{"prompt":"a","max_tokens":0}"#).param.as_deref(), Some("max_tokens"));
        assert_eq!(err(r#"{"prompt":"a","max_tokens":101}"#).param.as_deref(), Some("max_tokens"));
        assert_eq!(err(r#"{"prompt":"a","temperature":3}"#).param.as_deref(), Some("temperature"));
        assert_eq!(err(r#"{"prompt":"a","top_p":0}"#).param.as_deref(), Some("top_p"));
        assert_eq!(err(r#"{"prompt":"a","model":"other"}"#).status.as_u16(), 404);
        assert_eq!(err(&format!(r#"{{"prompt":"{}"}}"#, "x".repeat(41))).code, Some("context_length_exceeded"));
        assert_eq!(err(r#"{"prompt":[1,99]}"#).param.as_deref(), Some("prompt"));
        assert_eq!(err(r#"{"prompt":""}"#).param.as_deref(), Some("prompt"));
        assert_eq!(err(r#"{"prompt":["a","b"]}"#).param.as_deref(), Some("prompt"));
        assert!(err(r#"{"prompt": "a""#).message.contains("not valid JSON"));
        assert!(err(r#"[1]"#).message.contains("expected fields"));
        assert!(err("").message.contains("empty"));
    }

    #[test]
    fn chat_adds_the_turn_stop_and_checks_messages() {
        let body = r#"{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":7,"stop":["!"]}"#;
        let g = parse::<ChatRequest>(body.as_bytes()).expect("parses").generation(&limits(), encode).expect("valid");
        assert_eq!(g.max_tokens, 7);
        assert_eq!(g.stop, vec!["!".to_string(), crate::chat::TURN_STOP.to_string()]);
        let bad = r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#;
        let e = parse::<ChatRequest>(bad.as_bytes()).expect("parses").generation(&limits(), encode).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        let e = parse::<ChatRequest>(br#"{"messages":[]}"#).expect("parses").generation(&limits(), encode).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
    }
}
