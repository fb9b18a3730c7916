//! Chat templates: how `/v1/chat/completions` turns messages into the prompt.
//!
//! A model that ships a chat template is prompted through it, as llama.cpp's server, vLLM and
//! TGI do: the template is Jinja, rendered with minijinja as Hugging Face's `apply_chat_template`
//! renders it (`trim_blocks` and `lstrip_blocks` on; the variables `messages`,
//! `add_generation_prompt` = true, `bos_token`, `eos_token` and the function `raise_exception`;
//! Python's string methods such as `.strip()` and `.startswith()` through minijinja-contrib).
//! A model without one gets the plain transcript of [`crate::chat`].
//!
//! Where the template comes from ([`ChatTemplate::load`]), first found wins:
//! 1. `--chat-template FILE` (a Jinja file), or `--chat-template builtin` (the transcript);
//! 2. `chat_template.jinja` next to the model's tokenizer.json;
//! 3. `tokenizer_config.json` next to it, field `chat_template`: a string, or a list of
//!    `{name, template}` of which the one named `default` is used;
//! 4. a GGUF model's metadata key `tokenizer.chat_template`.
//!
//! `bos_token` and `eos_token` come from tokenizer_config.json (a string or `{content}`), else
//! from the GGUF's `tokenizer.ggml.bos_token_id` / `eos_token_id`, else (`eos_token` only) from
//! the tokenizer's end-of-sequence token.
//!
//! A reply stops at the template's end of turn: each of [`END_OF_TURN`] that the template's
//! source contains, and the `eos_token` text (the end-of-sequence token also stops generation by
//! id, as for completions).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use bimamba_formats::Checkpoint;
use bimamba_models::ModelKind;
use bimamba_text::Tokenizer;
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

use crate::chat::{self, ChatMessage};
use crate::error::ApiError;

/// The name the template has inside its environment (and in render errors' locations).
const NAME: &str = "chat_template";

/// End-of-turn markers recognised in a template's source: ChatML's (SmolLM2, Qwen), Llama 3's,
/// Gemma's and Phi-3's. A template that writes one after each message ends a reply there.
pub const END_OF_TURN: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"];

/// How chat messages become the prompt.
#[derive(Clone, Default)]
pub enum ChatTemplate {
    /// The plain `User:` / `Assistant:` transcript ([`crate::chat::render`]).
    #[default]
    Transcript,
    /// A Jinja template.
    Jinja(Arc<JinjaTemplate>),
}

/// A compiled Jinja chat template with the special tokens it is given.
pub struct JinjaTemplate {
    env: Environment<'static>,
    origin: String,
    tokens: SpecialTokens,
    stops: Vec<String>,
}

/// The special tokens a template sees as `bos_token` and `eos_token` (left undefined when not
/// known, as Hugging Face leaves them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
}

/// A template that cannot be read or does not parse: one line naming the file or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {detail}")]
pub struct TemplateError {
    /// The file (and field) the template came from.
    pub origin: String,
    pub detail: String,
}

impl TemplateError {
    fn new(origin: impl Into<String>, detail: impl Into<String>) -> TemplateError {
        TemplateError { origin: origin.into(), detail: one_line(&detail.into()) }
    }
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ChatTemplate {
    /// The template for a model opened from `model` (a directory or GGUF file; `None` for a
    /// model without a path) with `tokenizer`. `choice` is `--chat-template`: `None` for the
    /// model's own, `builtin` for the transcript, else a Jinja file.
    pub fn load(
        model: Option<&Path>,
        tokenizer: &Tokenizer,
        choice: Option<&str>,
    ) -> Result<ChatTemplate, TemplateError> {
        if choice == Some("builtin") {
            return Ok(ChatTemplate::Transcript);
        }
        let found = Found::for_model(model, tokenizer)?;
        let (origin, source) = match choice {
            Some(file) => {
                let source = std::fs::read_to_string(file)
                    .map_err(|e| TemplateError::new(file, format!("cannot read the chat template: {e}")))?;
                (file.to_string(), source)
            }
            None => match found.template {
                Some(t) => t,
                None => return Ok(ChatTemplate::Transcript),
            },
        };
        ChatTemplate::jinja(origin, source, found.tokens)
    }

    /// Compiles a Jinja template; `origin` names it in errors.
    pub fn jinja(
        origin: impl Into<String>,
        source: String,
        tokens: SpecialTokens,
    ) -> Result<ChatTemplate, TemplateError> {
        let origin = origin.into();
        let mut env = Environment::new();
        // Hugging Face renders chat templates with these two on.
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError::new(&origin, e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        let mut stops: Vec<String> =
            END_OF_TURN.iter().filter(|m| source.contains(*m)).map(|m| m.to_string()).collect();
        if let Some(eos) = tokens.eos.as_ref().filter(|e| !e.is_empty() && !stops.contains(e)) {
            stops.push(eos.clone());
        }
        env.add_template_owned(NAME, source)
            .map_err(|e| TemplateError::new(&origin, format!("the chat template does not parse: {e}")))?;
        Ok(ChatTemplate::Jinja(Arc::new(JinjaTemplate { env, origin, tokens, stops })))
    }

    /// The prompt for `messages`, ending where the assistant's reply begins. A template that
    /// fails on them (its `raise_exception`, a value it cannot use) is a 400 naming why.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, ApiError> {
        match self {
            ChatTemplate::Transcript => chat::render(messages),
            ChatTemplate::Jinja(t) => t.render(messages),
        }
    }

    /// The stop sequences a reply ends at, besides the request's own.
    pub fn stops(&self) -> Vec<String> {
        match self {
            ChatTemplate::Transcript => vec![chat::TURN_STOP.to_string()],
            ChatTemplate::Jinja(t) => t.stops.clone(),
        }
    }

    /// What the start line says: `transcript`, or where the template came from.
    pub fn describe(&self) -> String {
        match self {
            ChatTemplate::Transcript => "transcript".to_string(),
            ChatTemplate::Jinja(t) => t.origin.clone(),
        }
    }
}

impl JinjaTemplate {
    fn render(&self, messages: &[ChatMessage]) -> Result<String, ApiError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_pairs([("role", Value::from(m.role.as_str())), ("content", Value::from(m.text()))]))
            .collect();
        let mut ctx = vec![("messages", Value::from(messages)), ("add_generation_prompt", Value::from(true))];
        if let Some(b) = &self.tokens.bos {
            ctx.push(("bos_token", Value::from(b.as_str())));
        }
        if let Some(e) = &self.tokens.eos {
            ctx.push(("eos_token", Value::from(e.as_str())));
        }
        self.env.get_template(NAME).and_then(|t| t.render(Value::from_pairs(ctx))).map_err(|e| {
            ApiError::invalid(
                "messages",
                one_line(&format!("the model's chat template cannot render these messages: {e}")),
            )
        })
    }
}

/// `raise_exception(message)`: the template refuses the messages; the request fails with a 400
/// whose message is the template's.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What the model's files say: its template (origin, source) and special tokens.
#[derive(Default)]
struct Found {
    template: Option<(String, String)>,
    tokens: SpecialTokens,
}

impl Found {
    fn for_model(model: Option<&Path>, tokenizer: &Tokenizer) -> Result<Found, TemplateError> {
        let mut found = Found::default();
        // Lowest precedence first: a GGUF's metadata, then the files next to tokenizer.json.
        if let Some(path) = model {
            let kind =
                ModelKind::of(path).map_err(|e| TemplateError::new(path.display().to_string(), e.to_string()))?;
            if kind == ModelKind::Llama {
                found.read_gguf(path)?;
            }
        }
        let tok_path = tokenizer.path();
        if tok_path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            let dir = tok_path.parent().unwrap_or(Path::new("."));
            found.read_tokenizer_config(&dir.join("tokenizer_config.json"))?;
            let file = dir.join("chat_template.jinja");
            if file.is_file() {
                let source = std::fs::read_to_string(&file).map_err(|e| {
                    TemplateError::new(file.display().to_string(), format!("cannot read the chat template: {e}"))
                })?;
                found.template = Some((file.display().to_string(), source));
            }
        }
        if found.tokens.eos.is_none() {
            found.tokens.eos = tokenizer.eos_id().and_then(|id| tokenizer.decode(&[id]).ok());
        }
        Ok(found)
    }

    fn read_gguf(&mut self, path: &Path) -> Result<(), TemplateError> {
        let shown = path.display().to_string();
        let ck = Checkpoint::open(path).map_err(|e| TemplateError::new(&shown, e.to_string()))?;
        let Some(meta) = ck.gguf() else { return Ok(()) };
        if let Some(t) = meta.get_str("tokenizer.chat_template") {
            self.template = Some((format!("{shown} (tokenizer.chat_template)"), t.to_string()));
        }
        let tokens = meta.get_str_array("tokenizer.ggml.tokens").unwrap_or(&[]);
        let token = |key: &str| meta.get_u32(key).and_then(|id| tokens.get(id as usize)).cloned();
        self.tokens.bos = token("tokenizer.ggml.bos_token_id");
        self.tokens.eos = token("tokenizer.ggml.eos_token_id");
        Ok(())
    }

    fn read_tokenizer_config(&mut self, path: &Path) -> Result<(), TemplateError> {
        if !path.is_file() {
            return Ok(());
        }
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| TemplateError::new(&shown, e.to_string()))?;
        let config: Json =
            serde_json::from_slice(&bytes).map_err(|e| TemplateError::new(&shown, format!("not valid JSON: {e}")))?;
        if let Some(source) =
            config_template(&config).map_err(|d| TemplateError::new(format!("{shown}: chat_template"), d))?
        {
            self.template = Some((format!("{shown} (chat_template)"), source));
        }
        if let Some(b) = token_text(config.get("bos_token")) {
            self.tokens.bos = Some(b);
        }
        if let Some(e) = token_text(config.get("eos_token")) {
            self.tokens.eos = Some(e);
        }
        Ok(())
    }
}

/// The `chat_template` field of a tokenizer_config.json: a string, or a list of
/// `{name, template}` of which `default` is used (Hugging Face's rule without a name asked for).
fn config_template(config: &Json) -> Result<Option<String>, String> {
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(named)) => {
            let name = |t: &Json| t.get("name").and_then(Json::as_str).map(str::to_string);
            let default = named.iter().find(|t| name(t).as_deref() == Some("default"));
            match default.map(|t| t.get("template")) {
                Some(Some(Json::String(s))) => Ok(Some(s.clone())),
                Some(_) => Err("the entry named `default` has no `template` string".into()),
                None => {
                    let names: Vec<String> = named.iter().filter_map(name).collect();
                    Err(format!(
                        "a list of named templates ({}) with none named `default`; pass --chat-template FILE or builtin",
                        names.join(", ")
                    ))
                }
            }
        }
        Some(_) => Err("expected a string or a list of {name, template}".into()),
    }
}

/// A special token of tokenizer_config.json: a string, or an object with its `content`.
fn token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
#[path = "tests_template.rs"]
mod tests;
