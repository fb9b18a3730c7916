//! Teacher-forced agreement of the int8-activation 1-bit products (`BinaryAct::Int8`) with the
//! default f32 activations: feeds one token sequence (a prompt and the f32 model's own greedy
//! continuation) through both and counts the positions where the two argmaxes agree, with the
//! logit differences and the f32 model's top-2 margin where they disagree.
//!
//! `cargo run --release -p bimamba-engine --example binary_act_agreement -- MODEL_DIR IDS_FILE PROMPT_LEN`
//! where IDS_FILE holds the token ids (prompt then continuation) separated by whitespace or commas.

use bimamba_engine::linear::BinaryAct;
use bimamba_engine::Model;
use bimamba_lm::sampling::argmax;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: binary_act_agreement MODEL_DIR IDS_FILE PROMPT_LEN".into());
    }
    let mut model = Model::load(std::path::Path::new(&args[1]))?;
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
    let f = model.forward(&mut model.new_state(), &ids)?;
    model.set_binary_act(BinaryAct::Int8);
    let q = model.forward(&mut model.new_state(), &ids)?;
    // Row p predicts token p + 1; score the generated positions only.
    let (mut agree, mut own, mut n) = (0, 0, 0);
    let (mut max_diff, mut sum_diff, mut worst_margin) = (0.0f32, 0.0f64, 0.0f32);
    for p in prompt - 1..ids.len() - 1 {
        let (fr, qr) = (&f[p * v..(p + 1) * v], &q[p * v..(p + 1) * v]);
        let (af, aq) = (argmax(fr), argmax(qr));
        let d = fr.iter().zip(qr).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        max_diff = max_diff.max(d);
        sum_diff += d as f64;
        if af == aq {
            agree += 1;
        } else {
            // The f32 model's margin between its top token and the int8 model's choice.
            worst_margin = worst_margin.max(fr[af] - fr[aq]);
        }
        own += (af as u32 == ids[p + 1]) as usize;
        n += 1;
    }
    println!(
        "{n} positions: int8 argmax == f32 argmax at {agree} ({:.2}%); f32 argmax == the given token at {own} ({:.2}%); \
         max |Δlogit| {max_diff:.4}, mean of per-position max {:.4}; largest f32 margin at a disagreement {worst_margin:.4}",
        100.0 * agree as f64 / n as f64,
        100.0 * own as f64 / n as f64,
        sum_diff / n as f64
    );
    Ok(())
}
