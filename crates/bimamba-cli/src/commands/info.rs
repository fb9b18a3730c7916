//! `bimamba info`: what a model is and what it costs.

use anyhow::Result;
use bimamba_formats::Checkpoint;
use clap::Args;
use serde_json::json;

use crate::model_args::ModelArgs;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let (model, dir) = a.model.open_mamba("info")?;
    let file_bytes = Checkpoint::open(&dir)?.file_bytes();
    let c = &model.config;
    let (binary, dense) = model.parameter_counts();
    let proj_bytes: usize =
        model.layers.iter().map(|l| l.mixer.in_proj.weight_bytes() + l.mixer.out_proj.weight_bytes()).sum();
    let proj_params: usize = model
        .layers
        .iter()
        .map(|l| l.mixer.in_proj.rows() * l.mixer.in_proj.cols() + l.mixer.out_proj.rows() * l.mixer.out_proj.cols())
        .sum();
    let weight_bytes = model.weight_bytes();
    let state_bytes = model.new_state().bytes();
    // Activations of one prefill block dominate the scratch memory.
    let scratch =
        4 * bimamba_engine::model::PREFILL_BLOCK * (c.d_in_proj() + c.conv_dim() + 2 * c.d_inner() + 3 * c.d_model);
    let total = binary + dense;
    let bpw = 8.0 * weight_bytes as f64 / total as f64;
    let emb = &model.embedding;
    let mb = |b: usize| b as f64 / 1e6;
    let head = model.lm_head.as_ref();
    let kind = if binary > 0 { "Bi-Mamba (1-bit in_proj/out_proj)" } else { "Mamba-2 (full precision)" };
    let v = json!({
        "model": dir.display().to_string(),
        "kind": kind,
        "dialect": format!("{:?}", c.dialect),
        "d_model": c.d_model, "n_layer": c.n_layer, "vocab_size": c.vocab_size,
        "padded_vocab_size": model.vocab_size(), "d_inner": c.d_inner(), "d_state": c.d_state,
        "headdim": c.headdim, "nheads": c.nheads, "ngroups": c.ngroups, "d_conv": c.d_conv,
        "chunk_size": c.chunk_size, "tie_embeddings": c.tie_embeddings,
        "params_total": total, "params_binary": binary, "params_dense": dense,
        "binary_fraction": binary as f64 / total as f64,
        "projection_bits_per_weight": 8.0 * proj_bytes as f64 / proj_params as f64,
        "bits_per_weight": bpw,
        "embedding_storage": emb.storage(),
        "embedding_bytes": emb.weight_bytes(),
        "lm_head_storage": head.map_or("tied", |h| h.storage()),
        "lm_head_bytes": head.map_or(0, |h| h.weight_bytes()),
        "weight_bytes_in_memory": weight_bytes,
        "file_bytes": file_bytes,
        "state_bytes": state_bytes,
        "expected_resident_bytes": weight_bytes + state_bytes + scratch,
    });
    if a.json {
        println!("{v}");
        return Ok(());
    }
    println!("model        {}", dir.display());
    println!("kind         {kind}, {:?} dialect", c.dialect);
    println!(
        "shape        d_model {}  n_layer {}  d_inner {}  heads {} x {}  d_state {}  groups {}  d_conv {}",
        c.d_model,
        c.n_layer,
        c.d_inner(),
        c.nheads,
        c.headdim,
        c.d_state,
        c.ngroups,
        c.d_conv
    );
    println!("vocab        {} ({} rows), tied embeddings: {}", c.vocab_size, model.vocab_size(), c.tie_embeddings);
    println!(
        "parameters   {:.3} M total: {:.3} M binary ({:.1}%), {:.3} M high precision",
        total as f64 / 1e6,
        binary as f64 / 1e6,
        100.0 * binary as f64 / total as f64,
        dense as f64 / 1e6
    );
    println!(
        "bits/weight  {:.3} overall, {:.3} in in_proj/out_proj",
        bpw,
        8.0 * proj_bytes as f64 / proj_params as f64
    );
    let head_line = match head {
        None => "tied LM head".to_string(),
        Some(h) => format!("LM head {} {:.2} MB", h.storage(), mb(h.weight_bytes())),
    };
    println!(
        "embedding    {} [{} x {}], {:.2} MB ({:.1}% of the weights); {head_line}",
        emb.storage(),
        emb.rows(),
        emb.cols(),
        mb(emb.weight_bytes()),
        100.0 * emb.weight_bytes() as f64 / weight_bytes as f64
    );
    println!("file size    {:.2} MB", file_bytes as f64 / 1e6);
    println!(
        "memory       weights {:.2} MB + state {:.2} MB + scratch {:.2} MB = {:.2} MB expected resident",
        mb(weight_bytes),
        mb(state_bytes),
        mb(scratch),
        mb(weight_bytes + state_bytes + scratch)
    );
    Ok(())
}
