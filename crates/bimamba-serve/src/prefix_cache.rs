//! The prefix-state cache: decoding states kept after requests, keyed by the tokens they have
//! consumed, least recently used first out when the byte budget is reached.
//!
//! A Mamba state has the same size whatever the history, so a conversation resumes from the
//! state its previous turn left: a prompt that extends a cached key only needs its new tokens
//! fed. Each entry also keeps the logits of its last token, so a prompt equal to a key needs no
//! model call before its first sampled token.

/// One cached state.
struct Entry<S> {
    /// Every token the state has consumed, in order.
    tokens: Vec<u32>,
    state: S,
    /// [vocab_size]: the logits after the last of `tokens`.
    logits: Vec<f32>,
    bytes: usize,
    last_used: u64,
}

/// What a lookup found: a copy of the state and logits after the first `tokens` prompt tokens.
pub struct Hit<S> {
    pub tokens: usize,
    pub state: S,
    pub logits: Vec<f32>,
}

pub struct PrefixCache<S> {
    entries: Vec<Entry<S>>,
    budget: usize,
    used: usize,
    clock: u64,
}

impl<S: Clone> PrefixCache<S> {
    /// A cache holding at most `budget` bytes of states, logits and keys.
    pub fn new(budget: usize) -> PrefixCache<S> {
        PrefixCache { entries: Vec::new(), budget, used: 0, clock: 0 }
    }

    pub fn bytes(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry with the longest key that is a prefix of `prompt` (a copy: the entry stays for
    /// other requests), marked as recently used.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<Hit<S>> {
        self.clock += 1;
        let best = self
            .entries
            .iter_mut()
            .filter(|e| !e.tokens.is_empty() && prompt.starts_with(&e.tokens))
            .max_by_key(|e| e.tokens.len())?;
        best.last_used = self.clock;
        Some(Hit { tokens: best.tokens.len(), state: best.state.clone(), logits: best.logits.clone() })
    }

    /// Keeps `state` (of `state_bytes` bytes) under the key `tokens`, replacing an entry with the
    /// same key and evicting the least recently used ones until it fits. A state larger than the
    /// whole budget is not kept.
    pub fn insert(&mut self, tokens: Vec<u32>, state: S, state_bytes: usize, logits: Vec<f32>) {
        let bytes = state_bytes + 4 * logits.len() + 4 * tokens.len();
        if tokens.is_empty() || bytes > self.budget {
            return;
        }
        self.clock += 1;
        if let Some(i) = self.entries.iter().position(|e| e.tokens == tokens) {
            let old = self.entries.swap_remove(i);
            self.used -= old.bytes;
        }
        while self.used + bytes > self.budget {
            let Some(oldest) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i) else {
                break;
            };
            let old = self.entries.swap_remove(oldest);
            self.used -= old.bytes;
        }
        self.used += bytes;
        self.entries.push(Entry { tokens, state, logits, bytes, last_used: self.clock });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_lru_is_evicted() {
        // Each entry: 100 state bytes + 4 per logit (1) + 4 per token.
        let mut c: PrefixCache<&str> = PrefixCache::new(400);
        c.insert(vec![1, 2], "a", 100, vec![0.5]);
        c.insert(vec![1, 2, 3, 4], "b", 100, vec![0.7]);
        let hit = c.lookup(&[1, 2, 3, 4, 5]).expect("a hit");
        assert_eq!((hit.tokens, hit.state, hit.logits), (4, "b", vec![0.7]));
        assert_eq!(c.lookup(&[1, 2, 9]).map(|h| h.state), Some("a"));
        assert!(c.lookup(&[2, 1]).is_none());
        assert!(c.lookup(&[1]).is_none(), "a key longer than the prompt is no prefix of it");
        // "a" was used last, so "b" goes when a third entry needs room.
        c.insert(vec![7, 7, 7], "c", 200, vec![0.0]);
        assert_eq!(c.len(), 2);
        assert!(c.bytes() <= 400);
        assert_eq!(c.lookup(&[1, 2, 3, 4]).map(|h| h.state), Some("a"));
        assert_eq!(c.lookup(&[7, 7, 7]).map(|h| h.tokens), Some(3));
    }

    #[test]
    fn same_key_is_replaced_and_oversized_states_are_not_kept() {
        let mut c: PrefixCache<u8> = PrefixCache::new(200);
        c.insert(vec![1], 1, 50, vec![]);
        c.insert(vec![1], 2, 50, vec![]);
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), 54);
        assert_eq!(c.lookup(&[1, 5]).map(|h| h.state), Some(2));
        c.insert(vec![2], 3, 500, vec![]);
        assert_eq!(c.len(), 1, "a state over the budget is not kept and evicts nothing");
    }
}
