//! Wall-clock time per section of the forward pass, summed over layers (`bimamba bench
//! --profile`). Off unless [`enable`]d: a disabled [`Timer`] costs one relaxed atomic load per
//! section. Timers are global, so profile one forward pass at a time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The sections, in the order the data flows through a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// Each layer's pre-norm and residual add.
    Norms,
    InProj,
    /// Causal depthwise conv and its SiLU.
    Conv,
    /// dt = softplus(dt + dt_bias), clamped.
    Dt,
    /// The state update and readout, D skip included (in a batched step of at least as many
    /// sequences as threads, each sequence's conv and gate too: they run in one task).
    Scan,
    /// y ⊙ SiLU(z) and the grouped RMSNorm.
    Gate,
    OutProj,
    LmHead,
}

/// Every section with its report name.
pub const SECTIONS: [(Section, &str); 8] = [
    (Section::Norms, "norms"),
    (Section::InProj, "in_proj"),
    (Section::Conv, "conv"),
    (Section::Dt, "dt"),
    (Section::Scan, "scan"),
    (Section::Gate, "gate"),
    (Section::OutProj, "out_proj"),
    (Section::LmHead, "lm_head"),
];

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

/// Turns the timers on or off (off by default).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Times consecutive sections: each [`Timer::lap`] charges the time since the previous lap (or
/// since [`Timer::start`]) to one section.
pub struct Timer(Option<Instant>);

impl Timer {
    pub fn start() -> Timer {
        Timer(ENABLED.load(Ordering::Relaxed).then(Instant::now))
    }

    pub fn lap(&mut self, s: Section) {
        if let Some(t0) = self.0 {
            let now = Instant::now();
            NANOS[s as usize].fetch_add((now - t0).as_nanos() as u64, Ordering::Relaxed);
            self.0 = Some(now);
        }
    }
}

/// Seconds charged to each section since the last call, which resets them.
pub fn take() -> Vec<(&'static str, f64)> {
    SECTIONS.iter().map(|&(s, name)| (name, NANOS[s as usize].swap(0, Ordering::Relaxed) as f64 / 1e9)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_are_charged_only_when_enabled() {
        take();
        let mut t = Timer::start();
        t.lap(Section::Scan);
        assert!(take().iter().all(|&(_, s)| s == 0.0), "disabled timers record nothing");
        enable(true);
        let mut t = Timer::start();
        std::thread::sleep(std::time::Duration::from_millis(2));
        t.lap(Section::Scan);
        t.lap(Section::Gate);
        enable(false);
        let got = take();
        let scan = got.iter().find(|(n, _)| *n == "scan").map(|&(_, s)| s).unwrap_or(0.0);
        assert!(scan >= 0.002, "scan got {scan} s");
        assert!(take().iter().all(|&(_, s)| s == 0.0), "take resets");
    }
}
