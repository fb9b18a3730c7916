//! The GPU collective: NCCL (through cudarc's bindings, loaded at run time) sums the gradients
//! in the GPUs' memory, one process per GPU. The ranks first meet over TCP
//! ([`super::tcp::TcpCollective`]), which carries rank 0's NCCL unique id to the others and the
//! step's few host scalars (loss, stop flag); the gradient buffers never leave the GPU.
//!
//! The buffer is the trainer's flattened gradient, whose device address the backend gives after
//! every queued kernel has run (`FusedOps::cuda_address`). The sum runs on a stream of its own in
//! the primary context of this rank's GPU (the context CubeCL uses), and is waited for before the
//! buffer is read again.

use std::ffi::c_int;

use cudarc::driver::{result as cu, sys as cusys};
use cudarc::nccl::{result as nccl, sys as ncclsys};

use super::tcp::TcpCollective;
use super::{Collective, RankEnv};
use crate::error::{Error, Result};

fn fail(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Config(format!("NCCL: {what} failed: {e:?}"))
}

/// An NCCL communicator over the ranks, with the TCP group beside it for host values.
pub struct NcclCollective {
    host: TcpCollective,
    comm: ncclsys::ncclComm_t,
    stream: cusys::CUstream,
}

impl NcclCollective {
    /// Joins the group on GPU `ordinal` (this rank's `LOCAL_RANK`).
    pub fn connect(env: &RankEnv, ordinal: usize) -> Result<Self> {
        // SAFETY: only asks the loader whether libnccl can be opened.
        if !unsafe { ncclsys::is_culib_present() } {
            return Err(Error::Config(
                "NCCL: libnccl.so.2 cannot be loaded (install NCCL or put its lib folder, e.g. the pip package nvidia-nccl's, on LD_LIBRARY_PATH)".into(),
            ));
        }
        let mut host = TcpCollective::connect(env)?;
        // Rank 0's unique id reaches every rank through one host sum: its 128 bytes as integers
        // 0..=255, exact in f32, and zeros from every other rank.
        let mut bytes = [0f32; 128];
        if env.rank == 0 {
            let id = nccl::get_uniqueid().map_err(|e| fail("ncclGetUniqueId", e))?;
            for (v, b) in bytes.iter_mut().zip(id.internal) {
                *v = f32::from(b as u8);
            }
        }
        host.all_reduce_sum(&mut bytes)?;
        let mut id = ncclsys::ncclUniqueId { internal: [0; 128] };
        for (b, v) in id.internal.iter_mut().zip(bytes) {
            *b = v as u8 as std::ffi::c_char;
        }
        cu::init().map_err(|e| fail("cuInit", e))?;
        let dev = cu::device::get(ordinal as c_int).map_err(|e| fail(&format!("CUDA device {ordinal}"), e))?;
        // SAFETY: `dev` is a valid device; its primary context is CubeCL's, made current on this
        // thread so that NCCL and the stream below use it.
        let stream = unsafe {
            let ctx = cu::primary_ctx::retain(dev).map_err(|e| fail("cuDevicePrimaryCtxRetain", e))?;
            cu::ctx::set_current(ctx).map_err(|e| fail("cuCtxSetCurrent", e))?;
            cu::stream::create(cu::stream::StreamKind::NonBlocking).map_err(|e| fail("cuStreamCreate", e))?
        };
        let mut comm: ncclsys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is written by NCCL; the id is the one every rank received.
        unsafe { nccl::comm_init_rank(&mut comm, env.world as c_int, id, env.rank as c_int) }
            .map_err(|e| fail("ncclCommInitRank", e))?;
        Ok(Self { host, comm, stream })
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.host.rank()
    }
    fn world(&self) -> usize {
        self.host.world()
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        self.host.all_reduce_sum(buf)
    }
    fn device_buffers(&self) -> bool {
        true
    }
    fn all_reduce_device(&mut self, addr: u64, len: usize) -> Result<()> {
        let p = addr as *mut std::ffi::c_void;
        // SAFETY: `addr` holds `len` f32 values on this rank's GPU, written by kernels that have
        // all finished (the caller synchronized); the sum is in place and waited for here.
        unsafe {
            nccl::all_reduce(
                p,
                p,
                len,
                ncclsys::ncclDataType_t::ncclFloat32,
                ncclsys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream as ncclsys::cudaStream_t,
            )
            .map_err(|e| fail("ncclAllReduce", e))?;
            cu::stream::synchronize(self.stream).map_err(|e| fail("cuStreamSynchronize", e))?;
        }
        Ok(())
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        // SAFETY: the communicator and stream were created in `connect` and are used no more.
        unsafe {
            let _ = nccl::comm_destroy(self.comm);
            let _ = cu::stream::destroy(self.stream);
        }
    }
}
