//! The provider catalogue: for each scheme, where its event type and id are, its
//! replay tolerance, the headers its signature covers, and the shapes its ids take.

use serde::Deserialize;

/// The signature scheme of a source: a preset of signature, event type location
/// and event id location per provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    Quickassist,
    StandardWebhooks,
    Github,
    Stripe,
    Shopify,
    Slack,
    Meta,
    Twilio,
    Razorpay,
    Linear,
    Paddle,
    Zoom,
    Hmac,
    Basic,
    Bearer,
    HeaderToken,
}

/// Where a scheme finds the event type and the event id, and its replay tolerance.
pub struct Preset {
    pub event_from: &'static str,
    /// `None`: the body's digest identifies the event.
    pub id_from: Option<&'static str>,
    pub tolerance_secs: u64,
}

/// The shapes a provider's event types and ids take, for a scheme whose signature
/// leaves room to alter a body without breaking it (Twilio signs its form
/// parameters concatenated, so moving bytes from one value into the next key keeps
/// the signature): the type and the id must both be found (no digest fallback) and
/// have these shapes, so a re-split body cannot mint a new event id.
#[derive(Debug, Clone, Copy)]
pub struct IdRules {
    /// The only event types accepted.
    pub event_types: &'static [&'static str],
    /// The provider's id shape.
    pub id_shape: fn(&str) -> bool,
}

/// Twilio's message and call statuses (its status callbacks' `MessageStatus`,
/// `SmsStatus` and `CallStatus`).
const TWILIO_STATUSES: &[&str] = &[
    "accepted",
    "scheduled",
    "canceled",
    "queued",
    "sending",
    "sent",
    "failed",
    "delivered",
    "undelivered",
    "receiving",
    "received",
    "read",
    "partially_delivered",
    "initiated",
    "ringing",
    "in-progress",
    "completed",
    "busy",
    "no-answer",
];

/// A Twilio SID: two capital letters and 32 lowercase hex digits.
fn twilio_sid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 34
        && b[..2].iter().all(u8::is_ascii_uppercase)
        && b[2..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

impl Scheme {
    /// Headers (lowercase) whose values the scheme's signature always covers.
    pub fn signed_headers(self) -> &'static [&'static str] {
        match self {
            Scheme::StandardWebhooks => &["webhook-id", "webhook-timestamp"],
            Scheme::Slack => &["x-slack-request-timestamp"],
            Scheme::Zoom => &["x-zm-request-timestamp"],
            _ => &[],
        }
    }

    /// The shapes its own event types and ids take, where its signature does not
    /// hold a body's field boundaries (see [`IdRules`]).
    pub fn id_rules(self) -> Option<IdRules> {
        match self {
            Scheme::Twilio => Some(IdRules {
                event_types: TWILIO_STATUSES,
                id_shape: twilio_sid,
            }),
            _ => None,
        }
    }

    /// The event types the provider documents; their metric series start at zero.
    pub fn known_events(self) -> &'static [&'static str] {
        match self {
            Scheme::Quickassist => &[
                "message.delivered",
                "message.read",
                "message.failed",
                "template.status_update",
            ],
            _ => &[],
        }
    }

    pub fn preset(self) -> Preset {
        let p = |event_from, id_from, tolerance_secs| Preset {
            event_from,
            id_from,
            tolerance_secs,
        };
        match self {
            Scheme::Quickassist => p("/event", Some("/data/messageId"), 0),
            Scheme::StandardWebhooks => p("/type", Some("header:webhook-id"), 300),
            Scheme::Github => p("header:x-github-event", Some("header:x-github-delivery"), 0),
            Scheme::Stripe => p("/type", Some("/id"), 300),
            Scheme::Shopify => p(
                "header:x-shopify-topic",
                Some("header:x-shopify-event-id|header:x-shopify-webhook-id"),
                0,
            ),
            Scheme::Slack => p(
                "/event/type|/type|form:command",
                Some("/event_id|form:trigger_id"),
                300,
            ),
            Scheme::Meta => p("/entry/0/changes/0/field|/object", None, 0),
            Scheme::Twilio => p(
                "form:MessageStatus|form:SmsStatus|form:CallStatus",
                Some("form:MessageSid|form:SmsSid|form:CallSid"),
                0,
            ),
            Scheme::Razorpay => p("/event", Some("header:x-razorpay-event-id"), 0),
            Scheme::Linear => p("/type", Some("header:linear-delivery"), 60),
            Scheme::Paddle => p("/event_type", Some("/event_id"), 300),
            Scheme::Zoom => p("/event", None, 300),
            Scheme::Hmac => p("/type|/event", None, 300),
            Scheme::Basic | Scheme::Bearer | Scheme::HeaderToken => p("/type|/event", None, 0),
        }
    }
}
