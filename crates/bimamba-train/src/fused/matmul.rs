//! Matrix products through CubeCL's matmul library (cubek) with a chosen kernel family.
//!
//! Burn's CUDA backend without its autotune feature runs every product with one fixed family
//! (`SimpleCyclicCmma`, about 93 TFLOP/s on an 8192³ bf16 product on the H100, where cuBLAS
//! reaches about 800). cubek has some thirty families (plain, double-buffered, warp-specialized,
//! TMA-fed; `cmma` through the WMMA API or `mma` through PTX `mma.sync`). Autotuning all of them
//! per shape compiles hundreds of kernels before the first step, so the trainer instead takes one
//! family by name (`--matmul-kernel`), chosen from `bimamba-train matmul-kernels`, which times
//! every family at the model's product shapes and checks each result against Burn's product.
//! A family that cannot run a problem (a TMA family on a device without TMA, say) falls back to
//! Burn's product for that call.

use burn::tensor::DType;
use burn_cubecl::kernel::matmul::init_matmul_output;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::launch::Strategy;
use cubek::matmul::routines::double_buffering::DoubleBufferingArgs;
use cubek::matmul::routines::ordered_double_buffering::OrderedSelectionArgs;
use cubek::matmul::routines::simple::SimpleArgs;
use cubek::matmul::routines::simple_unit::SimpleUnitSelectionArgs;
use cubek::matmul::routines::BlueprintStrategy;
use cubek::std::InputBinding;

/// Every family `--matmul-kernel` accepts, by name (the `auto` entry is Burn's default).
pub fn families() -> Vec<(&'static str, Strategy)> {
    use BlueprintStrategy::Inferred;
    let simple = |multi_rows| SimpleArgs { multi_rows, ..Default::default() };
    let double = |specialized| DoubleBufferingArgs { specialized, ..Default::default() };
    let ordered = |rows| OrderedSelectionArgs {
        partition_k: Some(2),
        row_count: Some(rows),
        rows_per_plane: Some(2),
        ..Default::default()
    };
    vec![
        ("auto", Strategy::Auto),
        ("simple_cyclic_cmma", Strategy::SimpleCyclicCmma(Inferred(simple(false)))),
        ("simple_cyclic_mma", Strategy::SimpleCyclicMma(Inferred(simple(false)))),
        ("simple_cyclic_cmma_rows", Strategy::SimpleCyclicCmma(Inferred(simple(true)))),
        ("simple_cyclic_mma_rows", Strategy::SimpleCyclicMma(Inferred(simple(true)))),
        ("ordered_double_cmma_4", Strategy::OrderedDoubleCmma(Inferred(ordered(4)))),
        ("ordered_double_mma_4", Strategy::OrderedDoubleMma(Inferred(ordered(4)))),
        ("ordered_double_cmma_8", Strategy::OrderedDoubleCmma(Inferred(ordered(8)))),
        ("ordered_double_mma_8", Strategy::OrderedDoubleMma(Inferred(ordered(8)))),
        ("double_cyclic_cmma", Strategy::DoubleCyclicCmma(Inferred(double(false)))),
        ("double_cyclic_mma", Strategy::DoubleCyclicMma(Inferred(double(false)))),
        ("double_cyclic_cmma_spec", Strategy::DoubleCyclicCmma(Inferred(double(true)))),
        ("double_cyclic_mma_spec", Strategy::DoubleCyclicMma(Inferred(double(true)))),
        ("specialized_cyclic_cmma", Strategy::SpecializedCyclicCmma(Inferred(().into()))),
        ("specialized_cyclic_mma", Strategy::SpecializedCyclicMma(Inferred(().into()))),
        ("simple_tma_cmma", Strategy::SimpleTmaCmma(Inferred(simple(false)))),
        ("simple_tma_mma", Strategy::SimpleTmaMma(Inferred(simple(false)))),
        ("simple_tma_cmma_rows", Strategy::SimpleTmaCmma(Inferred(simple(true)))),
        ("simple_tma_mma_rows", Strategy::SimpleTmaMma(Inferred(simple(true)))),
        ("double_tma_cmma", Strategy::DoubleTmaCmma(Inferred(double(false)))),
        ("double_tma_mma", Strategy::DoubleTmaMma(Inferred(double(false)))),
        ("specialized_tma_cmma", Strategy::SpecializedTmaCmma(Inferred(().into()))),
        ("specialized_tma_mma", Strategy::SpecializedTmaMma(Inferred(().into()))),
        ("simple_unit", Strategy::SimpleUnit(Inferred(SimpleUnitSelectionArgs::default()))),
    ]
}

/// The family called `name`.
pub fn family(name: &str) -> Option<Strategy> {
    families().into_iter().find(|(n, _)| *n == name).map(|(_, s)| s)
}

/// lhs · rhs (same leading batch dimensions, any strides cubek accepts) into a new tensor of
/// `out_dtype`, with family `strategy`. An error means the family cannot run this problem; nothing
/// was launched.
pub fn launch<R: CubeRuntime>(
    strategy: &Strategy,
    lhs: CubeTensor<R>,
    rhs: CubeTensor<R>,
    out_dtype: DType,
) -> Result<CubeTensor<R>, String> {
    let out = init_matmul_output(&lhs, &rhs, out_dtype);
    let client = out.client.clone();
    let (ld, rd) = (lhs.dtype, rhs.dtype);
    let mut dtypes =
        MatmulElems::from_globals(&MatmulGlobalElems { lhs: ld.into(), rhs: rd.into(), out: out_dtype.into() });
    cubek::matmul::launch::launch_ref(
        strategy,
        &client,
        InputBinding::new(lhs.binding(), ld.into()),
        InputBinding::new(rhs.binding(), rd.into()),
        out.clone().binding(),
        &mut dtypes,
    )
    .map_err(|e| format!("{e:?}"))?;
    Ok(out)
}
