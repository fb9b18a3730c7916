//! The chat templates: rendering (ChatML, raise_exception, Python string methods), the next
//! turn extending the previous one, and where a template is found (tokenizer_config.json as a
//! string or a list, chat_template.jinja, a GGUF key, --chat-template).

use std::path::{Path, PathBuf};

use bimamba_formats::Checkpoint;
use bimamba_llama::testing::{put_tiny_tokenizer, GgufWriter};
use bimamba_text::Tokenizer;

use super::*;
use crate::chat::Content;

/// SmolLM2's chat template (ChatML with a default system message).
pub const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage { role: role.into(), content: Some(Content::Text(content.into())) }
}

fn chatml() -> ChatTemplate {
    let tokens = SpecialTokens { bos: Some("<|im_start|>".into()), eos: Some("<|im_end|>".into()) };
    ChatTemplate::jinja("test", SMOLLM2.to_string(), tokens).expect("SmolLM2's template parses")
}

fn jinja(source: &str) -> ChatTemplate {
    ChatTemplate::jinja("test", source.to_string(), SpecialTokens::default()).expect("parses")
}

/// A fresh directory for one test, with the tiny fixture tokenizer in it.
fn model_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bimamba-serve-template-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the temp dir is writable");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-austen/tokenizer.json");
    std::fs::copy(fixture, dir.join("tokenizer.json")).expect("the fixture tokenizer copies");
    dir
}

fn tokenizer(dir: &Path) -> Tokenizer {
    Tokenizer::from_file(&dir.join("tokenizer.json")).expect("the fixture tokenizer loads")
}

#[test]
fn chatml_renders_and_the_next_turn_extends_the_previous_one() {
    let t = chatml();
    let first = vec![msg("user", "Hello?")];
    let turn1 = t.render(&first).expect("renders");
    assert_eq!(
        turn1,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHello?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(t.stops(), vec!["<|im_end|>".to_string()], "the end of turn, which is also the eos token");
    // The reply stops where the model writes <|im_end|>; the next turn repeats the reply and
    // that marker, so its prompt starts with the previous prompt and reply.
    for reply in ["Hi there.", " Hi, with a leading space.", "Two\nlines."] {
        let mut second = first.clone();
        second.push(msg("assistant", reply));
        second.push(msg("user", "And then?"));
        let turn2 = t.render(&second).expect("renders");
        assert!(turn2.starts_with(&format!("{turn1}{reply}<|im_end|>")), "{turn2}");
        assert!(turn2.ends_with("<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n"), "{turn2}");
    }
    // A system message replaces the default one.
    let sys = t.render(&[msg("system", "Be brief."), msg("user", "Hi")]).expect("renders");
    assert!(sys.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi"), "{sys}");
}

#[test]
fn raise_exception_and_render_failures_are_400s_naming_the_reason() {
    let t = jinja(
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}\
         {% endif %}{{ m.content }}{% endfor %}",
    );
    assert_eq!(t.render(&[msg("user", "ok")]).expect("renders"), "ok");
    let e = t.render(&[msg("system", "x"), msg("user", "y")]).unwrap_err();
    assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some("messages")));
    assert!(e.message.contains("System role not supported"), "{}", e.message);
    assert!(!e.message.contains('\n'));
    // An attribute of an undefined value, and an unknown function, fail the request too.
    for source in ["{{ messages[0].nothing.deeper }}", "{{ strftime_now('%Y') }}"] {
        let e = jinja(source).render(&[msg("user", "x")]).unwrap_err();
        assert_eq!(e.status.as_u16(), 400, "{source}");
        assert!(e.message.contains("chat template"), "{}", e.message);
    }
}

#[test]
fn python_string_methods_and_hugging_faces_whitespace_rules() {
    let source = "{% for m in messages %}\n    {% if m.content.startswith('!') %}\n[{{ m.content.strip() }}]\n    {% else %}\n{{ m.content | trim }}\n    {% endif %}\n{% endfor %}\n{{ bos_token }}|{{ eos_token }}";
    let tokens = SpecialTokens { bos: Some("<s>".into()), eos: Some("</s>".into()) };
    let t = ChatTemplate::jinja("test", source.to_string(), tokens).expect("parses");
    // trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before it.
    assert_eq!(t.render(&[msg("user", "!  a "), msg("user", " b ")]).expect("renders"), "[!  a]\nb\n<s>|</s>");
    assert_eq!(t.stops(), vec!["</s>".to_string()]);
    // Undefined special tokens render as nothing.
    assert_eq!(jinja("{{ bos_token }}x").render(&[msg("user", "")]).expect("renders"), "x");
}

#[test]
fn a_template_that_does_not_parse_is_one_line_naming_where_it_came_from() {
    let e = ChatTemplate::jinja(
        "dir/tokenizer_config.json (chat_template)",
        "{% for m in messages %}".into(),
        SpecialTokens::default(),
    )
    .unwrap_err();
    let line = e.to_string();
    assert!(line.starts_with("dir/tokenizer_config.json (chat_template): the chat template does not parse"), "{line}");
    assert!(!line.contains('\n'), "{line}");
}

#[test]
fn tokenizer_config_templates_as_a_string_or_a_named_list() {
    let dir = model_dir("config");
    let tok = tokenizer(&dir);
    // No template anywhere: the transcript.
    assert!(matches!(ChatTemplate::load(Some(&dir), &tok, None).expect("loads"), ChatTemplate::Transcript));

    let config = serde_json::json!({"chat_template": SMOLLM2, "bos_token": "<|im_start|>",
                                    "eos_token": {"content": "<|im_end|>", "special": true}});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("writes");
    let t = ChatTemplate::load(Some(&dir), &tok, None).expect("loads");
    assert!(t.describe().ends_with("tokenizer_config.json (chat_template)"), "{}", t.describe());
    assert_eq!(t.render(&[msg("user", "Hi")]).ok(), chatml().render(&[msg("user", "Hi")]).ok());
    assert_eq!(t.stops(), vec!["<|im_end|>".to_string()]);

    let named = serde_json::json!({"chat_template": [
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"}
    ]});
    std::fs::write(dir.join("tokenizer_config.json"), named.to_string()).expect("writes");
    let t = ChatTemplate::load(Some(&dir), &tok, None).expect("loads");
    assert_eq!(t.render(&[msg("user", "Hi")]).expect("renders"), "<user>Hi");
    // Without a template of its own, the eos_token is the tokenizer's end-of-sequence token.
    assert_eq!(t.stops(), vec!["<|endoftext|>".to_string()]);

    let no_default = serde_json::json!({"chat_template": [{"name": "rag", "template": "x"}]});
    std::fs::write(dir.join("tokenizer_config.json"), no_default.to_string()).expect("writes");
    let e = ChatTemplate::load(Some(&dir), &tok, None).unwrap_err().to_string();
    assert!(e.contains("tokenizer_config.json: chat_template") && e.contains("`default`") && e.contains("rag"), "{e}");

    std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template": "{{ oops"}"#).expect("writes");
    let e = ChatTemplate::load(Some(&dir), &tok, None).unwrap_err().to_string();
    assert!(e.contains("(chat_template): the chat template does not parse"), "{e}");
    // --chat-template builtin ignores the model's template, even a broken one.
    assert!(matches!(ChatTemplate::load(Some(&dir), &tok, Some("builtin")).expect("loads"), ChatTemplate::Transcript));

    std::fs::write(dir.join("tokenizer_config.json"), "{not json").expect("writes");
    let e = ChatTemplate::load(Some(&dir), &tok, None).unwrap_err().to_string();
    assert!(e.contains("tokenizer_config.json: not valid JSON"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chat_template_jinja_and_the_command_line_file_take_precedence() {
    let dir = model_dir("files");
    let tok = tokenizer(&dir);
    let config = serde_json::json!({"chat_template": "config", "eos_token": "<|endoftext|>"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("writes");
    std::fs::write(dir.join("chat_template.jinja"), "jinja file").expect("writes");
    let t = ChatTemplate::load(Some(&dir), &tok, None).expect("loads");
    assert_eq!(t.render(&[msg("user", "x")]).expect("renders"), "jinja file");
    let flag = dir.join("mine.jinja");
    std::fs::write(&flag, "{{ messages | length }} {{ eos_token }}").expect("writes");
    let t = ChatTemplate::load(Some(&dir), &tok, flag.to_str()).expect("loads");
    assert_eq!(t.describe(), flag.display().to_string());
    assert_eq!(t.render(&[msg("user", "x"), msg("user", "y")]).expect("renders"), "2 <|endoftext|>");
    let missing = dir.join("missing.jinja");
    let e = ChatTemplate::load(Some(&dir), &tok, missing.to_str()).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: cannot read the chat template", missing.display())), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_gguf_files_template_and_special_tokens_are_read() {
    let dir = model_dir("gguf");
    let path = dir.join("tiny.gguf");
    let mut g = GgufWriter::default();
    g.str("general.architecture", "llama");
    put_tiny_tokenizer(&mut g, "gpt2", "smollm");
    g.u32("tokenizer.ggml.bos_token_id", 1).str("tokenizer.chat_template", SMOLLM2);
    std::fs::write(&path, g.finish()).expect("writes");
    let ck = Checkpoint::open(&path).expect("the GGUF opens");
    let tok = bimamba_llama::gguf_tokenizer(&ck).expect("its tokenizer");
    let t = ChatTemplate::load(Some(&path), &tok, None).expect("loads");
    assert_eq!(t.describe(), format!("{} (tokenizer.chat_template)", path.display()));
    let ChatTemplate::Jinja(j) = &t else { panic!("a Jinja template") };
    assert_eq!(j.tokens, SpecialTokens { bos: Some("<|im_start|>".into()), eos: Some("<|endoftext|>".into()) });
    assert_eq!(t.stops(), vec!["<|im_end|>".to_string(), "<|endoftext|>".to_string()]);
    assert!(t.render(&[msg("user", "hello")]).expect("renders").ends_with("<|im_start|>assistant\n"));
    let _ = std::fs::remove_dir_all(&dir);
}
