#!/usr/bin/env bash
# The test suite: every crate's tests, the trainer's CubeCL kernels included. Those kernels run on
# the CPU through Burn's WGPU backend and Mesa's software Vulkan driver (lavapipe), which this
# script installs when it is missing (apt, with sudo when not root). Arguments go to the test
# binaries: `scripts/test.sh --ignored` runs the tests that need the SmolLM2 teacher.
#
# One feature set (`bimamba-train/wgpu`) for the whole workspace: building some crates with other
# features would compile most of the dependency tree a second time.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json > /dev/null 2>&1; then
  if ! command -v apt-get > /dev/null; then
    echo "error: the trainer's kernel tests need Mesa's lavapipe Vulkan driver (package mesa-vulkan-drivers); install it and run again" >&2
    exit 1
  fi
  SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers
fi
cargo test --workspace --locked --features bimamba-train/wgpu -- "$@"
