//! `bimamba serve`: an OpenAI-compatible HTTP server over any model of this workspace.
//!
//! ```text
//! HTTP (tokio + axum) ──► routes: check the request, tokenize, submit a Job ──► bounded queue
//!                                                                                   │
//! scheduler thread (owns the model) ◄───────────────────────────────────────────────┘
//!   admit (prefix-state cache lookup) → prefill a chunk → one batched decode step → retire
//!   └─► per-request channel of Events ──► whole JSON response, or server-sent events
//! ```
//!
//! docs/SERVING.md describes the design; [`scheduler`] the batching, [`prefix_cache`] the cache,
//! [`template`] how chat messages become the prompt.

pub mod api;
mod backend;
pub mod chat;
pub mod error;
pub mod metrics;
pub mod prefix_cache;
mod routes;
pub mod scheduler;
pub mod stop;
pub mod template;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bimamba_models::AnyModel;
use bimamba_text::Tokenizer;

use crate::api::Limits;
use crate::metrics::Metrics;
use crate::routes::AppState;
use crate::scheduler::SchedulerOptions;
pub use crate::template::{ChatTemplate, SpecialTokens, TemplateError};

/// How the server runs (the command line's options).
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// The id `/v1/models` lists and requests must name (or leave out).
    pub model_id: String,
    pub max_batch: usize,
    pub max_queue: usize,
    pub state_cache_bytes: usize,
    pub api_key: Option<String>,
    pub max_prompt_tokens: usize,
    pub max_tokens: usize,
    /// After a termination signal: how long running requests may take to finish before they
    /// are cancelled.
    pub drain_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A server bound to its address, not yet answering.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    app: Arc<AppState>,
    scheduler: std::thread::JoinHandle<()>,
    drain_timeout: Duration,
}

impl Server {
    /// Binds the address and starts the scheduler thread, which takes the model; chat messages
    /// are written as the plain transcript.
    pub fn bind(model: AnyModel, tokenizer: Tokenizer, options: &ServeOptions) -> Result<Server, ServeError> {
        Server::bind_with_template(model, tokenizer, ChatTemplate::Transcript, options)
    }

    /// [`Server::bind`] with chat messages rendered by `chat` ([`ChatTemplate::load`] finds the
    /// model's own).
    pub fn bind_with_template(
        model: AnyModel,
        tokenizer: Tokenizer,
        chat: ChatTemplate,
        options: &ServeOptions,
    ) -> Result<Server, ServeError> {
        // The HTTP side only parses, tokenizes and copies bytes: two threads leave the cores to
        // the model's kernels.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bimamba-http")
            .enable_all()
            .build()?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(options.addr))
            .map_err(|source| ServeError::Bind { addr: options.addr, source })?;
        let metrics = Arc::new(Metrics::default());
        let tokenizer = Arc::new(tokenizer);
        let limits = Limits {
            model_id: options.model_id.clone(),
            max_prompt_tokens: options.max_prompt_tokens,
            max_tokens: options.max_tokens,
            vocab: tokenizer.vocab_size(),
        };
        let sched = SchedulerOptions {
            max_batch: options.max_batch,
            max_queue: options.max_queue,
            cache_bytes: options.state_cache_bytes,
        };
        let (submitter, scheduler) = scheduler::start(model, tokenizer.clone(), sched, metrics.clone())?;
        let app = Arc::new(AppState {
            submitter,
            tokenizer,
            limits,
            chat,
            metrics,
            api_key: options.api_key.clone(),
            started: routes::unix_now(),
            next_id: AtomicU64::new(0),
        });
        Ok(Server { runtime, listener, app, scheduler, drain_timeout: options.drain_timeout })
    }

    /// The address it listens on (the port chosen by the system when 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers requests until `shutdown` completes; then stops accepting connections and lets
    /// running requests finish for up to the drain timeout, after which they are cancelled.
    pub fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let Server { runtime, listener, app, scheduler, drain_timeout } = self;
        let router = routes::router(app);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = started_tx.send(());
        };
        runtime.block_on(async move {
            let server = axum::serve(listener, router).with_graceful_shutdown(signal);
            let deadline = async move {
                if started_rx.await.is_ok() {
                    tokio::time::sleep(drain_timeout).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                r = server => r,
                _ = deadline => {
                    eprintln!("serve: requests still running after {drain_timeout:?}; cancelling them");
                    Ok(())
                }
            }
        })?;
        // Dropping the runtime drops every connection and with it the last submitter: the
        // scheduler sees its channel close, its sequences' clients gone, and ends.
        runtime.shutdown_timeout(Duration::from_secs(1));
        let _ = scheduler.join();
        Ok(())
    }
}

/// Completes at SIGTERM or Ctrl-C (SIGINT).
pub async fn termination_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("serve: shutting down; finishing running requests");
}
