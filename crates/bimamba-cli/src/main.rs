//! `bimamba`: run, evaluate and inspect Mamba-2 and Bi-Mamba language models on the CPU.

mod commands;
mod model_args;
mod progress;
mod runtime_args;

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// Measure decode/prefill speed against this machine's memory-bandwidth ceiling.
    Bench(commands::bench::BenchArgs),
    /// Serve a model over HTTP with OpenAI's API (completions, chat completions, streaming).
    Serve(commands::serve::ServeArgs),
    /// Train a Bi-Mamba or Mamba-2 model (runs the bimamba-train binary; see its --help).
    #[command(disable_help_flag = true)]
    Train(ExternalArgs),
    /// Tokenize text files for training (runs `bimamba-train data ...`).
    #[command(disable_help_flag = true)]
    Data(ExternalArgs),
    /// Export a training run as a model directory (runs `bimamba-train export ...`).
    #[command(disable_help_flag = true)]
    Export(ExternalArgs),
    /// Precompute a teacher's top-k log-probabilities (runs `bimamba-train teacher-logits ...`).
    #[command(disable_help_flag = true)]
    TeacherLogits(ExternalArgs),
}

/// Arguments handed unchanged to the bimamba-train binary.
#[derive(clap::Args)]
struct ExternalArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// A command-line mistake as one line: `--flag value: expected a, b or c` for a value outside
/// a fixed set, else clap's message without its usage and tips.
fn usage_error_line(e: &clap::Error) -> String {
    if let (Some(ContextValue::String(arg)), Some(ContextValue::String(value)), Some(ContextValue::Strings(valid))) =
        (e.get(ContextKind::InvalidArg), e.get(ContextKind::InvalidValue), e.get(ContextKind::ValidValue))
    {
        let flag = arg.split_whitespace().next().unwrap_or(arg);
        let expected = match valid.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        return format!("{flag} {value}: expected {expected}");
    }
    // A negative number for an option that counts something (an unsigned integer): say what is
    // expected rather than clap's "invalid digit".
    if let (ErrorKind::ValueValidation, Some(ContextValue::String(arg)), Some(ContextValue::String(value))) =
        (e.kind(), e.get(ContextKind::InvalidArg), e.get(ContextKind::InvalidValue))
    {
        let unsigned = std::error::Error::source(e).is_some_and(|s| s.is::<std::num::ParseIntError>());
        if unsigned && value.starts_with('-') && value.parse::<f64>().is_ok() {
            let flag = arg.split_whitespace().next().unwrap_or(arg);
            return format!("{flag} {value}: expected a whole number, not a negative one");
        }
    }
    let text = e.render().to_string();
    let lines = text.lines().take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"));
    let kept: Vec<&str> = lines.map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("tip:")).collect();
    kept.join(" ").trim_start_matches("error: ").to_string()
}

/// Every option of every command reads a value like `-1` as a number, so that `--temperature -1`
/// reaches the command's own range check instead of being taken for an unknown flag.
fn negative_numbers(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| if a.get_action().takes_values() { a.allow_negative_numbers(true) } else { a })
        .mut_subcommands(negative_numbers)
}

/// `info` and `quantize` read Mamba-2 / Bi-Mamba directories only: their help says so instead of
/// the `DIR|FILE.gguf` that the commands running any model show.
fn directories_only(cmd: clap::Command) -> clap::Command {
    let dir_only = |a: clap::Arg| {
        a.value_name("DIR").help(
            "Mamba-2 / Bi-Mamba model directory (config.json + model.safetensors or pytorch_model.bin, \
             and usually tokenizer.json); .gguf files are not read by this command. Defaults to \
             $BIMAMBA_MODEL, else the model shipped in models/default.",
        )
    };
    cmd.mut_subcommand("info", |c| c.mut_arg("model", dir_only))
        .mut_subcommand("quantize", |c| c.mut_arg("model", dir_only))
}

fn parse() -> Result<Cli, clap::Error> {
    let matches = negative_numbers(directories_only(Cli::command())).try_get_matches()?;
    Cli::from_arg_matches(&matches)
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("error: {}", bimamba_lm::one_line([usage_error_line(&e)]));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Generate(a) => commands::generate::run(a),
        Command::Eval(c) => commands::eval::run(c),
        Command::Info(a) => commands::info::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Pack(a) => commands::pack::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Train(a) => commands::external::run("train", &a.args),
        Command::Data(a) => commands::external::run("data", &a.args),
        Command::Export(a) => commands::external::run("export", &a.args),
        Command::TeacherLogits(a) => commands::external::run("teacher-logits", &a.args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes joined by ": ", each said once.
            eprintln!("error: {}", bimamba_lm::one_line(e.chain()));
            ExitCode::FAILURE
        }
    }
}
