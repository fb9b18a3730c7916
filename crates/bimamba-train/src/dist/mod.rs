//! Data-parallel training: one process per rank, each with the whole model, its own windows of
//! every step's global batch, and the gradients averaged across ranks before one identical
//! optimizer step on every rank (the scheme of PyTorch's DDP).
//!
//! - Ranks come from the usual launcher environment ([`RankEnv::from_env`]: `WORLD_SIZE`,
//!   `RANK`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, as `torchrun` sets them), or from
//!   `bimamba-train train --nproc N`, which starts N ranks of itself on this host ([`launch`]).
//! - The exchange is the [`Collective`] trait: a sum across ranks, identical on every rank. Its
//!   implementations: [`tcp::TcpCollective`], host buffers over TCP to rank 0, which adds them in
//!   rank order and sends the sum back (deterministic; CPU ranks and the tests), and on CUDA
//!   `nccl::NcclCollective`, which sums the gradients in GPU memory. One rank ([`Solo`])
//!   exchanges nothing, so a one-rank run is the single-process run exactly.
//! - The data: step s draws the same global batch of `world · batch_size` windows on every rank
//!   (one seeded sampler); rank r trains on windows `[r·b, (r+1)·b)`. N ranks with `batch_size`
//!   b therefore see exactly what one process with `batch_size` N·b sees, and the averaged
//!   gradient is that process's gradient (up to the order of f32 sums).
//! - Rank 0 alone writes the run directory (config, metrics, checkpoints, plot); every rank
//!   resumes from the same checkpoint, which records the world size it was trained with.

pub mod launch;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod tcp;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::fused::FusedOps;

/// A group of ranks that can sum buffers across all of them.
pub trait Collective {
    /// This process's rank, 0-based.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Replaces `buf` on every rank by the elementwise sum of all ranks' `buf` (the same length on
    /// every rank, else an error). Every rank gets bit-identical values.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()>;
    /// Whether this group sums buffers in GPU memory ([`Collective::all_reduce_device`]).
    fn device_buffers(&self) -> bool {
        false
    }
    /// Sums, across ranks and in place, `len` f32 values at the CUDA device address `addr`.
    fn all_reduce_device(&mut self, _addr: u64, _len: usize) -> Result<()> {
        Err(Error::Config("this data-parallel group exchanges host buffers only".into()))
    }
}

/// The single-process group: nothing to exchange.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
}

/// Where this process sits among the ranks of a run, as a launcher describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankEnv {
    /// Number of ranks.
    pub world: usize,
    /// This rank.
    pub rank: usize,
    /// This rank's index on its host (its GPU).
    pub local_rank: usize,
    /// Rank 0's address.
    pub master_addr: String,
    /// Rank 0's port.
    pub master_port: u16,
}

impl RankEnv {
    /// One rank, alone.
    pub fn solo() -> Self {
        Self { world: 1, rank: 0, local_rank: 0, master_addr: "127.0.0.1".into(), master_port: 0 }
    }

    /// Reads `WORLD_SIZE`, `RANK`, `LOCAL_RANK` (default `RANK`), `MASTER_ADDR` (default
    /// 127.0.0.1) and `MASTER_PORT` (needed when `WORLD_SIZE` > 1). Without `WORLD_SIZE`, one rank.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`RankEnv::from_env`] over any source of variables.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let num = |key: &str, max: usize| -> Result<Option<usize>> {
            let Some(v) = get(key) else { return Ok(None) };
            match v.trim().parse::<usize>() {
                Ok(n) if n <= max => Ok(Some(n)),
                _ => Err(Error::Config(format!(
                    "environment variable {key}: expected an integer up to {max}, got `{v}`"
                ))),
            }
        };
        let Some(world) = num("WORLD_SIZE", 65_536)? else { return Ok(Self::solo()) };
        if world == 0 {
            return Err(Error::Config("environment variable WORLD_SIZE: must be at least 1, got 0".into()));
        }
        let rank = num("RANK", world - 1)?
            .ok_or_else(|| Error::Config(format!("environment variable RANK: missing (WORLD_SIZE is {world})")))?;
        let local_rank = num("LOCAL_RANK", 65_535)?.unwrap_or(rank);
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let master_port = match num("MASTER_PORT", u16::MAX as usize)? {
            Some(p) => p as u16,
            None if world == 1 => 0,
            None => {
                return Err(Error::Config(format!(
                    "environment variable MASTER_PORT: missing (WORLD_SIZE is {world}; rank 0 listens on it)"
                )))
            }
        };
        Ok(Self { world, rank, local_rank, master_addr, master_port })
    }

    /// Joins the group (rank 0 waits for the others): [`Solo`] for one rank; NCCL when the
    /// model is on a CUDA GPU (`gpu`: its ordinal), since GPU tensors travel through NCCL only;
    /// else the TCP group.
    pub fn connect(&self, gpu: Option<usize>) -> Result<Box<dyn Collective>> {
        if self.world == 1 {
            return Ok(Box::new(Solo));
        }
        match gpu {
            #[cfg(feature = "cuda")]
            Some(ordinal) => Ok(Box::new(nccl::NcclCollective::connect(self, ordinal)?)),
            #[cfg(not(feature = "cuda"))]
            Some(_) => Err(Error::Config("data-parallel training on GPUs needs the `cuda` feature (NCCL)".into())),
            None => Ok(Box::new(tcp::TcpCollective::connect(self)?)),
        }
    }
}

/// Sums one value per rank (the step's loss, a stop flag) across the group, in f64 on the host.
pub fn all_reduce_scalars(comm: &mut dyn Collective, values: &[f64]) -> Result<Vec<f64>> {
    if comm.world() == 1 {
        return Ok(values.to_vec());
    }
    let mut buf: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    comm.all_reduce_sum(&mut buf)?;
    Ok(buf.into_iter().map(f64::from).collect())
}

/// Gradients of `model`'s parameters in the model's order: onto the host, flattened, or as
/// flat f32 tensors on the device.
struct Gather<'a, B: Backend> {
    grads: &'a GradientsParams,
    host: Option<Vec<f32>>,
    device: Vec<Tensor<B, 1>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Gather<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(g) = self.grads.get::<AB::InnerBackend, D>(param.id) {
            match &mut self.host {
                Some(flat) => flat.extend(g.into_data().iter::<f32>()),
                None => {
                    let n = g.shape().num_elements();
                    self.device.push(g.reshape([n]).cast(DType::F32));
                }
            }
        }
    }
}

/// Where the summed gradients are.
enum Summed<'a, B: Backend> {
    Host(&'a [f32]),
    Device(Tensor<B, 1>),
}

/// Puts the averaged gradients back, in the same order.
struct Unflatten<'a, B: Backend> {
    grads: &'a mut GradientsParams,
    summed: Summed<'a, B>,
    at: usize,
    scale: f32,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Unflatten<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(g) = self.grads.remove::<AB::InnerBackend, D>(param.id) {
            let shape = g.shape();
            let n = shape.num_elements();
            let avg = match &self.summed {
                Summed::Host(flat) => {
                    let vals: Vec<f32> = flat[self.at..self.at + n].iter().map(|v| v * self.scale).collect();
                    let opts = crate::ops::opts::<AB::InnerBackend>(&g.device());
                    Tensor::<AB::InnerBackend, D>::from_data(TensorData::new(vals, shape), opts)
                }
                Summed::Device(flat) => flat.clone().narrow(0, self.at, n).mul_scalar(self.scale).reshape(shape),
            };
            self.at += n;
            self.grads.register::<AB::InnerBackend, D>(param.id, avg.cast(g.dtype()));
        }
    }
}

/// Averages the gradients across the group: every rank ends with the mean of all ranks'
/// gradients. They are summed as one flat f32 buffer: in GPU memory when the group can
/// (NCCL), else on the host, which the collective sends in buckets. With one rank the gradients
/// are returned untouched.
pub fn average_gradients<AB, M>(
    model: &M,
    mut grads: GradientsParams,
    comm: &mut dyn Collective,
) -> Result<GradientsParams>
where
    AB: AutodiffBackend<InnerBackend: FusedOps>,
    M: AutodiffModule<AB>,
{
    let world = comm.world();
    if world == 1 {
        return Ok(grads);
    }
    let on_device = comm.device_buffers();
    let mut gather =
        Gather::<AB::InnerBackend> { grads: &grads, host: (!on_device).then(Vec::new), device: Vec::new() };
    model.visit(&mut gather);
    let (mut host, parts) = (gather.host, gather.device);
    let summed = match host.as_mut() {
        Some(flat) => {
            comm.all_reduce_sum(flat)?;
            Summed::Host(&flat[..])
        }
        None if parts.is_empty() => return Ok(grads),
        None => {
            let flat = Tensor::cat(parts, 0);
            let addr = AB::InnerBackend::cuda_address(&flat).ok_or_else(|| {
                Error::Config("data-parallel: the gradients are not in CUDA memory, which NCCL sums".into())
            })?;
            comm.all_reduce_device(addr, flat.dims()[0])?;
            Summed::Device(flat)
        }
    };
    let mut u = Unflatten::<AB::InnerBackend> { grads: &mut grads, summed, at: 0, scale: 1.0 / world as f32 };
    model.visit(&mut u);
    Ok(grads)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<RankEnv> {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RankEnv::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn launcher_environment_is_read_and_checked() {
        assert_eq!(env(&[]).expect("solo"), RankEnv::solo());
        let e = env(&[("WORLD_SIZE", "4"), ("RANK", "2"), ("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")])
            .expect("valid");
        assert_eq!(
            (e.world, e.rank, e.local_rank, e.master_addr.as_str(), e.master_port),
            (4, 2, 2, "10.0.0.1", 29500)
        );
        let e = env(&[("WORLD_SIZE", "4"), ("RANK", "5"), ("LOCAL_RANK", "1"), ("MASTER_PORT", "1")]);
        for (vars, needle) in [
            (vec![("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")], "RANK"),
            (vec![("WORLD_SIZE", "2"), ("MASTER_PORT", "1")], "RANK: missing"),
            (vec![("WORLD_SIZE", "0")], "WORLD_SIZE"),
            (vec![("WORLD_SIZE", "two")], "WORLD_SIZE"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "1")], "MASTER_PORT"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_PORT", "70000")], "MASTER_PORT"),
        ] {
            let msg = env(&vars).expect_err(needle).to_string();
            assert!(msg.contains(needle) && !msg.contains('\n'), "{msg}");
        }
        assert!(e.is_err());
    }
}
