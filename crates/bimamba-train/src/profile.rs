//! Forward-pass section timers for `bench --profile`: off unless enabled; when on, each mark
//! waits for the device (so the time of a section is its own GPU work plus its launches) and adds
//! the time since the previous mark to the section's total.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use burn::tensor::backend::Backend;

static ENABLED: AtomicBool = AtomicBool::new(false);
static STATE: Mutex<Option<(Instant, BTreeMap<&'static str, f64>)>> = Mutex::new(None);

/// Turns the timers on (and clears them) or off.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
    *STATE.lock().unwrap_or_else(|e| e.into_inner()) = on.then(|| (Instant::now(), BTreeMap::new()));
}

/// Whether the timers are on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Starts timing from now (after the device has finished its queued work).
pub fn restart<B: Backend>(device: &B::Device) {
    if !enabled() {
        return;
    }
    let _ = B::sync(device);
    if let Some((last, _)) = STATE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        *last = Instant::now();
    }
}

/// Ends section `name`: waits for the device and adds the seconds since the last mark.
pub fn mark<B: Backend>(name: &'static str, device: &B::Device) {
    if !enabled() {
        return;
    }
    let _ = B::sync(device);
    if let Some((last, totals)) = STATE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        let now = Instant::now();
        *totals.entry(name).or_insert(0.0) += (now - *last).as_secs_f64();
        *last = now;
    }
}

/// Seconds per section so far.
pub fn totals() -> BTreeMap<&'static str, f64> {
    STATE.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(_, t)| t.clone()).unwrap_or_default()
}
