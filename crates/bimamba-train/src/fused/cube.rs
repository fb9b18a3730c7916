//! [`FusedOps`] on Burn's CubeCL backends (CUDA for training; WGPU for the CPU tests): shapes,
//! output buffers and launches of the kernels in `kernels/`.
//!
//! Each kernel replaces a chain of tensor operations whose reference is the trait's default body
//! (`reference.rs`). Parameters, moments and gradients are f32; most kernels read their inputs
//! through the inputs' strides (slices need no copy) and write their outputs through the outputs'
//! strides; the 1-D optimizer kernels take contiguous buffers.

use burn::tensor::{DType, Int, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::{CubeCount, CubeDim};

use super::kernels::block::{
    conv_backward_x_kernel, conv_silu_backward_w_kernel, conv_silu_kernel, fbi_weight_backward_kernel,
    fbi_weight_kernel, gated_rms_norm_backward_kernel, gated_rms_norm_kernel, rms_norm_backward_kernel,
    rms_norm_kernel,
};
use super::kernels::loss::{
    ce_rows_backward_kernel, ce_rows_kernel, soft_ce_rows_backward_kernel, soft_ce_rows_kernel,
};
use super::kernels::optim::adamw_kernel;
use super::kernels::reduce::{col_sum_kernel, COLS_PER_CUBE, ROW_LANES};
use super::kernels::ssd::{
    ssd_decay_scores_backward_acs_kernel, ssd_decay_scores_backward_cb_kernel, ssd_decay_scores_kernel, ACS_MAX_CHUNK,
};

use super::{AdamStep, FusedOps};

/// Threads per cube of the elementwise and reduction kernels.
const CUBE: u32 = 256;

type Prim<R> = CubeTensor<R>;

fn prim<B: burn::tensor::backend::Backend<FloatTensorPrimitive = Prim<R>>, R: CubeRuntime>(t: Tensor<B, 1>) -> Prim<R> {
    into_contiguous(t.into_primitive().tensor())
}

fn empty_like<R: CubeRuntime>(t: &Prim<R>) -> Prim<R> {
    empty_device_dtype(t.client.clone(), t.device.clone(), t.meta.shape().clone(), t.dtype)
}

pub(super) fn float_prim<
    B: burn::tensor::backend::Backend<FloatTensorPrimitive = Prim<R>>,
    R: CubeRuntime,
    const D: usize,
>(
    t: Tensor<B, D>,
) -> Prim<R> {
    t.into_primitive().tensor()
}

pub(super) fn wrap_d<
    B: burn::tensor::backend::Backend<FloatTensorPrimitive = Prim<R>>,
    R: CubeRuntime,
    const D: usize,
>(
    p: Prim<R>,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

pub(super) fn empty_f32<R: CubeRuntime>(like: &Prim<R>, shape: Vec<usize>) -> Prim<R> {
    empty_device_dtype(like.client.clone(), like.device.clone(), shape.into(), DType::F32)
}

fn targets_i32<R: CubeRuntime>(t: Prim<R>) -> Prim<R> {
    assert_eq!(t.dtype, DType::I32, "fused cross-entropy: i32 targets only");
    into_contiguous(t)
}

/// (lse per row) of a [R, V] matrix through the cross-entropy forward kernel.
fn ce_forward<R: CubeRuntime>(z: &Prim<R>, t: &Prim<R>) -> (Prim<R>, Prim<R>) {
    let r = z.meta.shape()[0];
    let (loss, lse) = (empty_f32(z, vec![r]), empty_f32(z, vec![r]));
    ce_rows_kernel::launch::<R>(
        &z.client,
        CubeCount::new_1d(r as u32),
        CubeDim::new_1d(CUBE),
        z.clone().into_tensor_arg(),
        t.clone().into_tensor_arg(),
        loss.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        z.dtype.into(),
    );
    (loss, lse)
}

fn soft_ce_forward<R: CubeRuntime>(s: &Prim<R>, t: &Prim<R>, temperature: f64) -> (Prim<R>, Prim<R>, Prim<R>) {
    let r = s.meta.shape()[0];
    assert_eq!(t.meta.shape()[0], r, "fused soft cross-entropy: student and teacher rows differ");
    assert!(t.meta.shape()[1] <= s.meta.shape()[1], "fused soft cross-entropy: teacher wider than student");
    let (loss, ls, lt) = (empty_f32(s, vec![r]), empty_f32(s, vec![r]), empty_f32(s, vec![r]));
    soft_ce_rows_kernel::launch::<R>(
        &s.client,
        CubeCount::new_1d(r as u32),
        CubeDim::new_1d(CUBE),
        s.clone().into_tensor_arg(),
        t.clone().into_tensor_arg(),
        loss.clone().into_tensor_arg(),
        ls.clone().into_tensor_arg(),
        lt.clone().into_tensor_arg(),
        (1.0 / temperature) as f32,
        [s.dtype.into(), t.dtype.into()],
    );
    (loss, ls, lt)
}

/// The grid of the row × column backward kernels: rows on x, 256-column blocks on y.
fn rows_by_columns(r: usize, v: usize) -> CubeCount {
    CubeCount::new_2d(r as u32, v.div_ceil(CUBE as usize) as u32)
}

/// Cubes of `CUBE` threads covering n elements (spread over the grid's axes where one is not
/// enough; kernels read the linear `ABSOLUTE_POS`).
fn cubes_for<R: CubeRuntime>(client: &cubecl::prelude::ComputeClient<R>, n: usize) -> CubeCount {
    cubecl::calculate_cube_count_elemwise(client, n.max(1), CubeDim::new_1d(CUBE))
}

fn empty_f32_like<R: CubeRuntime>(like: &Prim<R>) -> Prim<R> {
    empty_f32(like, like.meta.shape().to_vec())
}

/// Positions per band of the conv's weight-gradient partial sums (one thread per channel walks a
/// band of one sequence).
const CONV_BAND: usize = 64;

/// Rows per band of one column-sum pass ([`col_sum_kernel`]): 8 row lanes × 32 rows each.
const COL_SUM_BAND: usize = 256;

/// Σ over rows of a [R, N] f32 matrix: passes of [`col_sum_kernel`] until one row is left.
fn col_sum_prim<R: CubeRuntime>(x: Prim<R>) -> Prim<R> {
    let mut x = x;
    loop {
        let [rows, cols] = [x.meta.shape()[0], x.meta.shape()[1]];
        if rows <= 1 {
            return x;
        }
        // Bands of at least COL_SUM_BAND rows, few enough for the grid's y limit.
        let band = COL_SUM_BAND.max(rows.div_ceil(65_535));
        let bands = rows.div_ceil(band);
        let partial = empty_f32(&x, vec![bands, cols]);
        col_sum_kernel::launch::<R>(
            &x.client.clone(),
            CubeCount::new_2d(cols.div_ceil(COLS_PER_CUBE as usize) as u32, bands as u32),
            CubeDim::new_2d(COLS_PER_CUBE, ROW_LANES),
            x.into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            band as u32,
        );
        x = partial;
    }
}

fn check_f32<R: CubeRuntime>(t: &Prim<R>, what: &str) {
    assert_eq!(t.dtype, burn::tensor::DType::F32, "fused {what}: f32 tensors only");
}

/// The memory a CUDA tensor lives in (cubecl-cuda's `GpuResource`, whose `ptr` is the address).
#[cfg(feature = "cuda")]
type CudaResource = <<<cubecl::cuda::CudaRuntime as cubecl::Runtime>::Server as cubecl::server::ComputeServer>::Storage as cubecl_runtime::storage::ComputeStorage>::Resource;

impl<R, F, I, BT> FusedOps for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
    <<R::Server as cubecl::server::ComputeServer>::Storage as cubecl_runtime::storage::ComputeStorage>::Resource:
        'static,
{
    const KERNELS: bool = true;

    #[cfg(feature = "cuda")]
    fn cuda_address(t: &Tensor<Self, 1>) -> Option<u64> {
        // The address must be the tensor's own memory: a contiguous copy would be summed and lost.
        let p = prim(t.clone());
        if !p.is_contiguous() {
            return None;
        }
        cubecl::future::block_on(p.client.sync()).ok()?;
        let res = p.client.get_resource(p.handle.clone()).ok()?;
        let any: &dyn std::any::Any = res.resource();
        any.downcast_ref::<CudaResource>().map(|r| r.ptr)
    }

    fn device_memory(device: &Self::Device) -> Option<super::DeviceMemory> {
        let client = R::client(device);
        cubecl::future::block_on(client.sync()).ok()?;
        let usage = client.memory_usage().ok()?;
        // cubecl-cuda 0.10 sets the largest page to a quarter of the device's total memory
        // (`cuDeviceTotalMem`); other runtimes' pages say nothing about the capacity.
        let capacity = (R::name(&client) == "cuda").then(|| 4 * client.properties().memory.max_page_size);
        Some(super::DeviceMemory { in_use: usage.bytes_in_use, reserved: usage.bytes_reserved, capacity })
    }

    fn release_free_memory(device: &Self::Device) {
        let client = R::client(device);
        let _ = cubecl::future::block_on(client.sync());
        client.memory_cleanup();
    }

    /// The chosen family runs half-precision products (what `matmul-kernels` measures); f32
    /// products stay with Burn's.
    fn matmul<const D: usize>(a: Tensor<Self, D>, b: Tensor<Self, D>) -> Tensor<Self, D> {
        let dtype = a.dtype();
        let name = match dtype {
            DType::BF16 | DType::F16 => super::matmul_kernel(),
            DType::F32 => super::f32_matmul_kernel(),
            _ => None,
        };
        let family = name.and_then(|n| super::matmul::family(&n));
        let Some(family) = family.filter(|_| b.dtype() == dtype) else {
            return a.matmul(b);
        };
        match super::matmul::launch(&family, float_prim(a.clone()), float_prim(b.clone()), dtype) {
            Ok(out) => wrap_d(out),
            // This family cannot run this problem: Burn's product does.
            Err(_) => a.matmul(b),
        }
    }

    fn adamw_update(
        p: Tensor<Self, 1>,
        g: Tensor<Self, 1>,
        m: Tensor<Self, 1>,
        v: Tensor<Self, 1>,
        s: &AdamStep,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>, Tensor<Self, 1>) {
        let (p, g, m, v) = (prim(p), prim(g), prim(m), prim(v));
        for (t, w) in [(&p, "p"), (&g, "g"), (&m, "m"), (&v, "v")] {
            check_f32(t, w);
        }
        let n = p.meta.shape().num_elements();
        assert!(
            [&g, &m, &v].iter().all(|t| t.meta.shape().num_elements() == n),
            "fused AdamW: parameter, gradient and moments differ in size"
        );
        let (po, mo, vo) = (empty_like(&p), empty_like(&m), empty_like(&v));
        let client = p.client.clone();
        adamw_kernel::launch::<R>(
            &client,
            cubes_for(&client, n),
            CubeDim::new_1d(CUBE),
            p.into_tensor_arg(),
            g.into_tensor_arg(),
            m.into_tensor_arg(),
            v.into_tensor_arg(),
            po.clone().into_tensor_arg(),
            mo.clone().into_tensor_arg(),
            vo.clone().into_tensor_arg(),
            s.lr as f32,
            s.decay as f32,
            s.beta1 as f32,
            s.beta2 as f32,
            s.eps as f32,
            s.bias1 as f32,
            s.bias2 as f32,
            s.grad_scale as f32,
        );
        (wrap_d(po), wrap_d(mo), wrap_d(vo))
    }

    fn adamw_update_many(
        params: Vec<super::AdamParam<Self>>,
        s: &AdamStep,
    ) -> Vec<(Tensor<Self, 1>, Tensor<Self, 1>, Tensor<Self, 1>)> {
        super::optim_cube::adamw_many::<Self, R>(params, s)
    }

    fn sum_squares(xs: &[Tensor<Self, 1>], device: &Self::Device) -> Tensor<Self, 1> {
        super::optim_cube::sum_squares_many::<Self, R>(xs, device)
    }

    fn ce_rows(logits: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 1> {
        let z = float_prim(logits);
        let t = targets_i32(targets.into_primitive());
        wrap_d(ce_forward(&z, &t).0)
    }

    fn ce_rows_backward(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        grad: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        let z = float_prim(logits);
        let t = targets_i32(targets.into_primitive());
        let g = into_contiguous(float_prim(grad));
        check_f32(&g, "cross-entropy gradient");
        let (_, lse) = ce_forward(&z, &t);
        let shape = z.meta.shape().clone();
        let out = empty_device_dtype(z.client.clone(), z.device.clone(), shape.clone(), z.dtype);
        let client = z.client.clone();
        let dtype = z.dtype;
        ce_rows_backward_kernel::launch::<R>(
            &client,
            rows_by_columns(shape[0], shape[1]),
            CubeDim::new_1d(CUBE),
            z.into_tensor_arg(),
            t.into_tensor_arg(),
            lse.into_tensor_arg(),
            g.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            dtype.into(),
        );
        wrap_d(out)
    }

    fn soft_ce_rows(student: Tensor<Self, 2>, teacher: Tensor<Self, 2>, temperature: f64) -> Tensor<Self, 1> {
        let (s, t) = (float_prim(student), float_prim(teacher));
        wrap_d(soft_ce_forward(&s, &t, temperature).0)
    }

    fn soft_ce_rows_backward(
        student: Tensor<Self, 2>,
        teacher: Tensor<Self, 2>,
        temperature: f64,
        grad: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        let (s, t) = (float_prim(student), float_prim(teacher));
        let g = into_contiguous(float_prim(grad));
        check_f32(&g, "soft cross-entropy gradient");
        let (_, ls, lt) = soft_ce_forward(&s, &t, temperature);
        let shape = s.meta.shape().clone();
        let out = empty_device_dtype(s.client.clone(), s.device.clone(), shape.clone(), s.dtype);
        let client = s.client.clone();
        let dtypes = [s.dtype.into(), t.dtype.into()];
        soft_ce_rows_backward_kernel::launch::<R>(
            &client,
            rows_by_columns(shape[0], shape[1]),
            CubeDim::new_1d(CUBE),
            s.into_tensor_arg(),
            t.into_tensor_arg(),
            ls.into_tensor_arg(),
            lt.into_tensor_arg(),
            g.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            (1.0 / temperature) as f32,
            dtypes,
        );
        wrap_d(out)
    }

    fn col_sum(x: Tensor<Self, 2>) -> Tensor<Self, 1> {
        let [rows, n] = x.dims();
        if x.dtype() != DType::F32 || rows == 0 {
            return x.sum_dim(0).reshape([n]);
        }
        wrap_d::<Self, R, 2>(col_sum_prim(float_prim(x))).reshape([n])
    }

    fn conv_silu(x: Tensor<Self, 3>, w: Tensor<Self, 2>, bias: Tensor<Self, 1>) -> Tensor<Self, 3> {
        let (x, w, bias) = (float_prim(x), into_contiguous(float_prim(w)), into_contiguous(float_prim(bias)));
        for (t, n) in [(&x, "x"), (&w, "w"), (&bias, "bias")] {
            check_f32(t, n);
        }
        let y = empty_f32_like(&x);
        let n = x.meta.shape().num_elements();
        let client = x.client.clone();
        conv_silu_kernel::launch::<R>(
            &client,
            cubes_for(&client, n),
            CubeDim::new_1d(CUBE),
            x.into_tensor_arg(),
            w.into_tensor_arg(),
            bias.into_tensor_arg(),
            y.clone().into_tensor_arg(),
        );
        wrap_d(y)
    }

    fn conv_silu_backward(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        gy: Tensor<Self, 3>,
    ) -> (Tensor<Self, 3>, Tensor<Self, 2>, Tensor<Self, 1>) {
        let (x, w, bias, gy) =
            (float_prim(x), into_contiguous(float_prim(w)), into_contiguous(float_prim(bias)), float_prim(gy));
        for (t, n) in [(&x, "x"), (&w, "w"), (&bias, "bias"), (&gy, "gy")] {
            check_f32(t, n);
        }
        let shape = x.meta.shape().to_vec();
        let (b, l, c, k) = (shape[0], shape[1], shape[2], w.meta.shape()[1]);
        let client = x.client.clone();
        let (g, gx) = (empty_f32_like(&x), empty_f32_like(&x));
        // Longer bands only where the grid's y limit asks for them.
        let mut band = CONV_BAND;
        while b * l.div_ceil(band) > 65_535 {
            band *= 2;
        }
        let bands = b * l.div_ceil(band);
        let partial = empty_f32(&x, vec![bands, c, k + 1]);
        conv_silu_backward_w_kernel::launch::<R>(
            &client,
            CubeCount::new_2d(c.div_ceil(CUBE as usize) as u32, bands as u32),
            CubeDim::new_1d(CUBE),
            x.into_tensor_arg(),
            w.clone().into_tensor_arg(),
            bias.into_tensor_arg(),
            gy.into_tensor_arg(),
            g.clone().into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            band as u32,
            k as u32,
        );
        conv_backward_x_kernel::launch::<R>(
            &client,
            cubes_for(&client, b * l * c),
            CubeDim::new_1d(CUBE),
            g.into_tensor_arg(),
            w.into_tensor_arg(),
            gx.clone().into_tensor_arg(),
        );
        let sums = Self::col_sum(wrap_d::<Self, R, 3>(partial).reshape([bands, c * (k + 1)])).reshape([c, k + 1]);
        (wrap_d(gx), sums.clone().narrow(1, 0, k), sums.narrow(1, k, 1).reshape([c]))
    }

    fn rms_norm(x: Tensor<Self, 2>, w: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        let (x, w) = (float_prim(x), into_contiguous(float_prim(w)));
        check_f32(&x, "x");
        check_f32(&w, "w");
        let rows = x.meta.shape()[0];
        let y = empty_f32_like(&x);
        rms_norm_kernel::launch::<R>(
            &x.client.clone(),
            CubeCount::new_1d(rows as u32),
            CubeDim::new_1d(CUBE),
            x.into_tensor_arg(),
            w.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            eps as f32,
        );
        wrap_d(y)
    }

    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 1>,
        eps: f64,
        gy: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>) {
        let (x, w, gy) = (float_prim(x), into_contiguous(float_prim(w)), float_prim(gy));
        for (t, n) in [(&x, "x"), (&w, "w"), (&gy, "gy")] {
            check_f32(t, n);
        }
        let rows = x.meta.shape()[0];
        let (gx, gwrows) = (empty_f32_like(&x), empty_f32_like(&x));
        rms_norm_backward_kernel::launch::<R>(
            &x.client.clone(),
            CubeCount::new_1d(rows as u32),
            CubeDim::new_1d(CUBE),
            x.into_tensor_arg(),
            w.into_tensor_arg(),
            gy.into_tensor_arg(),
            gx.clone().into_tensor_arg(),
            gwrows.clone().into_tensor_arg(),
            eps as f32,
        );
        (wrap_d(gx), Self::col_sum(wrap_d(gwrows)))
    }

    fn gated_rms_norm(
        y: Tensor<Self, 3>,
        z: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        groups: usize,
        eps: f64,
    ) -> Tensor<Self, 3> {
        let (y, z, w) = (float_prim(y), float_prim(z), into_contiguous(float_prim(w)));
        for (t, n) in [(&y, "y"), (&z, "z"), (&w, "w")] {
            check_f32(t, n);
        }
        let shape = y.meta.shape().to_vec();
        let out = empty_f32_like(&y);
        gated_rms_norm_kernel::launch::<R>(
            &y.client.clone(),
            CubeCount::new_2d((shape[0] * shape[1]) as u32, groups as u32),
            CubeDim::new_1d(CUBE),
            y.into_tensor_arg(),
            z.into_tensor_arg(),
            w.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            groups as u32,
            eps as f32,
        );
        wrap_d(out)
    }

    fn gated_rms_norm_backward(
        y: Tensor<Self, 3>,
        z: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        groups: usize,
        eps: f64,
        gout: Tensor<Self, 3>,
    ) -> (Tensor<Self, 3>, Tensor<Self, 3>, Tensor<Self, 1>) {
        let (y, z, w, go) = (float_prim(y), float_prim(z), into_contiguous(float_prim(w)), float_prim(gout));
        for (t, n) in [(&y, "y"), (&z, "z"), (&w, "w"), (&go, "gout")] {
            check_f32(t, n);
        }
        let shape = y.meta.shape().to_vec();
        let (rows, di) = (shape[0] * shape[1], shape[2]);
        let (gy, gz) = (empty_f32_like(&y), empty_f32_like(&y));
        let gwrows = empty_f32(&y, vec![rows, di]);
        gated_rms_norm_backward_kernel::launch::<R>(
            &y.client.clone(),
            CubeCount::new_2d(rows as u32, groups as u32),
            CubeDim::new_1d(CUBE),
            y.into_tensor_arg(),
            z.into_tensor_arg(),
            w.into_tensor_arg(),
            go.into_tensor_arg(),
            gy.clone().into_tensor_arg(),
            gz.clone().into_tensor_arg(),
            gwrows.clone().into_tensor_arg(),
            groups as u32,
            eps as f32,
        );
        (wrap_d(gy), wrap_d(gz), Self::col_sum(wrap_d(gwrows)))
    }

    fn fbi_weight(w: Tensor<Self, 2>, alpha: Tensor<Self, 2>, beta: Tensor<Self, 2>, dtype: DType) -> Tensor<Self, 2> {
        let (w, a, b) = (float_prim(w), float_prim(alpha), float_prim(beta));
        for (t, n) in [(&w, "w"), (&a, "alpha"), (&b, "beta")] {
            check_f32(t, n);
        }
        let out = empty_device_dtype(w.client.clone(), w.device.clone(), w.meta.shape().clone(), dtype);
        let n = w.meta.shape().num_elements();
        let client = w.client.clone();
        fbi_weight_kernel::launch::<R>(
            &client,
            cubes_for(&client, n),
            CubeDim::new_1d(CUBE),
            w.into_tensor_arg(),
            a.into_tensor_arg(),
            b.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            dtype.into(),
        );
        wrap_d(out)
    }

    fn fbi_weight_backward(
        w: Tensor<Self, 2>,
        alpha: Tensor<Self, 2>,
        g: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
        let like = alpha.dims();
        // The gradient arrives in the product's dtype; in f32 it is the β gradient's summand
        // (a weight-sized cast, small next to the product that made it).
        let g = if g.dtype() == DType::F32 { g } else { g.cast(DType::F32) };
        let (w, a) = (float_prim(w), float_prim(alpha));
        let gp = float_prim(g.clone());
        check_f32(&w, "w");
        check_f32(&a, "alpha");
        let shape = w.meta.shape().to_vec();
        let n = shape[0] * shape[1];
        let (gw, gs) = (empty_f32(&w, shape.clone()), empty_f32(&w, shape));
        let client = w.client.clone();
        fbi_weight_backward_kernel::launch::<R>(
            &client,
            cubes_for(&client, n),
            CubeDim::new_1d(CUBE),
            w.into_tensor_arg(),
            a.into_tensor_arg(),
            gp.into_tensor_arg(),
            gw.clone().into_tensor_arg(),
            gs.clone().into_tensor_arg(),
        );
        let sum_to = |t: Tensor<Self, 2>| {
            let t = if like[0] == 1 { Self::col_sum(t).unsqueeze_dim(0) } else { t };
            if like[1] == 1 {
                t.sum_dim(1)
            } else {
                t
            }
        };
        (wrap_d(gw), sum_to(wrap_d(gs)), sum_to(g))
    }

    /// The scan's kernels (`ssd_cube.rs`), products in f32 whatever `dtype` asks; problems they
    /// do not take (non-f32 inputs, chunks over 1024, grids over the backends' limits) run op by op.
    #[allow(clippy::too_many_arguments)]
    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        dtype: Option<DType>,
    ) -> Option<Tensor<Self, 4>> {
        super::attention_cube::causal_attention(q, k, v, dtype)
    }

    fn ssd_tensor_cores_available(device: &Self::Device) -> bool {
        super::ssd_cube::has_tf32_tensor_cores(&R::client(device))
    }

    fn ssd_scan(
        x: Tensor<Self, 4>,
        dt: Tensor<Self, 3>,
        a: Tensor<Self, 1>,
        bm: Tensor<Self, 4>,
        cm: Tensor<Self, 4>,
        chunk: usize,
        dtype: Option<DType>,
    ) -> Tensor<Self, 4> {
        if !super::ssd_cube::supported(&x, &dt, &a, &bm, &cm, chunk) {
            return crate::ssd::ssd_chunked(x, dt, a, bm, cm, chunk, None, dtype).0;
        }
        super::ssd_cube::scan::<Self, R>(x, dt, a, bm, cm, chunk, false).0
    }

    fn ssd_scan_keeping(
        x: Tensor<Self, 4>,
        dt: Tensor<Self, 3>,
        a: Tensor<Self, 1>,
        bm: Tensor<Self, 4>,
        cm: Tensor<Self, 4>,
        chunk: usize,
        dtype: Option<DType>,
    ) -> (Tensor<Self, 4>, Option<super::SsdKept<Self>>) {
        if !super::ssd_cube::supported(&x, &dt, &a, &bm, &cm, chunk) {
            return (crate::ssd::ssd_chunked(x, dt, a, bm, cm, chunk, None, dtype).0, None);
        }
        super::ssd_cube::scan::<Self, R>(x, dt, a, bm, cm, chunk, true)
    }

    fn ssd_scan_backward(
        x: Tensor<Self, 4>,
        dt: Tensor<Self, 3>,
        a: Tensor<Self, 1>,
        bm: Tensor<Self, 4>,
        cm: Tensor<Self, 4>,
        chunk: usize,
        dy: Tensor<Self, 4>,
        dtype: Option<DType>,
    ) -> (Tensor<Self, 4>, Tensor<Self, 3>, Tensor<Self, 1>, Tensor<Self, 4>, Tensor<Self, 4>) {
        if !super::ssd_cube::supported(&x, &dt, &a, &bm, &cm, chunk) || dy.dtype() != DType::F32 {
            return crate::ssd::backward::ssd_scan_backward(x, dt, a, bm, cm, chunk, dy, dtype);
        }
        super::ssd_cube::scan_backward::<Self, R>(x, dt, a, bm, cm, chunk, dy, None)
    }

    fn ssd_scan_backward_kept(
        x: Tensor<Self, 4>,
        dt: Tensor<Self, 3>,
        a: Tensor<Self, 1>,
        bm: Tensor<Self, 4>,
        cm: Tensor<Self, 4>,
        chunk: usize,
        dy: Tensor<Self, 4>,
        dtype: Option<DType>,
        kept: super::SsdKept<Self>,
    ) -> (Tensor<Self, 4>, Tensor<Self, 3>, Tensor<Self, 1>, Tensor<Self, 4>, Tensor<Self, 4>) {
        if !super::ssd_cube::supported(&x, &dt, &a, &bm, &cm, chunk) || dy.dtype() != DType::F32 {
            return crate::ssd::backward::ssd_scan_backward(x, dt, a, bm, cm, chunk, dy, dtype);
        }
        super::ssd_cube::scan_backward::<Self, R>(x, dt, a, bm, cm, chunk, dy, Some(kept))
    }

    fn ssd_decay_scores(acs: Tensor<Self, 4>, cb: Tensor<Self, 5>) -> Tensor<Self, 5> {
        let [b, c, h, t] = acs.dims();
        let g = cb.dims()[2];
        let (acs, cb) = (float_prim(acs), float_prim(cb));
        check_f32(&acs, "acs");
        check_f32(&cb, "cb");
        let out = empty_f32(&acs, vec![b, c, h, t, t]);
        let client = acs.client.clone();
        ssd_decay_scores_kernel::launch::<R>(
            &client,
            cubes_for(&client, b * c * h * t * t),
            CubeDim::new_1d(CUBE),
            acs.into_tensor_arg(),
            cb.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            (h / g) as u32,
        );
        wrap_d(out)
    }

    fn ssd_decay_scores_backward(
        acs: Tensor<Self, 4>,
        cb: Tensor<Self, 5>,
        gs: Tensor<Self, 5>,
    ) -> (Tensor<Self, 4>, Tensor<Self, 5>) {
        let [b, c, h, t] = acs.dims();
        let g = cb.dims()[2];
        // The dΛ kernel's shared arrays hold chunks up to ACS_MAX_CHUNK, one cube per
        // (b, c, h) along one grid axis (WGPU's limit: 65,535).
        if t > ACS_MAX_CHUNK || b * c * h > 65_535 {
            return super::reference::ssd_decay_scores_backward(acs, cb, gs);
        }
        let (acs, cb, gs) = (float_prim(acs), float_prim(cb), float_prim(gs));
        for (x, n) in [(&acs, "acs"), (&cb, "cb"), (&gs, "gs")] {
            check_f32(x, n);
        }
        let gcb = empty_f32(&acs, vec![b, c, g, t, t]);
        let gacs = empty_f32(&acs, vec![b, c, h, t]);
        let client = acs.client.clone();
        ssd_decay_scores_backward_cb_kernel::launch::<R>(
            &client,
            cubes_for(&client, b * c * g * t * t),
            CubeDim::new_1d(CUBE),
            acs.clone().into_tensor_arg(),
            gs.clone().into_tensor_arg(),
            gcb.clone().into_tensor_arg(),
            (h / g) as u32,
        );
        ssd_decay_scores_backward_acs_kernel::launch::<R>(
            &client,
            CubeCount::new_1d((b * c * h) as u32),
            CubeDim::new_1d(CUBE),
            acs.into_tensor_arg(),
            cb.into_tensor_arg(),
            gs.into_tensor_arg(),
            gacs.clone().into_tensor_arg(),
            (h / g) as u32,
        );
        (wrap_d(gacs), wrap_d(gcb))
    }
}
