//! The mutator: a seeded generator and byte-level edits in the spirit of libFuzzer's (bit flips,
//! interesting integers at any offset, inserted/deleted/duplicated ranges, splices of two inputs),
//! plus text edits aimed at JSON and TOML (numbers swapped for extreme ones, tokens inserted).

/// SplitMix64: small, seedable, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Integers that sit on boundaries: sizes, counts, offsets and lengths are read from these.
const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0xFFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    0x1_0000_0000,
    0x7FFF_FFFF_FFFF_FFFF,
    u64::MAX,
];

/// Replacements for a number or a word in a text format.
const TOKENS: [&str; 22] = [
    "0",
    "-1",
    "1",
    "1000000000",
    "4294967296",
    "18446744073709551615",
    "99999999999999999999999",
    "-9223372036854775808",
    "1e309",
    "-1e-320",
    "NaN",
    "Infinity",
    "-Infinity",
    "null",
    "true",
    "\"\"",
    "[]",
    "{}",
    "\"\\u0000\\u001b[31m\"",
    "\"Infinity\"",
    "{\"__float__\": \"NaN\"}",
    "[0.0, Infinity]",
];

/// Applies 1 to 8 random edits to `data`; `other` is a second input to splice from.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8], max_len: usize) {
    let edits = 1 + rng.below(8);
    for _ in 0..edits {
        edit(rng, data, other);
    }
    data.truncate(max_len);
}

fn edit(rng: &mut Rng, d: &mut Vec<u8>, other: &[u8]) {
    if d.is_empty() {
        d.push(rng.next() as u8);
        return;
    }
    let n = d.len();
    let at = rng.below(n);
    match rng.below(13) {
        0 => d[at] ^= 1 << rng.below(8),
        1 => d[at] = rng.next() as u8,
        2 => d[at] = INTERESTING[rng.below(INTERESTING.len())] as u8,
        // An interesting integer, 2, 4 or 8 bytes little-endian, where a header field may be.
        3 | 4 => {
            let width = [2, 4, 8][rng.below(3)];
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let v = if rng.below(4) == 0 { v.wrapping_sub(1 + rng.below(3) as u64) } else { v };
            let bytes = v.to_le_bytes();
            let end = (at + width).min(n);
            d[at..end].copy_from_slice(&bytes[..end - at]);
        }
        5 => {
            let len = 1 + rng.below(16.min(n - at));
            d.drain(at..at + len);
        }
        6 => {
            let len = 1 + rng.below(16);
            let fill: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            d.splice(at..at, fill);
        }
        // Duplicate a range (repeated keys, repeated records).
        7 => {
            let len = 1 + rng.below(64.min(n - at));
            let copy = d[at..at + len].to_vec();
            let to = rng.below(n + 1);
            d.splice(to..to, copy);
        }
        8 => d.truncate(at),
        // Splice: our head, the other input's tail.
        9 if !other.is_empty() => {
            let from = rng.below(other.len());
            d.truncate(at);
            d.extend_from_slice(&other[from..]);
        }
        // Text: replace a number (or the word at `at`) with an extreme token.
        10..=12 => {
            let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'+' || b == b'_';
            let mut start = at;
            while start > 0 && is_word(d[start - 1]) {
                start -= 1;
            }
            let mut end = at;
            while end < n && is_word(d[end]) {
                end += 1;
            }
            let token = TOKENS[rng.below(TOKENS.len())].as_bytes().to_vec();
            d.splice(start..end.max(start), token);
        }
        _ => d[at] = d[at].wrapping_add(1),
    }
}
