//! The JSON-pointer walker: finds what each pointer a source asks about points at,
//! in one pass over the body that builds no tree and keeps a number's own text.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{
    DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::value::RawValue;

use super::ExtractError;

/// What a pointer found.
#[derive(Debug, Clone)]
pub(super) enum Found {
    Text(String),
    /// A JSON number: fine as an id, not as an event type.
    Number(String),
    /// Present but an object, array or boolean.
    NotText,
}

/// An RFC 6901 JSON pointer, split and unescaped once at startup.
#[derive(Debug, Clone)]
pub(super) struct Pointer {
    pub(super) text: String,
    /// Each segment as an object key, and as an array index when it is one.
    segments: Vec<(String, Option<usize>)>,
}

impl Pointer {
    pub(super) fn parse(text: &str) -> Pointer {
        let segments = match text.strip_prefix('/') {
            Some(rest) => rest
                .split('/')
                .map(|s| {
                    let key = s.replace("~1", "/").replace("~0", "~");
                    let index = key.parse().ok();
                    (key, index)
                })
                .collect(),
            None => Vec::new(),
        };
        Pointer {
            text: text.to_string(),
            segments,
        }
    }
}

/// Validates a JSON body and finds what each pointer points at, in one pass that
/// builds no tree: only the values pointers reach are copied out. Nesting is
/// bounded by serde_json's recursion limit (127 levels), so every consumer
/// parsing with its defaults, or anything as strict, can read what we publish.
pub(super) fn walk(body: &[u8], pointers: &[Pointer]) -> Result<Vec<Option<Found>>, ExtractError> {
    let mut found = vec![None; pointers.len()];
    let mut de = serde_json::Deserializer::from_slice(body);
    let walker = Walk {
        pointers,
        active: (0..pointers.len()).collect(),
        depth: 0,
        found: &mut found,
    };
    walker
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| {
            if e.to_string().starts_with(RECURSION_LIMIT) {
                ExtractError::TooDeep
            } else {
                ExtractError::NotJson
            }
        })?;
    Ok(found)
}

/// One value of the document, reached by the pointers in `active` through their
/// first `depth` segments.
struct Walk<'a> {
    pointers: &'a [Pointer],
    active: Vec<usize>,
    depth: usize,
    found: &'a mut Vec<Option<Found>>,
}

impl Walk<'_> {
    /// The walk into a child, if any pointer goes on through it. What an earlier
    /// child of the same name found is forgotten: the last repeated key wins.
    fn child(&mut self, matches: impl Fn(&(String, Option<usize>)) -> bool) -> Option<Walk<'_>> {
        let active: Vec<usize> = self
            .active
            .iter()
            .copied()
            .filter(|&i| {
                self.pointers[i]
                    .segments
                    .get(self.depth)
                    .is_some_and(&matches)
            })
            .collect();
        for &i in &active {
            self.found[i] = None;
        }
        (!active.is_empty()).then(|| Walk {
            pointers: self.pointers,
            active,
            depth: self.depth + 1,
            found: &mut *self.found,
        })
    }

    /// Records a value some pointer ends at, from its exact text, and walks on into
    /// it for the pointers that go deeper.
    fn take(self, text: &str) -> Result<(), String> {
        let first = text.as_bytes().first().copied();
        let value = match first {
            Some(b'"') => Some(Found::Text(
                serde_json::from_str::<String>(text).map_err(|e| e.to_string())?,
            )),
            // The number's own digits: `123456789012345678901234567` and `...568`
            // are two ids, not one float.
            Some(b'-' | b'0'..=b'9') => Some(Found::Number(text.to_string())),
            Some(b'n') => None,
            _ => Some(Found::NotText),
        };
        let mut deeper = Vec::new();
        for &i in &self.active {
            if self.pointers[i].segments.len() == self.depth {
                self.found[i] = value.clone();
            } else {
                deeper.push(i);
            }
        }
        if matches!(first, Some(b'{' | b'[')) {
            // Taken whole, its nesting was not counted on the way: count it here.
            if self.depth + nesting(text) > MAX_NESTING {
                return Err(RECURSION_LIMIT.to_string());
            }
            if !deeper.is_empty() {
                let mut de = serde_json::Deserializer::from_str(text);
                Walk {
                    pointers: self.pointers,
                    active: deeper,
                    depth: self.depth,
                    found: self.found,
                }
                .deserialize(&mut de)
                .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Containers serde_json's default recursion limit lets one document nest.
const MAX_NESTING: usize = 127;
/// How serde_json's recursion error starts; `walk` maps it to [`ExtractError::TooDeep`].
const RECURSION_LIMIT: &str = "recursion limit exceeded";

/// How deep containers nest in a valid JSON text (`[]` is 1).
fn nesting(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let ends_here = self
            .active
            .iter()
            .any(|&i| self.pointers[i].segments.len() == self.depth);
        if ends_here {
            let raw = <&'de RawValue>::deserialize(d)?;
            self.take(raw.get()).map_err(D::Error::custom)
        } else {
            d.deserialize_any(self)
        }
    }
}

/// The visitor methods of a walk that looks only inside containers: every scalar
/// is passed over.
macro_rules! ignore_scalars {
    () => {
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    };
}

/// A value pointers go on through: only its children matter.
impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    ignore_scalars!();
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        for i in 0usize.. {
            let more = match self.child(|(_, index)| *index == Some(i)) {
                Some(w) => seq.next_element_seed(w)?,
                None => seq.next_element_seed(Skip)?,
            };
            if more.is_none() {
                break;
            }
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        // Repeated keys: the last one wins, as when parsing into a map.
        while let Some(key) = map.next_key_seed(Key)? {
            match self.child(|(k, _)| *k == *key) {
                Some(w) => map.next_value_seed(w)?,
                None => map.next_value_seed(Skip)?,
            }
        }
        Ok(())
    }
}

/// An object key, borrowed from the body unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

/// A value no pointer reaches: validated and depth-counted (through
/// `deserialize_any`, which serde_json bounds), then dropped.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    ignore_scalars!();
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exactly what serde_json with its default limit can read, and nothing deeper.
    #[test]
    fn nesting_is_bounded_like_serde_json() {
        let arrays = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let objects = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        for n in [1, 100, 126, 127, 128, 129, 500] {
            for body in [arrays(n), objects(n)] {
                let readable = serde_json::from_str::<serde_json::Value>(&body).is_ok();
                let ours = walk(body.as_bytes(), &[]);
                assert_eq!(ours.is_ok(), readable, "depth {n}");
                if !readable {
                    assert_eq!(ours.err(), Some(ExtractError::TooDeep));
                }
            }
        }
        assert!(walk(arrays(127).as_bytes(), &[]).is_ok());
        // Brackets inside strings, escaped quotes included, are text.
        let in_string = format!(r#"{{"a":"\"{}"}}"#, "[".repeat(500));
        assert!(walk(in_string.as_bytes(), &[]).is_ok());
        // Still JSON's grammar, not a bracket count.
        for bad in ["[1,]", "{\"a\" 1}", "[1] x", "\"\\x\"", "{\"a\":01}", ""] {
            assert_eq!(
                walk(bad.as_bytes(), &[]).err(),
                Some(ExtractError::NotJson),
                "{bad}"
            );
        }
    }

    /// A pointer to a container takes it whole: its nesting still counts.
    #[test]
    fn a_pointer_to_a_container_still_bounds_its_nesting() {
        let root = [Pointer::parse("")];
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(walk(deep(127).as_bytes(), &root).is_ok());
        assert_eq!(
            walk(deep(128).as_bytes(), &root).err(),
            Some(ExtractError::TooDeep)
        );
        let inner = [Pointer::parse("/a"), Pointer::parse("/a/0/b")];
        let body = |n: usize| format!(r#"{{"a":[{{"b":"x","c":{}}}]}}"#, deep(n));
        assert!(walk(body(124).as_bytes(), &inner).is_ok());
        assert_eq!(
            walk(body(125).as_bytes(), &inner).err(),
            Some(ExtractError::TooDeep)
        );
        let found = walk(body(3).as_bytes(), &inner).unwrap();
        assert!(matches!(&found[0], Some(Found::NotText)));
        assert!(matches!(&found[1], Some(Found::Text(t)) if t == "x"));
    }

    #[test]
    fn json_pointers_in_one_pass() {
        let texts = [
            "/a~1b/c~0d/0",
            "/a~1b/c~0d/1/e",
            "/a~1b/c~0d/2",
            "/missing",
            "/f/deeper",
            "/s",
            "/f",
            "/n",
            "/o",
            "",
            "/dup",
            "/a~1b",
        ];
        let pointers: Vec<Pointer> = texts.iter().map(|t| Pointer::parse(t)).collect();
        let body = r#"{"a/b":{"c~d":[10,{"e":"x"}]},"n":null,"f":1.5,"s":"t\u00e9","o":{},"dup":1,"dup":"last"}"#;
        let found = walk(body.as_bytes(), &pointers).unwrap();
        let at = |t: &str| found[texts.iter().position(|x| *x == t).unwrap()].clone();
        let text = |f: Option<Found>| match f {
            Some(Found::Text(t)) => format!("text {t}"),
            Some(Found::Number(n)) => format!("number {n}"),
            Some(Found::NotText) => "not text".into(),
            None => "none".into(),
        };
        assert_eq!(text(at("/a~1b/c~0d/0")), "number 10");
        assert_eq!(text(at("/a~1b/c~0d/1/e")), "text x");
        assert_eq!(text(at("/a~1b/c~0d/2")), "none");
        assert_eq!(text(at("/missing")), "none");
        assert_eq!(text(at("/f/deeper")), "none");
        assert_eq!(text(at("/s")), "text té");
        assert_eq!(text(at("/f")), "number 1.5");
        assert_eq!(text(at("/n")), "none");
        assert_eq!(text(at("/o")), "not text");
        assert_eq!(text(at("")), "not text");
        assert_eq!(text(at("/dup")), "text last", "the last repeated key wins");
        assert_eq!(text(at("/a~1b")), "not text");
        // Escaped keys match their unescaped pointer segment.
        let p = [Pointer::parse("/k")];
        let found = walk(br#"{"\u006b":"v"}"#, &p).unwrap();
        assert!(matches!(&found[0], Some(Found::Text(t)) if t == "v"));
    }
}
