//! A model directory with a chat template in its tokenizer_config.json (a copy of the shipped
//! model with SmolLM2's ChatML template added): chat requests are rendered through it, a reply
//! stops at `<|im_end|>`, the second turn resumes the first from the prefix cache, and the
//! template's `raise_exception` is a 400.

mod common;

use std::path::PathBuf;

use bimamba_text::Tokenizer;
use common::{options, post, repo, start_model};
use serde_json::{json, Value};

/// SmolLM2's chat template, behind a check that refuses tool messages.
const TEMPLATE: &str = "{% for message in messages %}{% if message['role'] == 'tool' %}{{ raise_exception('tool messages need tools, which this template does not support') }}{% endif %}{% endfor %}\
{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const SYSTEM: &str =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

/// A copy of models/default with a tokenizer_config.json that carries the template.
fn model_with_template() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bimamba-serve-chat-template-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the temp dir is writable");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(repo("models/default").join(file), dir.join(file)).expect("the shipped model copies");
    }
    let config = json!({"chat_template": TEMPLATE, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("writes");
    dir
}

fn chat(messages: &Value) -> Value {
    json!({"model": "default", "messages": messages, "max_tokens": 24, "temperature": 0})
}

#[test]
fn chat_renders_through_the_models_template_and_the_second_turn_hits_the_cache() {
    let dir = model_with_template();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).expect("the tokenizer");
    let count = |text: &str| tok.encode(text).expect("encodes").len() as u64;
    let s = start_model(&dir, options());

    let question = "Who wrote Pride and Prejudice?";
    let first = json!([{"role": "user", "content": question}]);
    let r = post(s.addr, "/v1/chat/completions", &chat(&first));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let reply = v["choices"][0]["message"]["content"].as_str().expect("content").to_string();
    let finish = v["choices"][0]["finish_reason"].as_str().expect("finish_reason");
    eprintln!("reply ({finish}): {reply:?}");
    assert!(!reply.contains("<|im_end|>"), "the end-of-turn marker is cut from the reply: {reply:?}");
    // The prompt is the template's rendering, with <|im_start|> and <|im_end|> as special tokens.
    let turn1 = format!("{SYSTEM}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n");
    let turn1_tokens = v["usage"]["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert_eq!(turn1_tokens, count(&turn1));
    assert!(tok.encode(&turn1).expect("encodes").contains(&tok.token_to_id("<|im_start|>").expect("ChatML tokens")));

    // Second turn: the prompt extends the first turn and its reply, whose state is cached.
    let follow = "And when was it published?";
    let second = json!([
        {"role": "user", "content": question},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": follow}
    ]);
    let r = post(s.addr, "/v1/chat/completions", &chat(&second));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let turn2 = format!("{turn1}{reply}<|im_end|>\n<|im_start|>user\n{follow}<|im_end|>\n<|im_start|>assistant\n");
    let prompt = v["usage"]["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert_eq!(prompt, count(&turn2));
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().expect("cached_tokens");
    eprintln!("second turn: {prompt} prompt tokens, {cached} from the cache (first turn: {turn1_tokens})");
    // The state after the reply was kept (the first turn's prompt, the reply but its last token
    // when it ran to max_tokens): the reply re-tokenizes to the generated tokens, so the second
    // turn resumes beyond the first turn's prompt and prefills only the new message.
    assert!(!reply.is_empty(), "the model wrote a reply");
    assert!(cached > turn1_tokens && cached < prompt, "cached {cached} of {prompt}, first turn {turn1_tokens}");

    // The template's raise_exception: a 400 carrying its message.
    let tool = json!([{"role": "user", "content": "x"}, {"role": "tool", "content": "42"}]);
    let r = post(s.addr, "/v1/chat/completions", &chat(&tool));
    assert_eq!(r.status, 400, "{}", r.body);
    let e = &r.json()["error"];
    assert_eq!(e["param"], "messages");
    assert!(e["message"].as_str().is_some_and(|m| m.contains("tool messages need tools")), "{e}");
    s.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
