//! The fused CubeCL kernels against their op-by-op references, on the CPU: Burn's WGPU backend
//! over a software Vulkan driver (Mesa's lavapipe: `apt-get install mesa-vulkan-drivers`).
//! Built with `--features wgpu`; `.ci/run` installs the driver and runs it.
#![cfg(feature = "wgpu")]

use burn::backend::wgpu::{Wgpu, WgpuDevice};

#[test]
fn fused_kernels_equal_their_references_on_wgpu() {
    let checks = bimamba_train::fused::check::run::<Wgpu>(&WgpuDevice::default(), false);
    for c in &checks {
        println!("{:<5} {:<32} {:?} rel_l2 {:.2e} rel_max {:.2e}", if c.pass { "ok" } else { "FAIL" }, c.name, c.shape, c.rel_l2, c.rel_max);
    }
    let failed: Vec<_> = checks.iter().filter(|c| !c.pass).map(|c| c.name.clone()).collect();
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert!(checks.len() >= 20);
}
