//! `JSON.stringify(JSON.parse(body))` as JavaScript computes it.
//!
//! TheQuickAssist's sample verifier signs this form rather than the raw bytes;
//! a sender that does the same while transmitting pretty-printed JSON can only
//! be verified by re-serializing. Key order is kept (a repeated key keeps its
//! first position and its last value, as in JavaScript), there is no whitespace,
//! numbers are JavaScript doubles printed by `Number.prototype.toString`, and
//! strings are escaped as JSON.stringify escapes them.

use serde_json::Value;

/// The JSON.stringify form of `body`, or `None` when it is not JSON.
pub fn stringify(body: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(body.len());
    write(&v, &mut out);
    Some(out)
}

fn write(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            out.extend_from_slice(js_number(n.as_f64().unwrap_or(f64::NAN)).as_bytes())
        }
        // serde_json escapes exactly like JSON.stringify: \" \\ \b \f \n \r \t, other
        // controls as lowercase \u00xx, everything else (including / and DEL) raw.
        Value::String(s) => out.extend_from_slice(&serde_json::to_vec(s).unwrap_or_default()),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&serde_json::to_vec(k).unwrap_or_default());
                out.push(b':');
                write(item, out);
            }
            out.push(b'}');
        }
    }
}

/// ECMAScript Number::toString(10) for a finite double (JSON.stringify writes
/// `null` for the others, which JSON input cannot produce).
pub fn js_number(x: f64) -> String {
    if x == 0.0 {
        return "0".into(); // also -0
    }
    if !x.is_finite() {
        return "null".into();
    }
    // Rust's `{:e}` prints the shortest digits that round-trip, like ECMAScript.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    let n = exp.parse::<i32>().unwrap_or(0) + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let sign = if e >= 0 { '+' } else { '-' };
        if k == 1 {
            format!("{digits}e{sign}{}", e.abs())
        } else {
            format!("{}.{}e{sign}{}", &digits[..1], &digits[1..], e.abs())
        }
    };
    if x < 0.0 { format!("-{body}") } else { body }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bodies and what Node's JSON.stringify made of them (tests/fixtures/gen-jsstringify.js).
    #[test]
    fn matches_node() {
        let fixtures: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("../../tests/fixtures/jsstringify.json")).unwrap();
        assert!(fixtures.len() >= 7);
        for f in fixtures {
            let body = f["body"].as_str().unwrap();
            let want = f["stringified"].as_str().unwrap();
            let got = stringify(body.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(got).unwrap(), want, "for {body}");
        }
    }

    #[test]
    fn numbers() {
        for (x, s) in [
            (1.5, "1.5"),
            (-2.0, "-2"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1e-7, "1e-7"),
            (0.000001, "0.000001"),
            (123.456e-10, "1.23456e-8"),
            (-0.0, "0"),
        ] {
            assert_eq!(js_number(x), s, "{x}");
        }
    }
}
