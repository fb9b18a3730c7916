//! The server over a loopback port with the shipped model: the endpoints' shapes, streaming,
//! batching, the prefix-state cache, the errors, the queue limit, cancellation and the API key.

mod common;

use std::sync::{Arc, Barrier};

use common::{metric, options, post, request, start, OpenStream};
use serde_json::{json, Value};

const PROMPT: &str = "It is a truth universally acknowledged, that a single man in possession of a good fortune";

fn completion(prompt: &str, max_tokens: usize) -> Value {
    json!({"model": "default", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true})
}

#[test]
fn completions_models_health_and_metrics() {
    let s = start(options());
    let r = request(s.addr, "GET", "/health", &[], "");
    assert_eq!((r.status, r.json()["status"].clone()), (200, json!("ok")));
    let r = request(s.addr, "GET", "/v1/models", &[], "");
    assert_eq!(r.json()["data"][0]["id"], "default");
    assert_eq!(request(s.addr, "GET", "/v1/models/default", &[], "").status, 200);

    let r = post(
        s.addr,
        "/v1/completions",
        &json!({"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": true, "logprobs": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let text = v["choices"][0]["text"].as_str().expect("text");
    assert!(!text.is_empty());
    let usage = &v["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    let prompt_tokens = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert!(prompt_tokens > 10);
    assert_eq!(usage["total_tokens"].as_u64(), Some(prompt_tokens + 12));
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    let lps = v["choices"][0]["logprobs"]["token_logprobs"].as_array().expect("logprobs");
    assert_eq!(lps.len(), 12);
    assert!(lps.iter().all(|l| l.as_f64().is_some_and(|x| x <= 0.0)));
    let joined: String =
        v["choices"][0]["logprobs"]["tokens"].as_array().expect("tokens").iter().filter_map(Value::as_str).collect();
    assert_eq!(joined, text);

    // The same prompt again: greedy gives the same text, and the whole prompt comes from the cache.
    let again = post(s.addr, "/v1/completions", &completion(PROMPT, 12)).json();
    assert_eq!(again["choices"][0]["text"], text);
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(), Some(prompt_tokens));

    // A stop sequence cuts the text and ends generation.
    let chars: Vec<char> = text.chars().collect();
    let last_char = chars[chars.len() / 2];
    let stop_body = json!({"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": true, "stop": [last_char.to_string()]});
    let stopped = post(s.addr, "/v1/completions", &stop_body).json();
    let st = stopped["choices"][0]["text"].as_str().expect("text");
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    assert!(text.starts_with(st) && !st.contains(last_char), "{st:?} vs {text:?}");

    let page = request(s.addr, "GET", "/metrics", &[], "").body;
    assert!(page.contains("bimamba_requests_total{endpoint=\"completions\",status=\"200\"} 3"), "{page}");
    assert!(metric(s.addr, "bimamba_generated_tokens_total") >= 24.0);
    assert!(metric(s.addr, "bimamba_prefix_cache_hits_total") >= 1.0);
    assert!(metric(s.addr, "bimamba_time_to_first_token_seconds_count") >= 3.0);
    s.stop();
}

#[test]
fn streamed_chat_matches_the_whole_reply_and_the_second_turn_hits_the_cache() {
    let s = start(options());
    let first = json!([
        {"role": "system", "content": "A conversation about novels."},
        {"role": "user", "content": "Who wrote Pride and Prejudice?"}
    ]);
    let body = |messages: &Value, stream: bool| {
        json!({"model": "default", "messages": messages, "max_tokens": 24, "temperature": 0, "stream": stream,
               "stream_options": {"include_usage": true}})
    };
    let whole = post(s.addr, "/v1/chat/completions", &body(&first, false));
    assert_eq!(whole.status, 200, "{}", whole.body);
    let whole = whole.json();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    let reply = whole["choices"][0]["message"]["content"].as_str().expect("content").to_string();
    let turn1_prompt = whole["usage"]["prompt_tokens"].as_u64().expect("prompt_tokens");

    let streamed = post(s.addr, "/v1/chat/completions", &body(&first, true));
    assert_eq!(streamed.status, 200);
    assert!(streamed.header("content-type").is_some_and(|c| c.starts_with("text/event-stream")));
    let events = streamed.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).expect("JSON")).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().join("");
    assert_eq!(text, reply, "the streamed reply is the whole reply");
    let finish = chunks.iter().rev().find_map(|c| c["choices"][0]["finish_reason"].as_str()).expect("a finish reason");
    assert!(finish == "stop" || finish == "length");
    let usage = &chunks.last().expect("a usage chunk")["usage"];
    assert_eq!(usage["prompt_tokens"].as_u64(), Some(turn1_prompt));

    // Second turn: the history and the reply are resumed from the cache.
    let mut second = first.as_array().expect("messages").clone();
    second.push(json!({"role": "assistant", "content": reply}));
    second.push(json!({"role": "user", "content": "And when was it published?"}));
    let r = post(s.addr, "/v1/chat/completions", &body(&Value::Array(second), false)).json();
    let prompt = r["usage"]["prompt_tokens"].as_u64().expect("prompt_tokens");
    let cached = r["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().expect("cached_tokens");
    eprintln!("second turn: {prompt} prompt tokens, {cached} from the cache (first turn: {turn1_prompt})");
    // The reply re-tokenizes to the generated tokens, so the state after it is resumed: only
    // the new user message (and the reply's last token) is prefilled.
    assert!(cached > turn1_prompt && cached < prompt, "cached {cached} of {prompt}, first turn {turn1_prompt}");
    s.stop();
}

#[test]
fn concurrent_requests_share_decode_steps_and_match_sequential_ones() {
    let s = start(options());
    let prompts: Vec<String> = (0..4).map(|i| format!("{PROMPT}, chapter {i}")).collect();
    let alone: Vec<Value> = prompts
        .iter()
        .map(|p| post(s.addr, "/v1/completions", &completion(p, 48)).json()["choices"][0]["text"].clone())
        .collect();
    let steps_before = metric(s.addr, "bimamba_decode_steps_total");
    // The prompts' states and logits now come from the cache; the decode steps are batched.
    let barrier = Arc::new(Barrier::new(prompts.len()));
    let threads: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (addr, barrier, p) = (s.addr, barrier.clone(), p.clone());
            std::thread::spawn(move || {
                barrier.wait();
                post(addr, "/v1/completions", &completion(&p, 48)).json()["choices"][0]["text"].clone()
            })
        })
        .collect();
    let together: Vec<Value> = threads.into_iter().map(|t| t.join().expect("a client thread")).collect();
    let steps = metric(s.addr, "bimamba_decode_steps_total") - steps_before;
    // Alone, 4 requests of 48 tokens take 4 × 47 decode steps; batched, far fewer.
    assert!(steps < 4.0 * 47.0 * 0.75, "{steps} decode steps for 4 concurrent requests");
    assert_eq!(together, alone, "batched greedy decoding gives each request its own text");
    s.stop();
}

#[test]
fn mistakes_get_openai_style_errors() {
    let mut opts = options();
    opts.max_prompt_tokens = 64;
    let s = start(opts);
    let check = |r: common::Response, status: u16, param: Option<&str>| {
        assert_eq!(r.status, status, "{}", r.body);
        let e = &r.json()["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty() && !m.contains('\n')), "{e}");
        assert!(e["type"].is_string());
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{e}");
        }
    };
    let raw = |body: &str| request(s.addr, "POST", "/v1/completions", &[], body);
    check(raw("{\"prompt\": \"a\""), 400, None);
    check(raw(""), 400, None);
    check(raw("{\"prompt\": \"a\", \"max_tokens\": \"many\"}"), 400, Some("max_tokens"));
    check(raw("{\"prompt\": \"a\", \"temperature\": [1]}"), 400, Some("temperature"));
    check(post(s.addr, "/v1/completions", &json!({"prompt": "a", "max_tokens": 0})), 400, Some("max_tokens"));
    check(post(s.addr, "/v1/completions", &json!({"prompt": "a", "max_tokens": 100000})), 400, Some("max_tokens"));
    check(post(s.addr, "/v1/completions", &json!({"prompt": "a", "model": "gpt-4"})), 404, Some("model"));
    check(post(s.addr, "/v1/completions", &json!({"prompt": PROMPT.repeat(10)})), 400, Some("prompt"));
    check(post(s.addr, "/v1/completions", &json!({"prompt": [1, 2, 999999]})), 400, Some("prompt"));
    check(post(s.addr, "/v1/chat/completions", &json!({"messages": "hello"})), 400, Some("messages"));
    check(post(s.addr, "/v1/chat/completions", &json!({"messages": [{"role": "wizard", "content": "x"}]})), 400, None);
    check(request(s.addr, "GET", "/v1/nothing", &[], ""), 404, None);
    let r = post(s.addr, "/v1/completions", &json!({"prompt": PROMPT.repeat(10)}));
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    // Still serving after all of that.
    assert_eq!(post(s.addr, "/v1/completions", &completion("Hello", 2)).status, 200);
    s.stop();
}

#[test]
fn api_key_is_required_when_set() {
    let mut opts = options();
    opts.api_key = Some("sekrit".into());
    let s = start(opts);
    let body = completion("Hello", 2).to_string();
    let r = request(s.addr, "POST", "/v1/completions", &[], &body);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    assert_eq!(request(s.addr, "POST", "/v1/completions", &[("Authorization", "Bearer wrong")], &body).status, 401);
    assert_eq!(request(s.addr, "GET", "/v1/models", &[], "").status, 401);
    assert_eq!(request(s.addr, "POST", "/v1/completions", &[("Authorization", "Bearer sekrit")], &body).status, 200);
    assert_eq!(request(s.addr, "GET", "/health", &[], "").status, 200, "health needs no key");
    s.stop();
}

#[test]
fn full_queue_answers_429_and_a_dropped_stream_is_cancelled() {
    let mut opts = options();
    opts.max_batch = 1;
    opts.max_queue = 1;
    opts.max_tokens = 100_000;
    let s = start(opts);
    let long = json!({"prompt": PROMPT, "max_tokens": 100_000, "ignore_eos": true, "stream": true});
    let mut running = OpenStream::open(s.addr, "/v1/completions", &long);
    let first = running.next_data();
    assert!(first.contains("text_completion"), "{first}");
    // The batch is full: the next request waits in the queue, the one after is refused.
    let addr = s.addr;
    let waiting = std::thread::spawn(move || post(addr, "/v1/completions", &completion("Hello", 3)));
    let t0 = std::time::Instant::now();
    while metric(s.addr, "bimamba_queue_length") < 1.0 {
        assert!(t0.elapsed().as_secs() < 30, "the second request never queued");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let refused = post(s.addr, "/v1/completions", &completion("Hello", 3));
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.json()["error"]["type"], "rate_limit_error");
    // Closing the stream cancels its sequence, and the queued request runs.
    drop(running);
    let r = waiting.join().expect("the waiting client");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(metric(s.addr, "bimamba_cancelled_total") >= 1.0);
    s.stop();
}
