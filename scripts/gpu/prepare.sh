# Sourced by the GPU scripts from the repository root: enters runs/gpu, unpacks the carried binary
# (bin/bimamba-train.xz) and CubeCL's compiled-kernel caches (bin/cache.tar.xz) once per machine,
# writes cubecl.toml with local caches, and defines `el` (a log line with the seconds since this
# point) and B (the binary).
cd runs/gpu || exit 1
[ -x bimamba-train ] || { xz -dc bin/bimamba-train.xz > bimamba-train && chmod +x bimamba-train; }
[ -f bin/cache.tar.xz ] && [ ! -f .cache-unpacked ] && tar xJf bin/cache.tar.xz && touch .cache-unpacked
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\nlevel = "minimal"\n' > cubecl.toml
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
B=./bimamba-train
