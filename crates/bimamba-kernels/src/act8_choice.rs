//! Which AVX-512 kernel runs the int8-activation product below the prefill GEMM's token count:
//! the VNNI multiply-add kernel (`x86::avx512_vnni`) or the table-lookup one
//! (`x86::avx512_tmac`, [`crate::tmac`]). Both return the same bits; the choice is speed only.
//! [`Act8Decode::Auto`] (the default) takes the faster per shape as measured in KERNELS.md ("The
//! table-lookup int8 kernel": the VNNI kernel at every Bi-Mamba shape so far);
//! `BIMAMBA_ACT8_DECODE=auto|vnni|tmac` or [`set_act8_decode`] force one, for benchmarks.
//! Like the ISA, chosen once at first use unless set; [`crate::act8_kernel_for`] names the kernel
//! a call runs.

use std::sync::atomic::{AtomicU8, Ordering};

/// The int8-activation decode kernel on AVX-512 VNNI + VBMI CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act8Decode {
    /// The faster of the two for the shape.
    Auto,
    /// Always the VNNI multiply-add kernel.
    Vnni,
    /// Always the table-lookup kernel.
    Tmac,
}

const ALL: [Act8Decode; 3] = [Act8Decode::Auto, Act8Decode::Vnni, Act8Decode::Tmac];

impl Act8Decode {
    /// The lower-case name used by `from_name` and `BIMAMBA_ACT8_DECODE`.
    pub fn name(self) -> &'static str {
        match self {
            Act8Decode::Auto => "auto",
            Act8Decode::Vnni => "vnni",
            Act8Decode::Tmac => "tmac",
        }
    }

    /// Parses `auto | vnni | tmac` (case-insensitive).
    pub fn from_name(s: &str) -> Result<Act8Decode, String> {
        let lower = s.trim().to_ascii_lowercase();
        ALL.into_iter()
            .find(|c| c.name() == lower)
            .ok_or_else(|| format!("unknown int8 decode kernel '{s}' (expected one of: auto, vnni, tmac)"))
    }

    fn to_code(self) -> u8 {
        match self {
            Act8Decode::Auto => 1,
            Act8Decode::Vnni => 2,
            Act8Decode::Tmac => 3,
        }
    }

    fn from_code(c: u8) -> Option<Act8Decode> {
        ALL.into_iter().find(|d| d.to_code() == c)
    }
}

/// Name of the environment variable that forces the choice.
pub const ACT8_DECODE_ENV: &str = "BIMAMBA_ACT8_DECODE";

/// 0 = not chosen yet; otherwise `Act8Decode::to_code`.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// Reads `BIMAMBA_ACT8_DECODE`: `Ok(None)` when unset or empty, `Err` for an unknown name.
pub fn act8_decode_from_env() -> Result<Option<Act8Decode>, String> {
    match std::env::var(ACT8_DECODE_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            Act8Decode::from_name(&v).map(Some).map_err(|e| format!("{ACT8_DECODE_ENV}: {e}"))
        }
        _ => Ok(None),
    }
}

/// The current choice: [`set_act8_decode`] if it was called, else `BIMAMBA_ACT8_DECODE` if set
/// and valid, else [`Act8Decode::Auto`] (an invalid value is reported once on stderr).
pub fn act8_decode() -> Act8Decode {
    if let Some(c) = Act8Decode::from_code(CHOSEN.load(Ordering::Relaxed)) {
        return c;
    }
    let c = match act8_decode_from_env() {
        Ok(Some(c)) => c,
        Ok(None) => Act8Decode::Auto,
        Err(e) => {
            eprintln!("bimamba-kernels: ignoring {e}; using auto");
            Act8Decode::Auto
        }
    };
    match CHOSEN.compare_exchange(0, c.to_code(), Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => c,
        Err(code) => Act8Decode::from_code(code).unwrap_or(c),
    }
}

/// Forces the choice (benchmarks; a CPU without the table kernel ignores `Tmac`).
pub fn set_act8_decode(c: Act8Decode) {
    CHOSEN.store(c.to_code(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in ALL {
            assert_eq!(Act8Decode::from_name(c.name()), Ok(c));
            assert_eq!(Act8Decode::from_code(c.to_code()), Some(c));
        }
        assert_eq!(Act8Decode::from_name(" TMAC "), Ok(Act8Decode::Tmac));
        assert!(Act8Decode::from_name("vpshufb").is_err());
    }
}
