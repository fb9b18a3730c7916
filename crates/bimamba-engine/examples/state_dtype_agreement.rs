//! Teacher-forced agreement of the bf16-state model with the f32-state model: feeds one token
//! sequence (a prompt and the f32 model's own greedy continuation) through both states and counts
//! the positions where the two argmaxes agree.
//!
//! `cargo run --release -p bimamba-engine --example state_dtype_agreement -- MODEL_DIR IDS_FILE PROMPT_LEN`
//! where IDS_FILE holds the token ids (prompt then continuation) separated by whitespace or commas.

use bimamba_engine::{Model, State, StateDtype};
use bimamba_lm::sampling::argmax;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: state_dtype_agreement MODEL_DIR IDS_FILE PROMPT_LEN".into());
    }
    let model = Model::load(std::path::Path::new(&args[1]))?;
    let ids: Vec<u32> = std::fs::read_to_string(&args[2])?
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let prompt: usize = args[3].parse()?;
    if prompt == 0 || prompt >= ids.len() {
        return Err(format!("PROMPT_LEN must be in 1..{}", ids.len()).into());
    }
    let v = model.vocab_size();
    let logits = |dtype| model.forward(&mut State::with_dtype(&model.config, dtype), &ids);
    let (f, b) = (logits(StateDtype::F32)?, logits(StateDtype::Bf16)?);
    // Row p predicts token p + 1; score the generated positions only.
    let (mut agree, mut own, mut n) = (0, 0, 0);
    for p in prompt - 1..ids.len() - 1 {
        let (af, ab) = (argmax(&f[p * v..(p + 1) * v]), argmax(&b[p * v..(p + 1) * v]));
        agree += (af == ab) as usize;
        own += (af as u32 == ids[p + 1]) as usize;
        n += 1;
    }
    println!(
        "{n} positions: bf16-state argmax == f32-state argmax at {agree} ({:.2}%); f32 argmax == the given token at {own} ({:.2}%)",
        100.0 * agree as f64 / n as f64,
        100.0 * own as f64 / n as f64
    );
    Ok(())
}
