//! The chat messages of a request, and the built-in chat format: how a list of messages becomes
//! the text a base model continues.
//!
//! A model without a chat template of its own ([`crate::template`] reads one when it has it), such
//! as the base models trained here, gets its messages written as a plain transcript, and is asked
//! to continue the assistant's line:
//!
//! ```text
//! {system message}\n\n              (each system or developer message, if any)
//! User: {user message}\n
//! Assistant: {assistant message}\n
//! ...
//! Assistant:
//! ```
//!
//! Generation stops at [`TURN_STOP`] (the model starting the next user line). A reply is
//! returned as generated, leading whitespace included, and an assistant message that starts
//! with whitespace is written right after `Assistant:` (others after `Assistant: `): the
//! transcript of the next turn then repeats the text, and so the tokens, the model generated,
//! and the next turn's prompt extends the state the previous turn left in the prefix cache.

use serde::Deserialize;

use crate::error::ApiError;

/// The stop sequence a chat reply ends at.
pub const TURN_STOP: &str = "\nUser:";

/// What the model continues after the transcript.
pub const REPLY_PREFIX: &str = "Assistant:";

#[derive(Deserialize, Debug, Clone)]
pub struct ChatMessage {
    pub role: String,
    /// Text, or a list of parts of which only `text` parts are accepted; `null` (an assistant
    /// message with tool calls) counts as empty.
    pub content: Option<Content>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, Debug, Clone)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

impl ChatMessage {
    /// The message's text (its text parts joined; empty for `null`).
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => parts.iter().filter_map(|p| p.text.as_deref()).collect::<Vec<_>>().join(""),
        }
    }
}

/// The transcript of `messages`, ending with [`REPLY_PREFIX`].
pub fn render(messages: &[ChatMessage]) -> Result<String, ApiError> {
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        let text = m.text();
        match m.role.as_str() {
            "system" | "developer" => {
                out.push_str(text.trim());
                out.push_str("\n\n");
            }
            "user" => {
                out.push_str("User: ");
                out.push_str(text.trim());
                out.push('\n');
            }
            "assistant" => {
                out.push_str(REPLY_PREFIX);
                if !text.starts_with(char::is_whitespace) {
                    out.push(' ');
                }
                out.push_str(&text);
                out.push('\n');
            }
            other => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!("role `{other}` is not supported; use system, developer, user or assistant"),
                ))
            }
        }
    }
    out.push_str(REPLY_PREFIX);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: Some(Content::Text(content.into())) }
    }

    #[test]
    fn renders_a_transcript_that_the_next_turn_extends() {
        let first = vec![msg("system", "Be brief."), msg("user", "Hello?")];
        let text = render(&first).expect("valid");
        assert_eq!(text, "Be brief.\n\nUser: Hello?\nAssistant:");
        // The model generated "\nHi there." and stopped at "\nUser:": the next transcript
        // repeats exactly what it generated.
        for reply in ["\nHi there.", " Hi there."] {
            let mut second = first.clone();
            second.push(msg("assistant", reply));
            second.push(msg("user", "And then?"));
            let next = render(&second).expect("valid");
            assert!(next.starts_with(&format!("{text}{reply}{TURN_STOP}")), "{next}");
            assert!(next.ends_with("User: And then?\nAssistant:"));
        }
        let written = render(&[msg("assistant", "Hello."), msg("user", "Hi")]).expect("valid");
        assert!(written.starts_with("Assistant: Hello.\nUser: Hi\n"), "{written}");
        let err = render(&[msg("tool", "x")]).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].role"));
    }
}
