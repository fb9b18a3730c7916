//! Stop sequences on streamed text: generated text is released only once it cannot be the start
//! of a stop sequence, and cut where a stop sequence begins.

/// Text that has arrived and what of it may be released.
#[derive(Debug, Default)]
pub struct StopScanner {
    stops: Vec<String>,
    /// Text received but not yet released: it may be the start of a stop sequence.
    held: String,
}

/// What [`StopScanner::push`] releases.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// Text that can be sent (possibly empty).
    Text(String),
    /// A stop sequence was completed: the text before it, then generation ends.
    Stopped(String),
}

impl StopScanner {
    pub fn new(stops: Vec<String>) -> StopScanner {
        StopScanner { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    /// Adds newly generated text.
    pub fn push(&mut self, piece: &str) -> Scan {
        self.held.push_str(piece);
        // The earliest stop sequence that has appeared whole ends the text there.
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Scan::Stopped(text);
        }
        // Hold back the longest tail that could still grow into a stop sequence.
        let keep = self.stops.iter().map(|s| partial_overlap(&self.held, s)).max().unwrap_or(0);
        let cut = self.held.len() - keep;
        let released = self.held[..cut].to_string();
        self.held.drain(..cut);
        Scan::Text(released)
    }

    /// At the end of generation: whatever was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// The length in bytes of the longest suffix of `text` that is a proper prefix of `stop`, cut at
/// character boundaries.
fn partial_overlap(text: &str, stop: &str) -> usize {
    let max = (stop.len() - 1).min(text.len());
    (1..=max)
        .rev()
        .find(|&k| text.is_char_boundary(text.len() - k) && stop.is_char_boundary(k) && text.ends_with(&stop[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopScanner::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            match s.push(p) {
                Scan::Text(t) => out.push_str(&t),
                Scan::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&s.finish());
        (out, false)
    }

    #[test]
    fn cuts_at_a_stop_split_over_pieces() {
        assert_eq!(run(&["\nUser:"], &["Hello", " there.\n", "Us", "er: more"]), ("Hello there.".into(), true));
        assert_eq!(run(&["END", "."], &["a b. c END"]), ("a b".into(), true));
        assert_eq!(run(&["xyz"], &["abc", "xy"]), ("abcxy".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn holds_back_only_a_possible_stop_start() {
        let mut s = StopScanner::new(vec!["\nUser:".into()]);
        assert_eq!(s.push("fine.\nU"), Scan::Text("fine.".into()));
        assert_eq!(s.push("nless"), Scan::Text("\nUnless".into()));
        let mut s = StopScanner::new(vec!["é!".into()]);
        assert_eq!(s.push("café"), Scan::Text("caf".into()));
        assert_eq!(s.push("?"), Scan::Text("é?".into()));
    }
}
