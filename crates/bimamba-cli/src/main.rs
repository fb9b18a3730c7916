//! `bimamba`: run, evaluate and inspect Mamba-2 and Bi-Mamba language models on the CPU.

mod commands;
mod model_args;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bimamba", version, about = "1-bit Mamba-2 (Bi-Mamba) language models: run, evaluate, inspect")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt (only the continuation goes to stdout).
    Generate(commands::generate::GenerateArgs),
    /// Evaluate a model: perplexity on a text file.
    #[command(subcommand)]
    Eval(commands::eval::EvalCommand),
    /// Describe a model: configuration, parameter counts, bits per weight, file size, memory.
    Info(commands::info::InfoArgs),
    /// Post-training quantization of a full-precision model: XNOR, GPTQ, BiLLM or PB-LLM.
    Quantize(commands::quantize::QuantizeArgs),
    /// Convert a latent Bi-Mamba checkpoint into the packed 1-bit format.
    Pack(commands::pack::PackArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => commands::generate::run(a),
        Command::Eval(c) => commands::eval::run(c),
        Command::Info(a) => commands::info::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Pack(a) => commands::pack::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes joined by ": ".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
