//! Instruction-set selection: detected once at first use, overridable by `BIMAMBA_ISA` or by
//! [`set_isa`] (the CLI's `--isa` flag). No `target-cpu=native` is needed: every SIMD kernel is
//! compiled with `#[target_feature]` and only called after runtime detection says it is safe.

use std::sync::atomic::{AtomicU8, Ordering};

/// A kernel family. Every family computes the same functions as [`crate::scalar`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust; always available.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F + BW + VL.
    Avx512,
    /// AArch64 Advanced SIMD.
    Neon,
}

const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

impl Isa {
    /// The best family this CPU supports (AVX-512 > AVX2 > scalar on x86-64; NEON on AArch64).
    pub fn detect() -> Isa {
        [Isa::Avx512, Isa::Avx2, Isa::Neon].into_iter().find(|i| i.is_supported()).unwrap_or(Isa::Scalar)
    }

    /// Parses `scalar | avx2 | avx512 | neon` (case-insensitive). Does not check support.
    pub fn from_name(s: &str) -> Result<Isa, String> {
        let lower = s.trim().to_ascii_lowercase();
        ALL.into_iter()
            .find(|i| i.name() == lower)
            .ok_or_else(|| format!("unknown ISA '{s}' (expected one of: scalar, avx2, avx512, neon)"))
    }

    /// The lower-case name used by `from_name`, `BIMAMBA_ISA` and benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Whether this CPU can run the family's kernels.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    fn to_code(self) -> u8 {
        match self {
            Isa::Scalar => 1,
            Isa::Avx2 => 2,
            Isa::Avx512 => 3,
            Isa::Neon => 4,
        }
    }

    fn from_code(c: u8) -> Option<Isa> {
        ALL.into_iter().find(|i| i.to_code() == c)
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// 0 = not chosen yet; otherwise `Isa::to_code`.
static SELECTED: AtomicU8 = AtomicU8::new(0);

/// Name of the environment variable that overrides detection.
pub const ISA_ENV: &str = "BIMAMBA_ISA";

/// Reads `BIMAMBA_ISA`: `Ok(None)` when unset or empty, `Err` when it names an unknown ISA or one
/// this CPU cannot run. The CLI can call this to turn a bad value into a proper error.
pub fn isa_from_env() -> Result<Option<Isa>, String> {
    match std::env::var(ISA_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            let isa = Isa::from_name(&v)?;
            if isa.is_supported() {
                Ok(Some(isa))
            } else {
                Err(format!("{ISA_ENV}={v}: {} is not supported on this CPU", isa.name()))
            }
        }
        _ => Ok(None),
    }
}

/// The ISA every dispatching kernel uses. Chosen once: `set_isa` if it was called, else
/// `BIMAMBA_ISA` if set and valid, else [`Isa::detect`]. An invalid `BIMAMBA_ISA` is reported
/// once on stderr and ignored (call [`isa_from_env`] to treat it as an error instead).
pub fn selected_isa() -> Isa {
    if let Some(isa) = Isa::from_code(SELECTED.load(Ordering::Relaxed)) {
        return isa;
    }
    let isa = match isa_from_env() {
        Ok(Some(isa)) => isa,
        Ok(None) => Isa::detect(),
        Err(e) => {
            let d = Isa::detect();
            eprintln!("bimamba-kernels: ignoring {e}; using {}", d.name());
            d
        }
    };
    // If another thread raced us (or set_isa ran meanwhile), keep its choice.
    match SELECTED.compare_exchange(0, isa.to_code(), Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => isa,
        Err(code) => Isa::from_code(code).unwrap_or(isa),
    }
}

/// Forces the ISA (for a `--isa` flag or benchmarks). Errors if this CPU cannot run it.
pub fn set_isa(isa: Isa) -> Result<(), String> {
    if !isa.is_supported() {
        return Err(format!("ISA {} is not supported on this CPU (detected: {})", isa.name(), Isa::detect().name()));
    }
    SELECTED.store(isa.to_code(), Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for isa in ALL {
            assert_eq!(Isa::from_name(isa.name()), Ok(isa));
            assert_eq!(Isa::from_code(isa.to_code()), Some(isa));
        }
        assert_eq!(Isa::from_name(" AVX512 "), Ok(Isa::Avx512));
        assert!(Isa::from_name("sse9").is_err());
    }

    #[test]
    fn detected_isa_is_supported() {
        assert!(Isa::detect().is_supported());
        assert!(Isa::Scalar.is_supported());
        #[cfg(target_arch = "x86_64")]
        assert!(!Isa::Neon.is_supported());
        #[cfg(target_arch = "aarch64")]
        assert!(!Isa::Avx2.is_supported());
    }

    #[test]
    fn unsupported_isa_is_refused() {
        #[cfg(target_arch = "x86_64")]
        assert!(set_isa(Isa::Neon).is_err());
        #[cfg(target_arch = "aarch64")]
        assert!(set_isa(Isa::Avx512).is_err());
    }
}
