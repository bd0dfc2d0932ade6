//! CloudEvents 1.0 binary-mode attributes for an event.
//!
//! The body stays the raw webhook body; attributes travel as headers (`ce_` on
//! Kafka, a configurable prefix on AMQP). `datacontenttype` is the message's
//! `content-type` header, which every sink already sets.

use crate::event::Event;

/// `(attribute, value)` pairs without the transport prefix.
pub fn attributes(e: &Event) -> [(&'static str, String); 5] {
    [
        ("specversion", "1.0".to_string()),
        ("id", e.id().to_string()),
        ("source", format!("urn:hookrelay:{}", e.source())),
        ("type", format!("{}.{}", e.source(), e.event_type())),
        ("time", rfc3339(e.received_at_ns())),
    ]
}

/// RFC 3339 UTC with microseconds, from nanoseconds since the epoch.
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let micros = (ns % 1_000_000_000) / 1_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        // 2024-01-15T10:30:00Z, the documentation example's timestamp.
        assert_eq!(
            rfc3339(1_705_314_600_000_000_000),
            "2024-01-15T10:30:00.000000Z"
        );
        assert_eq!(
            rfc3339(951_782_400_123_456_789),
            "2000-02-29T00:00:00.123456Z"
        );
    }
}
