//! JSON string literals, written the way serde_json writes them, eight bytes at a time.
//!
//! The file sink and the dead-letter file put every raw body into a JSON string.
//! serde_json looks each byte up in a table; webhook bodies are long runs that need
//! no escaping, so checking a whole word at once and copying the run in one go
//! takes most of the per-byte work away (docs/benchmarks.md). The output is
//! byte for byte serde_json's, which a property test holds it to.

const HEX: &[u8; 16] = b"0123456789abcdef";
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Appends `s` as a JSON string literal, quotes included.
pub fn write(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run = 0; // start of the bytes not copied yet
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            match escapes(u64::from_le_bytes(w)) {
                0 => {
                    i += 8;
                    continue;
                }
                // The lowest flagged byte is a true one (only higher ones can be
                // false positives, from a borrow): jump straight to it.
                mask => i += (mask.trailing_zeros() / 8) as usize,
            }
        }
        let b = bytes[i];
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0x00..=0x1f => b'u',
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[run..i]);
        if short == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
        i += 1;
        run = i;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Flags (high bit of the byte) the eight bytes' control characters, `"` and `\`;
/// zero if none. Bytes above the first flagged one may be flagged wrongly.
fn escapes(w: u64) -> u64 {
    // A byte below 0x20, or equal to one of the two (each made zero by the xor),
    // leaves its high bit set here; bytes of 0x80 and above are masked out by `!w`
    // (they are parts of UTF-8 sequences and never escaped).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x;
    let control = below(w, 0x20);
    let quote = below(w ^ (ONES * u64::from(b'"')), 1);
    let backslash = below(w ^ (ONES * u64::from(b'\\')), 1);
    (control | quote | backslash) & HIGHS
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(s: &str) -> String {
        let mut out = Vec::new();
        write(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn matches_serde_json_on_every_single_character_class() {
        for c in (0u32..0x300).filter_map(char::from_u32) {
            for s in [
                c.to_string(),
                format!("abcdefgh{c}ijklmnop"),
                format!("{c}{c}{c}{c}{c}{c}{c}{c}{c}"),
            ] {
                assert_eq!(ours(&s), serde_json::to_string(&s).unwrap(), "{c:?}");
            }
        }
        assert_eq!(ours(""), "\"\"");
    }

    proptest! {
        #[test]
        fn matches_serde_json(s in "(?s).{0,200}", t in "[ -~\\t\\n\\x00-\\x1f\"\\\\é€😀]{0,100}") {
            prop_assert_eq!(ours(&s), serde_json::to_string(&s).unwrap());
            prop_assert_eq!(ours(&t), serde_json::to_string(&t).unwrap());
        }
    }
}
