//! The scratch memory of a forward pass: the temporaries of one block of tokens through one layer,
//! grown to the largest block on first use and then reused by every layer and every block of the
//! call. Prefill thus allocates them (and the OS maps and zeroes their pages) once per call
//! instead of once per layer and block; the products' own temporaries are reused per thread
//! inside `bimamba-kernels`.
//!
//! At the 2.7b shape a 64-token block ([`crate::model::PREFILL_BLOCK`]) needs 9.4 MB here (8.0
//! MB without column scales): the buffers the layer used to allocate and free, so peak memory
//! stays as it was (crates/bimamba-kernels/KERNELS.md, "Scratch memory of a forward pass").

/// Buffers of one block of `t` tokens (or, in a batched decode step, one token of each of `t`
/// sequences) through a layer. The shapes are what the current block uses; a buffer may be
/// longer, left so by a larger block, and holds what its last use wrote: every user overwrites
/// the part it reads.
#[derive(Clone, Debug, Default)]
pub struct Workspace {
    /// [t, d_model]: the residual stream RMS-normed, the mixer's input.
    pub(crate) u: Vec<f32>,
    /// [t, d_in_proj]: in_proj's output, z | xBC | dt per token.
    pub(crate) zxbcdt: Vec<f32>,
    /// [t, conv_dim]: the causal conv's output after SiLU, x | B | C per token.
    pub(crate) xbc: Vec<f32>,
    /// [t, H]: dt after softplus and the dt_limit clamp.
    pub(crate) dt: Vec<f32>,
    /// [H, t, P]: the scan's readout (skip term included), head-major.
    pub(crate) ys: Vec<f32>,
    /// [t, d_inner]: y gated and normed, out_proj's input.
    pub(crate) y: Vec<f32>,
    /// [t, d_model]: the mixer's output (out_proj's).
    pub(crate) out: Vec<f32>,
    /// [t, cols]: the activations α ⊙ x of a 1-bit projection with per-column scales
    /// ([`crate::Linear::forward_with`]), cols = d_model for in_proj, d_inner for out_proj.
    pub(crate) xs: Vec<f32>,
}

impl Workspace {
    /// An empty workspace; the buffers grow on first use.
    pub fn new() -> Workspace {
        Workspace::default()
    }

    /// Bytes held by the buffers.
    pub fn bytes(&self) -> usize {
        let bufs = [&self.u, &self.zxbcdt, &self.xbc, &self.dt, &self.ys, &self.y, &self.out, &self.xs];
        bufs.iter().map(|b| b.capacity() * size_of::<f32>()).sum()
    }
}

/// The first `len` elements of `buf`, which grows (with zeros) when shorter. The elements hold
/// what the last use left: the caller overwrites those it reads.
pub(crate) fn prefix(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}
