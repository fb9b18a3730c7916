//! Cross-entropy kernels: one cube per row, online softmax in f32 over logits of any float dtype.

use cubecl::prelude::*;

use super::cube_sum;

/// Tree reduction of per-thread online-softmax pairs (max m, Σ exp(x − m)) over a cube of 256
/// threads; every thread gets the cube's log-sum-exp.
#[cube]
fn cube_lse(m: f32, s: f32) -> f32 {
    let mut sm = SharedMemory::<f32>::new(256usize);
    let mut ss = SharedMemory::<f32>::new(256usize);
    let unit = UNIT_POS_X as usize;
    sm[unit] = m;
    ss[unit] = s;
    sync_cube();
    let mut half = 128usize;
    while half > 0 {
        if unit < half {
            let m1 = sm[unit];
            let m2 = sm[unit + half];
            let mm = f32::max(m1, m2);
            ss[unit] = ss[unit] * f32::exp(m1 - mm) + ss[unit + half] * f32::exp(m2 - mm);
            sm[unit] = mm;
        }
        sync_cube();
        half /= 2;
    }
    let out = sm[0] + f32::ln(ss[0]);
    sync_cube();
    out
}

/// Log-sum-exp of `scale · x[base + i·step]` over i < n, computed by a cube of 256 threads
/// (online softmax per thread over a stride-256 share, then a tree).
#[cube]
fn row_lse<E: Float>(x: &Tensor<E>, base: usize, step: usize, n: usize, scale: f32) -> f32 {
    let mut m = f32::new(-3.0e38);
    let mut s = 0.0f32;
    let mut i = UNIT_POS_X as usize;
    while i < n {
        let v = f32::cast_from(x[base + i * step]) * scale;
        if v > m {
            s = s * f32::exp(m - v) + 1.0;
            m = v;
        } else {
            s += f32::exp(v - m);
        }
        i += 256;
    }
    cube_lse(m, s)
}

/// Next-token cross-entropy, one cube of 256 threads per row: loss[r] = lse(z_r) − z_r[t_r] and
/// lse[r] (for the backward).
#[cube(launch)]
pub fn ce_rows_kernel<E: Float>(
    logits: &Tensor<E>,
    targets: &Tensor<i32>,
    loss: &mut Tensor<f32>,
    lse: &mut Tensor<f32>,
    #[define(E)] _dtype: StorageType,
) {
    let row = CUBE_POS_X as usize;
    let base = row * logits.stride(0);
    let step = logits.stride(1);
    let l = row_lse::<E>(logits, base, step, logits.shape(1), 1.0f32);
    if UNIT_POS_X == 0 {
        let t = u32::cast_from(targets[row]) as usize;
        loss[row] = l - f32::cast_from(logits[base + t * step]);
        lse[row] = l;
    }
}

/// Gradient of the cross-entropy: g[r, v] = grad[r] · (exp(z − lse[r]) − [v = t_r]). Rows on
/// the x axis of the grid, 256-column blocks on y.
#[cube(launch)]
pub fn ce_rows_backward_kernel<E: Float>(
    logits: &Tensor<E>,
    targets: &Tensor<i32>,
    lse: &Tensor<f32>,
    grad: &Tensor<f32>,
    out: &mut Tensor<E>,
    #[define(E)] _dtype: StorageType,
) {
    let row = CUBE_POS_X as usize;
    let col = (CUBE_POS_Y * 256 + UNIT_POS_X) as usize;
    if col >= logits.shape(1) {
        terminate!();
    }
    let z = f32::cast_from(logits[row * logits.stride(0) + col * logits.stride(1)]);
    let mut g = f32::exp(z - lse[row]);
    if col == u32::cast_from(targets[row]) as usize {
        g -= 1.0;
    }
    out[row * out.stride(0) + col] = E::cast_from(g * grad[row]);
}

/// Soft-target cross-entropy, one cube per row: loss[r] = T² · (lse(z_r/T) − Σ_v p_v z_v / T) with
/// p = softmax(t_r/T) over the teacher's columns; also the two log-sum-exps (for the backward).
#[cube(launch)]
pub fn soft_ce_rows_kernel<E: Float, F: Float>(
    student: &Tensor<E>,
    teacher: &Tensor<F>,
    loss: &mut Tensor<f32>,
    lse_s: &mut Tensor<f32>,
    lse_t: &mut Tensor<f32>,
    inv_t: f32,
    #[define(E, F)] _dtypes: [StorageType; 2],
) {
    let row = CUBE_POS_X as usize;
    let vt = teacher.shape(1);
    let bs = row * student.stride(0);
    let ss = student.stride(1);
    let bt = row * teacher.stride(0);
    let st = teacher.stride(1);
    let ls = row_lse::<E>(student, bs, ss, student.shape(1), inv_t);
    let lt = row_lse::<F>(teacher, bt, st, vt, inv_t);
    let mut acc = 0.0f32;
    let mut i = UNIT_POS_X as usize;
    while i < vt {
        let p = f32::exp(f32::cast_from(teacher[bt + i * st]) * inv_t - lt);
        acc += p * f32::cast_from(student[bs + i * ss]) * inv_t;
        i += 256;
    }
    let cross = cube_sum(acc);
    if UNIT_POS_X == 0 {
        loss[row] = (ls - cross) / (inv_t * inv_t);
        lse_s[row] = ls;
        lse_t[row] = lt;
    }
}

/// Gradient of the soft-target cross-entropy: g[r, v] = grad[r] · T · (q_v − p_v), p_v = 0 beyond
/// the teacher's columns.
#[cube(launch)]
pub fn soft_ce_rows_backward_kernel<E: Float, F: Float>(
    student: &Tensor<E>,
    teacher: &Tensor<F>,
    lse_s: &Tensor<f32>,
    lse_t: &Tensor<f32>,
    grad: &Tensor<f32>,
    out: &mut Tensor<E>,
    inv_t: f32,
    #[define(E, F)] _dtypes: [StorageType; 2],
) {
    let row = CUBE_POS_X as usize;
    let col = (CUBE_POS_Y * 256 + UNIT_POS_X) as usize;
    if col >= student.shape(1) {
        terminate!();
    }
    let zs = f32::cast_from(student[row * student.stride(0) + col * student.stride(1)]);
    let q = f32::exp(zs * inv_t - lse_s[row]);
    let mut p = 0.0f32;
    if col < teacher.shape(1) {
        let zt = f32::cast_from(teacher[row * teacher.stride(0) + col * teacher.stride(1)]);
        p = f32::exp(zt * inv_t - lse_t[row]);
    }
    out[row * out.stride(0) + col] = E::cast_from((q - p) * grad[row] / inv_t);
}
