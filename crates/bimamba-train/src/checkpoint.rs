//! Checkpoints: `run/checkpoints/step-NNNNNNNN/` holding `model.safetensors` (weights by
//! name), `optim.safetensors` (AdamW moments) and `state.json` ([`TrainState`]: step, optimizer
//! step count, sampler RNG and position). A checkpoint is written into a `.tmp` folder, every file
//! fsynced, the folder renamed, and only then is `checkpoints/latest` replaced (temp + rename):
//! a kill at any moment leaves the previous checkpoint intact and `latest` pointing at a whole one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::WindowSampler;
use crate::error::{Error, Result};
use crate::params::{read_safetensors, write_atomic, write_safetensors, NamedTensors};

/// Checkpoint format version.
pub const CHECKPOINT_VERSION: u32 = 1;

/// Everything besides tensors that an exact resume needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Format version.
    pub version: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// AdamW's update count (bias correction).
    pub adam_steps: u64,
    /// The window sampler, RNG included.
    pub sampler: WindowSampler,
    /// Training tokens consumed.
    pub tokens_seen: u64,
    /// Wall-clock seconds spent training so far.
    pub elapsed_s: f64,
    /// Data-parallel ranks the run trains with (checkpoints from before data parallelism: 1).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// Its folder.
    pub dir: PathBuf,
    /// Model weights by name.
    pub model: NamedTensors,
    /// Optimizer moments by name.
    pub optim: NamedTensors,
    /// Loop state.
    pub state: TrainState,
}

fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

/// Writes a checkpoint under `run_dir/checkpoints` and keeps the newest `keep` of them.
pub fn save(
    run_dir: &Path,
    model: &NamedTensors,
    optim: &NamedTensors,
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf> {
    let root = run_dir.join("checkpoints");
    std::fs::create_dir_all(&root).map_err(Error::io(&root))?;
    let fin = step_dir(&root, state.step);
    let tmp = root.join(format!(".step-{:08}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(Error::io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(Error::io(&tmp))?;
    write_safetensors(&tmp.join("model.safetensors"), model, None)?;
    write_safetensors(&tmp.join("optim.safetensors"), optim, None)?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| Error::Config(e.to_string()))?;
    write_atomic(&tmp.join("state.json"), &json)?;
    if fin.exists() {
        std::fs::remove_dir_all(&fin).map_err(Error::io(&fin))?;
    }
    std::fs::rename(&tmp, &fin).map_err(Error::io(&fin))?;
    if let Ok(d) = std::fs::File::open(&root) {
        // Make the rename durable before `latest` points at it.
        let _ = d.sync_all();
    }
    let name = fin.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    write_atomic(&root.join("latest"), name.as_bytes())?;
    prune(&root, keep.max(1))?;
    Ok(fin)
}

fn prune(root: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(Error::io(root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    steps.sort();
    let n = steps.len();
    for old in steps.into_iter().take(n.saturating_sub(keep)) {
        std::fs::remove_dir_all(&old).map_err(Error::io(&old))?;
    }
    Ok(())
}

/// The folder `checkpoints/latest` points at, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let root = run_dir.join("checkpoints");
    let p = root.join("latest");
    if !p.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&p).map_err(Error::io(&p))?;
    let dir = root.join(name.trim());
    if !dir.is_dir() {
        return Err(Error::format(&p, format!("points at {} which does not exist", dir.display())));
    }
    Ok(Some(dir))
}

/// Loads the checkpoint in `dir`.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let spath = dir.join("state.json");
    let text = std::fs::read_to_string(&spath).map_err(Error::io(&spath))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| Error::format(&spath, e.to_string()))?;
    if state.version != CHECKPOINT_VERSION {
        return Err(Error::format(
            &spath,
            format!("checkpoint version {} (this build reads {CHECKPOINT_VERSION})", state.version),
        ));
    }
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        model: read_safetensors(&dir.join("model.safetensors"))?,
        optim: read_safetensors(&dir.join("optim.safetensors"))?,
        state,
    })
}

/// What every checkpoint of a run must agree with: fixed by its configuration, which `--resume`
/// has already compared with the run's own.
#[derive(Clone, Copy, Debug)]
pub struct RunShape {
    /// `data.seq_len`.
    pub seq_len: usize,
    /// Windows aligned to a top-k teacher file's.
    pub aligned: bool,
    /// Data-parallel ranks.
    pub world: usize,
    /// Windows drawn per optimizer step: batch size × accumulation × ranks.
    pub windows_per_step: u64,
    /// Tokens per optimizer step: windows × seq_len.
    pub tokens_per_step: u64,
}

impl Checkpoint {
    /// Refuses a checkpoint whose `state.json` disagrees with its folder or the run's
    /// configuration (an edited or damaged file), naming the field, before training reads it.
    pub fn check(&self, run: &RunShape) -> Result<()> {
        let spath = self.dir.join("state.json");
        let s = &self.state;
        let bad = |field: &str, got: String, want: String| {
            Err(Error::format(&spath, format!("{field} is {got} but {want}; the checkpoint was edited or damaged")))
        };
        let folder = self.dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("step-"));
        if let Some(step) = folder.and_then(|n| n.parse::<u64>().ok()) {
            if s.step != step {
                return bad("step", s.step.to_string(), format!("the folder is step {step}"));
            }
        }
        if s.sampler.seq_len != run.seq_len {
            return bad("sampler.seq_len", s.sampler.seq_len.to_string(), format!("data.seq_len is {}", run.seq_len));
        }
        if s.sampler.aligned != run.aligned {
            let why =
                if run.aligned { "the top-k teacher file needs aligned windows" } else { "windows are not aligned" };
            return bad("sampler.aligned", s.sampler.aligned.to_string(), why.to_string());
        }
        if s.world_size != run.world {
            return Err(Error::format(
                &spath,
                format!(
                    "the run was trained with {} data-parallel ranks; resume it with --nproc {} (this process has {})",
                    s.world_size, s.world_size, run.world
                ),
            ));
        }
        let want = |per: u64| s.step.checked_mul(per);
        if s.adam_steps != s.step {
            return bad("adam_steps", s.adam_steps.to_string(), format!("{} steps were taken", s.step));
        }
        if Some(s.sampler.drawn) != want(run.windows_per_step) {
            return bad(
                "sampler.drawn",
                s.sampler.drawn.to_string(),
                format!("{} steps of {} windows were drawn", s.step, run.windows_per_step),
            );
        }
        if Some(s.tokens_seen) != want(run.tokens_per_step) {
            return bad(
                "tokens_seen",
                s.tokens_seen.to_string(),
                format!("{} steps of {} tokens were seen", s.step, run.tokens_per_step),
            );
        }
        if !(s.elapsed_s.is_finite() && s.elapsed_s >= 0.0) {
            return bad("elapsed_s", s.elapsed_s.to_string(), "it counts seconds".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn save_load_prune_and_latest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut model = NamedTensors::new();
        model.insert("a.weight".into(), TensorData::new(vec![1.0f32, -2.5, 3.0, 0.0], [2, 2]));
        let mut optim = NamedTensors::new();
        optim.insert("exp_avg.a.weight".into(), TensorData::new(vec![0.5f32; 4], [2, 2]));
        let mut state = TrainState {
            version: CHECKPOINT_VERSION,
            step: 0,
            adam_steps: 0,
            sampler: WindowSampler::new(8, false, 3),
            tokens_seen: 0,
            elapsed_s: 0.0,
            world_size: 1,
        };
        assert!(latest(dir.path()).expect("no error").is_none());
        for step in [10, 20, 30] {
            state.step = step;
            state.sampler.next_start(100).expect("fits");
            save(dir.path(), &model, &optim, &state, 2).expect("save");
        }
        let l = latest(dir.path()).expect("ok").expect("some");
        assert!(l.ends_with("step-00000030"));
        assert!(!dir.path().join("checkpoints/step-00000010").exists());
        assert!(dir.path().join("checkpoints/step-00000020").exists());
        let c = load(&l).expect("load");
        assert_eq!(c.state, state);
        assert_eq!(c.model["a.weight"].iter::<f32>().collect::<Vec<_>>(), vec![1.0, -2.5, 3.0, 0.0]);
        assert_eq!(c.optim.len(), 1);
    }
}
