//! The scheduler: one thread owns the model and runs every request's sequence.
//!
//! Each turn of its loop
//! 1. admits waiting requests while the batch has room (a request's prompt is first looked up
//!    in the prefix-state cache; only the tokens after the longest cached prefix are prefilled);
//! 2. prefills new sequences (every prompt when nothing is decoding, else at most
//!    [`PREFILL_CHUNK`] tokens in all, so that running streams do not stall behind long prompts);
//! 3. advances every decoding sequence by one token in one batched step, so the weights are read
//!    once per step for the whole batch;
//! 4. retires finished sequences (their final state goes into the cache) and drops those whose
//!    client has gone away.
//!
//! Requests wait in a bounded channel (`--max-queue`); the HTTP side answers 429 when it is full.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use bimamba_lm::sampling::{Sampler, SamplingParams};
use bimamba_lm::{log_prob, LanguageModel};
use bimamba_models::{AnyModel, AnyState};
use bimamba_text::{StreamDecoder, Tokenizer};
use rayon::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use crate::backend;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::prefix_cache::PrefixCache;
use crate::stop::{Scan, StopScanner};

/// Prompt tokens prefilled per loop turn, over all new sequences, while others are decoding.
pub const PREFILL_CHUNK: usize = 128;

/// A request as the scheduler runs it (validated, tokenized).
#[derive(Clone, Debug)]
pub struct Generation {
    pub prompt: Vec<u32>,
    /// At least 1.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Report the log-probability of each chosen token.
    pub logprobs: bool,
    /// Generate `max_tokens` tokens even past the end-of-sequence token.
    pub ignore_eos: bool,
}

/// Why generation ended, as OpenAI's `finish_reason` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// End-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl Finish {
    pub fn name(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens resumed from a cached state rather than prefilled.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

/// What a sequence reports to the request that started it.
#[derive(Debug)]
pub enum Event {
    /// One generated token; `text` is what may be shown now (stop sequences and partial UTF-8
    /// characters are held back, so it can be empty).
    Token { text: String, token: String, logprob: Option<f64> },
    /// The last event of a sequence: text held back until the end, and the totals.
    Done { text: String, finish: Finish, usage: Usage },
    /// The model failed (a server bug, not the request's fault).
    Failed(String),
}

/// A request waiting for the scheduler.
pub struct Job {
    pub generation: Generation,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
}

/// The HTTP side's handle: submits jobs, refusing them when the queue is full.
#[derive(Clone)]
pub struct Submitter {
    tx: SyncSender<Job>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Submitter {
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        // Counted before sending: the scheduler may admit the job (and count it out) at once.
        self.metrics.queue_length.fetch_add(1, Ordering::Relaxed);
        let refused = match self.tx.try_send(job) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(_)) => ApiError::queue_full(self.capacity),
            Err(TrySendError::Disconnected(_)) => ApiError::shutting_down(),
        };
        self.metrics.queue_length.fetch_sub(1, Ordering::Relaxed);
        Err(refused)
    }
}

/// How the scheduler runs.
#[derive(Clone, Copy, Debug)]
pub struct SchedulerOptions {
    /// Sequences decoded together at most.
    pub max_batch: usize,
    /// Requests waiting at most (at least 1).
    pub max_queue: usize,
    /// Bytes the prefix-state cache may hold.
    pub cache_bytes: usize,
}

/// Starts the scheduler thread; it ends when every [`Submitter`] is dropped and its sequences
/// are done.
pub fn start(
    model: AnyModel,
    tokenizer: Arc<Tokenizer>,
    options: SchedulerOptions,
    metrics: Arc<Metrics>,
) -> std::io::Result<(Submitter, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(options.max_queue.max(1));
    let submitter = Submitter { tx, capacity: options.max_queue.max(1), metrics: metrics.clone() };
    let stop_tokens = model.stop_tokens(&tokenizer);
    let scheduler = Scheduler {
        cache: PrefixCache::new(options.cache_bytes),
        model,
        tokenizer,
        stop_tokens,
        max_batch: options.max_batch.max(1),
        metrics,
        active: Vec::new(),
        next_seed: 0,
    };
    let handle = std::thread::Builder::new().name("bimamba-scheduler".into()).spawn(move || scheduler.run(rx))?;
    Ok((submitter, handle))
}

/// Where a sequence is in its life.
enum Phase {
    /// Prompt tokens from `fed` on are still to be prefilled.
    Prefill,
    /// `pending` was sampled and is fed at the next decode step.
    Decode { pending: u32 },
    /// Finished or cancelled; retired at the end of the turn.
    Retired,
}

struct Sequence {
    job: Job,
    state: AnyState,
    phase: Phase,
    /// Every token fed into `state` (the cache key of the state).
    fed: Vec<u32>,
    /// The logits after the last fed token, while they are needed: from a prefill chunk until
    /// the first token is sampled, and after the sequence ends (for the cache).
    logits: Vec<f32>,
    sampler: Sampler,
    decoder: StreamDecoder,
    scanner: StopScanner,
    usage: Usage,
}

struct Scheduler {
    model: AnyModel,
    tokenizer: Arc<Tokenizer>,
    stop_tokens: Vec<u32>,
    cache: PrefixCache<AnyState>,
    max_batch: usize,
    metrics: Arc<Metrics>,
    active: Vec<Sequence>,
    /// Seeds requests that give none, so that two such requests differ.
    next_seed: u64,
}

impl Scheduler {
    fn run(mut self, rx: Receiver<Job>) {
        loop {
            if !self.admit(&rx) {
                return;
            }
            self.prefill();
            self.decode_step();
            self.retire();
            Metrics::set(&self.metrics.active_sequences, self.active.len());
        }
    }

    /// Takes waiting jobs while the batch has room, blocking when nothing is running. Returns
    /// false when the channel is closed and nothing is left to do.
    fn admit(&mut self, rx: &Receiver<Job>) -> bool {
        while self.active.len() < self.max_batch {
            let job = if self.active.is_empty() {
                release_freed_memory();
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return false,
                }
            } else {
                match rx.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            };
            self.metrics.queue_length.fetch_sub(1, Ordering::Relaxed);
            if job.events.is_closed() {
                Metrics::add(&self.metrics.cancelled, 1);
                continue;
            }
            let seq = self.begin(job);
            self.active.push(seq);
        }
        true
    }

    /// A new sequence, resumed from the longest cached prefix of its prompt.
    fn begin(&mut self, job: Job) -> Sequence {
        let g = &job.generation;
        let mut sampling = g.sampling.clone();
        if sampling.seed == u64::MAX {
            sampling.seed = self.next_seed;
            self.next_seed += 1;
        }
        let mut usage = Usage { prompt_tokens: g.prompt.len(), ..Usage::default() };
        let (state, fed, logits) = match self.cache.lookup(&g.prompt) {
            Some(hit) => {
                usage.cached_tokens = hit.tokens;
                Metrics::add(&self.metrics.cache_hits, 1);
                (hit.state, g.prompt[..hit.tokens].to_vec(), hit.logits)
            }
            None => {
                Metrics::add(&self.metrics.cache_misses, 1);
                (self.model.new_state(), Vec::new(), Vec::new())
            }
        };
        Metrics::add(&self.metrics.prompt_tokens, usage.prompt_tokens);
        Metrics::add(&self.metrics.cached_tokens, usage.cached_tokens);
        Sequence {
            scanner: StopScanner::new(g.stop.clone()),
            sampler: Sampler::new(sampling),
            job,
            state,
            phase: Phase::Prefill,
            fed,
            logits,
            decoder: StreamDecoder::new(),
            usage,
        }
    }

    /// Prefills sequences still in their prompt, oldest first: all of them when nothing is
    /// decoding, else at most [`PREFILL_CHUNK`] tokens in all this turn. A sequence whose prompt
    /// is done samples its first token.
    fn prefill(&mut self) {
        let decoding = self.active.iter().any(|s| matches!(s.phase, Phase::Decode { .. }));
        let mut budget = if decoding { PREFILL_CHUNK } else { usize::MAX };
        for i in 0..self.active.len() {
            if budget == 0 {
                break;
            }
            if matches!(self.active[i].phase, Phase::Prefill) {
                budget -= self.prefill_chunk(i, budget);
            }
        }
    }

    /// Feeds up to `budget` more prompt tokens of sequence `i` (and samples its first token
    /// once the prompt is done); returns the number of tokens fed.
    fn prefill_chunk(&mut self, i: usize, budget: usize) -> usize {
        let seq = &mut self.active[i];
        let prompt_len = seq.job.generation.prompt.len();
        let start = seq.fed.len();
        let end = prompt_len.min(start.saturating_add(budget));
        if start < end {
            let tokens = &seq.job.generation.prompt[start..end];
            match self.model.forward_last(&mut seq.state, tokens) {
                Ok(logits) => seq.logits = logits,
                Err(e) => {
                    let _ = seq.job.events.send(Event::Failed(e.to_string()));
                    seq.phase = Phase::Retired;
                    return end - start;
                }
            }
            seq.fed.extend_from_slice(tokens);
            if end < prompt_len {
                return end - start;
            }
        }
        // The prompt's state, kept so that a request repeating or extending the prompt resumes it.
        let bytes = backend::state_bytes(&seq.state);
        self.cache.insert(seq.fed.clone(), seq.state.clone(), bytes, seq.logits.clone());
        Metrics::set(&self.metrics.cache_bytes, self.cache.bytes());
        self.metrics.time_to_first_token(seq.job.arrived.elapsed());
        let seq = &mut self.active[i];
        let logits = std::mem::take(&mut seq.logits);
        let (next, logprob) = choose(seq, &logits, self.tokenizer.vocab_size());
        if report(seq, next, logprob, &self.tokenizer, &self.stop_tokens, &self.metrics) {
            seq.logits = logits;
        }
        end - start
    }

    /// One batched step of every decoding sequence, then each one's next token.
    fn decode_step(&mut self) {
        let mut tokens = Vec::new();
        let mut states: Vec<&mut AnyState> = Vec::new();
        for seq in self.active.iter_mut() {
            if let Phase::Decode { pending } = seq.phase {
                if seq.job.events.is_closed() {
                    seq.phase = Phase::Retired;
                    Metrics::add(&self.metrics.cancelled, 1);
                    continue;
                }
                tokens.push(pending);
                states.push(&mut seq.state);
            }
        }
        if tokens.is_empty() {
            return;
        }
        Metrics::set(&self.metrics.batch_size, tokens.len());
        Metrics::add(&self.metrics.decode_steps, 1);
        let result = backend::step_batch(&self.model, &mut states, &tokens);
        // The same sequences, in the same order, as the tokens fed.
        let mut stepped: Vec<&mut Sequence> =
            self.active.iter_mut().filter(|s| matches!(s.phase, Phase::Decode { .. })).collect();
        let logits = match result {
            Ok(logits) => logits,
            Err(e) => {
                for seq in stepped {
                    let _ = seq.job.events.send(Event::Failed(e.to_string()));
                    seq.phase = Phase::Retired;
                }
                return;
            }
        };
        let vocab = self.model.vocab_size();
        let allowed = self.tokenizer.vocab_size();
        // Sampling reads the whole vocabulary per sequence: the sequences are sampled in parallel.
        let picks: Vec<(u32, Option<f64>)> = stepped
            .par_iter_mut()
            .zip(logits.par_chunks(vocab.max(1)))
            .map(|(seq, l)| choose(seq, l, allowed))
            .collect();
        for (k, (seq, (next, logprob))) in stepped.into_iter().zip(picks).enumerate() {
            seq.fed.push(tokens[k]);
            if report(seq, next, logprob, &self.tokenizer, &self.stop_tokens, &self.metrics) {
                // The logits after the last fed token go into the cache with the final state.
                seq.logits = logits[k * vocab..(k + 1) * vocab].to_vec();
            }
        }
    }

    /// Removes retired sequences; the final state of one that finished goes into the cache.
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            if let Phase::Prefill = self.active[i].phase {
                if self.active[i].job.events.is_closed() {
                    self.active[i].phase = Phase::Retired;
                    Metrics::add(&self.metrics.cancelled, 1);
                }
            }
            if !matches!(self.active[i].phase, Phase::Retired) {
                i += 1;
                continue;
            }
            let seq = self.active.swap_remove(i);
            // Keyed by every token the state has consumed: the next turn of a conversation
            // repeats them (the prompt, the reply) before its new tokens.
            if seq.fed.len() > seq.job.generation.prompt.len() && !seq.logits.is_empty() {
                let bytes = backend::state_bytes(&seq.state);
                self.cache.insert(seq.fed, seq.state, bytes, seq.logits);
                Metrics::set(&self.metrics.cache_bytes, self.cache.bytes());
            }
        }
    }
}

/// The sequence's next token sampled from `logits`, and its log-probability when asked for.
fn choose(seq: &mut Sequence, logits: &[f32], allowed: usize) -> (u32, Option<f64>) {
    let next = seq.sampler.sample(logits, &[], allowed);
    (next, seq.job.generation.logprobs.then(|| log_prob(logits, next)))
}

/// Reports the sequence's sampled token; ends the sequence at an end-of-sequence token, a stop
/// sequence or `max_tokens`. Returns whether it ended (finished, failed or cancelled).
fn report(
    seq: &mut Sequence,
    next: u32,
    logprob: Option<f64>,
    tok: &Tokenizer,
    stop_tokens: &[u32],
    metrics: &Metrics,
) -> bool {
    let g = &seq.job.generation;
    if !g.ignore_eos && stop_tokens.contains(&next) {
        let rest = flush(seq, tok);
        finish(seq, Finish::Stop, rest);
        return true;
    }
    seq.usage.completion_tokens += 1;
    Metrics::add(&metrics.generated_tokens, 1);
    let max_reached = seq.usage.completion_tokens >= g.max_tokens;
    let piece = match seq.decoder.push(tok, next) {
        Ok(p) => p,
        Err(e) => {
            let _ = seq.job.events.send(Event::Failed(e.to_string()));
            seq.phase = Phase::Retired;
            return true;
        }
    };
    let token = tok.decode(&[next]).unwrap_or_default();
    match seq.scanner.push(&piece) {
        Scan::Stopped(text) => {
            let _ = seq.job.events.send(Event::Token { text, token, logprob });
            finish(seq, Finish::Stop, String::new());
            true
        }
        Scan::Text(text) => {
            if seq.job.events.send(Event::Token { text, token, logprob }).is_err() {
                seq.phase = Phase::Retired;
                Metrics::add(&metrics.cancelled, 1);
                true
            } else if max_reached {
                let rest = flush(seq, tok);
                finish(seq, Finish::Length, rest);
                true
            } else {
                seq.phase = Phase::Decode { pending: next };
                false
            }
        }
    }
}

/// At the end of generation: the characters the decoder held back (incomplete UTF-8 shown as
/// U+FFFD) and the text the stop scanner held back, cut at a stop sequence they complete.
fn flush(seq: &mut Sequence, tok: &Tokenizer) -> String {
    let rest = seq.decoder.finish(tok).unwrap_or_default();
    match seq.scanner.push(&rest) {
        Scan::Text(t) => t + &seq.scanner.finish(),
        Scan::Stopped(t) => t,
    }
}

/// Sends the final event (with `text` still to show) and retires the sequence.
fn finish(seq: &mut Sequence, reason: Finish, text: String) {
    let _ = seq.job.events.send(Event::Done { text, finish: reason, usage: seq.usage });
    seq.phase = Phase::Retired;
}

/// Hands memory freed by finished sequences back to the system before the scheduler waits for
/// work. glibc keeps freed blocks in per-thread arenas, so after a burst of concurrent requests
/// (each with its own state and logits) the process would otherwise keep the burst's
/// high-water mark as resident memory while idle.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's malloc_trim takes no pointers and may be called from any thread at
        // any time; it only returns free memory at the top of heaps and in free pages.
        unsafe {
            malloc_trim(0);
        }
    }
}
