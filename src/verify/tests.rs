//! Each scheme against its provider's published example where there is one (the
//! page is cited), and against the negative cases every scheme must refuse:
//! wrong secret, altered body, truncated or empty signature, stale and future
//! timestamps, missing header, and the second secret of a rotation.

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn check(
    v: &Verifier,
    pairs: &[(&str, &str)],
    body: &[u8],
    path: &str,
    now: u64,
) -> Result<(), Failure> {
    let h = headers(pairs);
    v.verify_at(&Request {
        headers: &h,
        body,
        path_and_query: path,
        now,
    })
}

fn verifier(method: Method, secrets: &[&[u8]]) -> Verifier {
    Verifier::with_secrets(method, secrets).unwrap()
}

/// Signs with `sign()` at `now` and returns the headers as owned pairs.
fn signed(
    method: &Method,
    secret: &[u8],
    body: &[u8],
    path: &str,
    now: u64,
) -> Vec<(String, String)> {
    let key = match method {
        Method::StandardWebhooks { .. } => timestamped::standard_key(secret).unwrap(),
        _ => Key::shared(secret.to_vec()),
    };
    super::sign(method, &key, body, path, now).unwrap()
}

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// The checks every scheme must pass, given a way to sign.
fn common_negatives(method: Method, body: &[u8], path: &str, now: u64) {
    let good = signed(&method, b"c2VjcmV0b25l", body, path, now);
    let v = verifier(method.clone(), &[b"b2xkc2VjcmV0", b"c2VjcmV0b25l"]);
    assert_eq!(
        check(&v, &as_refs(&good), body, path, now),
        Ok(()),
        "{method:?}: second secret of a rotation"
    );
    let wrong = verifier(method.clone(), &[b"bm90aXQ="]);
    assert_eq!(
        check(&wrong, &as_refs(&good), body, path, now),
        Err(Failure::Mismatch),
        "{method:?}: wrong secret"
    );
    let mut altered = body.to_vec();
    altered[0] ^= 1;
    assert_eq!(
        check(&v, &as_refs(&good), &altered, path, now),
        Err(Failure::Mismatch),
        "{method:?}: altered body"
    );
    assert_eq!(
        check(&v, &[], body, path, now),
        Err(Failure::Missing),
        "{method:?}: no headers"
    );
    // Every signature-carrying header cut in half is refused.
    for (i, (name, value)) in good.iter().enumerate() {
        let carries_sig = ["signature", "hmac", "authorization", "token"]
            .iter()
            .any(|s| name.contains(s));
        if !carries_sig {
            continue;
        }
        let mut cut = good.clone();
        cut[i].1 = value[..value.len() / 2].to_string();
        assert!(
            check(&v, &as_refs(&cut), body, path, now).is_err(),
            "{method:?}: truncated {name}"
        );
    }
    // Timestamped schemes: a signature from the past or the future beyond the tolerance.
    let tolerance = match &method {
        Method::StandardWebhooks { tolerance }
        | Method::Stripe { tolerance }
        | Method::Slack { tolerance }
        | Method::Paddle { tolerance }
        | Method::Zoom { tolerance } => Some(*tolerance),
        Method::Hmac { spec, tolerance } if spec.timestamp_header.is_some() => Some(*tolerance),
        _ => None,
    };
    if let Some(t) = tolerance {
        assert_eq!(
            check(&v, &as_refs(&good), body, path, now + t + 1),
            Err(Failure::Stale),
            "{method:?}: stale"
        );
        assert_eq!(
            check(&v, &as_refs(&good), body, path, now - t - 1),
            Err(Failure::Stale),
            "{method:?}: future"
        );
        assert_eq!(
            check(&v, &as_refs(&good), body, path, now + t),
            Ok(()),
            "{method:?}: at the edge"
        );
    }
}

const BODY: &[u8] = br#"{"type":"invoice.paid","id":"evt_1","event":"x"}"#;
const NOW: u64 = 1_700_000_000;

#[test]
fn quickassist_documentation_example() {
    // DESIGN.md: TheQuickAssist's documented example, signed over the raw bytes.
    let body = b"{\n  \"event\": \"message.delivered\",\n  \"data\": {\"messageId\": \"msg_123456789\"}\n}";
    let sig = quickassist_sign(b"k", body);
    let v = verifier(
        Method::Quickassist {
            json_stringify: false,
        },
        &[b"k"],
    );
    assert_eq!(
        check(&v, &[("x-webhook-signature", &sig)], body, "/", 0),
        Ok(())
    );
    assert_eq!(
        check(
            &v,
            &[("x-webhook-signature", &sig.to_uppercase())],
            body,
            "/",
            0
        ),
        Ok(())
    );
    assert_eq!(
        check(&v, &[("x-webhook-signature", &sig[..63])], body, "/", 0),
        Err(Failure::Malformed)
    );
    assert_eq!(
        check(
            &v,
            &[("x-webhook-signature", &sig), ("x-webhook-signature", &sig)],
            body,
            "/",
            0
        ),
        Err(Failure::Malformed)
    );
    common_negatives(
        Method::Quickassist {
            json_stringify: false,
        },
        body,
        "/",
        0,
    );
}

#[test]
fn quickassist_json_stringify_compatibility() {
    // A sender that signs JSON.stringify(payload) but transmits other bytes: the
    // fixtures hold bodies and what Node's JSON.stringify makes of them.
    let fixtures: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("../../tests/fixtures/jsstringify.json")).unwrap();
    let strict = verifier(
        Method::Quickassist {
            json_stringify: false,
        },
        &[b"k"],
    );
    let compat = verifier(
        Method::Quickassist {
            json_stringify: true,
        },
        &[b"k"],
    );
    for f in fixtures {
        let body = f["body"].as_str().unwrap().as_bytes();
        let sig = quickassist_sign(b"k", f["stringified"].as_str().unwrap().as_bytes());
        let h = [("x-webhook-signature", sig.as_str())];
        assert_eq!(check(&compat, &h, body, "/", 0), Ok(()), "{}", f["body"]);
        if body != f["stringified"].as_str().unwrap().as_bytes() {
            assert_eq!(check(&strict, &h, body, "/", 0), Err(Failure::Mismatch));
        }
        // Raw-byte signatures still verify in compatibility mode.
        let raw = quickassist_sign(b"k", body);
        assert_eq!(
            check(&compat, &[("x-webhook-signature", &raw)], body, "/", 0),
            Ok(())
        );
    }
}

#[test]
fn standard_webhooks_published_vector() {
    // https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
    // (and Svix's docs, https://docs.svix.com/receiving/verifying-payloads/how-manual)
    let v = verifier(
        Method::StandardWebhooks { tolerance: 300 },
        &[b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    );
    let body = br#"{"test": 2432232314}"#;
    let h = |sig: &'static str, ts: &'static str| {
        vec![
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", ts),
            ("webhook-signature", sig),
        ]
    };
    let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(
        check(&v, &h(sig, "1614265330"), body, "/", 1614265330),
        Ok(())
    );
    // Several signatures, one valid; unknown versions ignored.
    let several = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v2,xyz v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(
        check(&v, &h(several, "1614265330"), body, "/", 1614265330),
        Ok(())
    );
    assert_eq!(
        check(&v, &h(sig, "1614265330"), body, "/", 1614265330 + 301),
        Err(Failure::Stale)
    );
    assert_eq!(
        check(&v, &h(sig, "1614265330"), body, "/", 1614265330 - 301),
        Err(Failure::Stale)
    );
    assert_eq!(
        check(&v, &h("v1,", "1614265330"), body, "/", 1614265330),
        Err(Failure::Malformed)
    );
    assert_eq!(
        check(&v, &h("v1,g0hM9SsE", "1614265330"), body, "/", 1614265330),
        Err(Failure::Malformed)
    );
    assert_eq!(
        check(&v, &h(sig, "1614265330"), b"{\"test\": 1}", "/", 1614265330),
        Err(Failure::Mismatch)
    );
    common_negatives(Method::StandardWebhooks { tolerance: 300 }, BODY, "/", NOW);
}

#[test]
fn standard_webhooks_v1a_ed25519() {
    use ed25519_dalek::{Signer, SigningKey};
    let signing = SigningKey::from_bytes(&[7u8; 32]);
    let public = format!(
        "whpk_{}",
        Encoding::Base64.encode(signing.verifying_key().as_bytes())
    );
    let v = verifier(
        Method::StandardWebhooks { tolerance: 300 },
        &[b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", public.as_bytes()],
    );
    let msg = [b"msg_1.".as_slice(), NOW.to_string().as_bytes(), b".", BODY].concat();
    let sig = format!(
        "v1a,{}",
        Encoding::Base64.encode(&signing.sign(&msg).to_bytes())
    );
    let ts = NOW.to_string();
    let h = [
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    assert_eq!(check(&v, &h, BODY, "/", NOW), Ok(()));
    assert_eq!(check(&v, &h, b"{}", "/", NOW), Err(Failure::Mismatch));
    let other = SigningKey::from_bytes(&[8u8; 32]);
    let forged = format!(
        "v1a,{}",
        Encoding::Base64.encode(&other.sign(&msg).to_bytes())
    );
    let h = [
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", forged.as_str()),
    ];
    assert_eq!(check(&v, &h, BODY, "/", NOW), Err(Failure::Mismatch));
}

#[test]
fn github_documentation_test_values() {
    // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
    let v = verifier(Method::HubSignature, &[b"It's a Secret to Everybody"]);
    let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(
        check(
            &v,
            &[("x-hub-signature-256", sig)],
            b"Hello, World!",
            "/",
            0
        ),
        Ok(())
    );
    assert_eq!(
        check(
            &v,
            &[("x-hub-signature-256", "sha256=")],
            b"Hello, World!",
            "/",
            0
        ),
        Err(Failure::Malformed)
    );
    assert_eq!(
        check(
            &v,
            &[("x-hub-signature-256", &sig[7..])],
            b"Hello, World!",
            "/",
            0
        ),
        Err(Failure::Malformed)
    );
    assert_eq!(
        check(
            &v,
            &[("x-hub-signature-256", &sig[..70])],
            b"Hello, World!",
            "/",
            0
        ),
        Err(Failure::Malformed)
    );
    common_negatives(Method::HubSignature, BODY, "/", 0);
}

#[test]
fn slack_documentation_example() {
    // https://api.slack.com/authentication/verifying-requests-from-slack (the worked example)
    let v = verifier(
        Method::Slack { tolerance: 300 },
        &[b"8f742231b10e8888abcd99yyyzzz85a5"],
    );
    let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    let h = [
        ("x-slack-request-timestamp", "1531420618"),
        (
            "x-slack-signature",
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        ),
    ];
    assert_eq!(check(&v, &h, body, "/", 1531420618), Ok(()));
    assert_eq!(
        check(&v, &h, body, "/", 1531420618 + 301),
        Err(Failure::Stale)
    );
    assert_eq!(
        check(&v, &h, body, "/", 1531420618 - 301),
        Err(Failure::Stale)
    );
    let truncated = [
        ("x-slack-request-timestamp", "1531420618"),
        ("x-slack-signature", "v0="),
    ];
    assert_eq!(
        check(&v, &truncated, body, "/", 1531420618),
        Err(Failure::Malformed)
    );
    assert_eq!(
        check(&v, &h[1..], body, "/", 1531420618),
        Err(Failure::Missing)
    );
    common_negatives(Method::Slack { tolerance: 300 }, BODY, "/", NOW);
}

#[test]
fn twilio_documentation_example() {
    // https://www.twilio.com/docs/usage/security#validating-requests (the PHP/Node snippet's values)
    let v = verifier(
        Method::Twilio {
            public_url: "https://mycompany.com".into(),
        },
        &[b"12345"],
    );
    let body = b"CallSid=CA1234567890ABCDE&Caller=%2B14158675310&Digits=1234&From=%2B14158675310&To=%2B18005551212";
    let h = [("x-twilio-signature", "GvWf1cFY/Q7PnoempGyD5oXAezc=")];
    assert_eq!(check(&v, &h, body, "/myapp.php?foo=1&bar=2", 0), Ok(()));
    assert_eq!(
        check(&v, &h, body, "/myapp.php?foo=1&bar=3", 0),
        Err(Failure::Mismatch)
    );
    assert_eq!(
        check(
            &v,
            &[("x-twilio-signature", "GvWf1cFY")],
            body,
            "/myapp.php?foo=1&bar=2",
            0
        ),
        Err(Failure::Malformed)
    );
    common_negatives(
        Method::Twilio {
            public_url: "https://hooks.example.com".into(),
        },
        b"A=1&B=2",
        "/webhooks/t",
        0,
    );
    // JSON bodies: the URL carries bodySHA256 of the body.
    let json = br#"{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}"#;
    let path = "/myapp?bodySHA256=5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9";
    let sig = twilio::sign(b"12345", "https://example.com", path, json);
    let tv = verifier(
        Method::Twilio {
            public_url: "https://example.com".into(),
        },
        &[b"12345"],
    );
    assert_eq!(
        check(&tv, &[("x-twilio-signature", &sig)], json, path, 0),
        Ok(())
    );
    assert_eq!(
        check(
            &tv,
            &[("x-twilio-signature", &sig)],
            b"{\"CallSid\":\"X\"}",
            path,
            0
        ),
        Err(Failure::Mismatch)
    );
}

#[test]
fn stripe_format() {
    // https://docs.stripe.com/webhooks#verify-manually: t=..., v1=... over "{t}.{body}"
    let m = Method::Stripe { tolerance: 300 };
    let v = verifier(m.clone(), &[b"whsec_test"]);
    let good =
        hex::encode(Alg::Sha256.mac(b"whsec_test", &[NOW.to_string().as_bytes(), b".", BODY]));
    let header = format!("t={NOW},v1={},v1={good},v0=ignored", "0".repeat(64));
    assert_eq!(
        check(&v, &[("stripe-signature", &header)], BODY, "/", NOW),
        Ok(())
    );
    assert_eq!(
        check(&v, &[("stripe-signature", &header)], BODY, "/", NOW + 301),
        Err(Failure::Stale)
    );
    assert_eq!(
        check(&v, &[("stripe-signature", &header)], BODY, "/", NOW - 301),
        Err(Failure::Stale)
    );
    assert_eq!(
        check(
            &v,
            &[("stripe-signature", &format!("t={NOW},v1="))],
            BODY,
            "/",
            NOW
        ),
        Err(Failure::Malformed)
    );
    assert_eq!(
        check(
            &v,
            &[("stripe-signature", &format!("v1={good}"))],
            BODY,
            "/",
            NOW
        ),
        Err(Failure::Malformed)
    );
    common_negatives(m, BODY, "/", NOW);
}

#[test]
fn paddle_format() {
    // https://developer.paddle.com/webhooks/signature-verification: ts=...;h1=... over "{ts}:{body}"
    let m = Method::Paddle { tolerance: 300 };
    let v = verifier(m.clone(), &[b"pdl_ntfset_secret"]);
    let good = hex::encode(Alg::Sha256.mac(
        b"pdl_ntfset_secret",
        &[NOW.to_string().as_bytes(), b":", BODY],
    ));
    let header = format!("ts={NOW};h1={good}");
    assert_eq!(
        check(&v, &[("paddle-signature", &header)], BODY, "/", NOW),
        Ok(())
    );
    assert_eq!(
        check(&v, &[("paddle-signature", &header)], BODY, "/", NOW + 400),
        Err(Failure::Stale)
    );
    assert_eq!(
        check(
            &v,
            &[("paddle-signature", &format!("ts={NOW};h1="))],
            BODY,
            "/",
            NOW
        ),
        Err(Failure::Malformed)
    );
    common_negatives(m, BODY, "/", NOW);
}

#[test]
fn zoom_format() {
    // https://developers.zoom.us/docs/api/webhooks/#verify-webhook-events: v0=HMAC("v0:{ts}:{body}")
    let m = Method::Zoom { tolerance: 300 };
    let v = verifier(m.clone(), &[b"zoom-secret-token"]);
    let good = hex::encode(Alg::Sha256.mac(
        b"zoom-secret-token",
        &[b"v0:", NOW.to_string().as_bytes(), b":", BODY],
    ));
    let ts = NOW.to_string();
    let h = [
        ("x-zm-request-timestamp", ts.as_str()),
        ("x-zm-signature", &format!("v0={good}")),
    ];
    assert_eq!(check(&v, &h, BODY, "/", NOW), Ok(()));
    assert_eq!(check(&v, &h, BODY, "/", NOW - 1000), Err(Failure::Stale));
    common_negatives(m, BODY, "/", NOW);
}

#[test]
fn shopify_razorpay_linear_meta() {
    // https://shopify.dev/docs/apps/build/webhooks/subscribe/https#step-2-validate-the-origin-of-your-webhook
    let v = verifier(Method::Shopify, &[b"shpss_secret"]);
    let sig = Encoding::Base64.encode(&Alg::Sha256.mac(b"shpss_secret", &[BODY]));
    assert_eq!(
        check(&v, &[("x-shopify-hmac-sha256", &sig)], BODY, "/", 0),
        Ok(())
    );
    assert_eq!(
        check(&v, &[("x-shopify-hmac-sha256", &sig[..20])], BODY, "/", 0),
        Err(Failure::Malformed)
    );
    common_negatives(Method::Shopify, BODY, "/", 0);
    // https://razorpay.com/docs/webhooks/validate-test/
    common_negatives(Method::Razorpay, BODY, "/", 0);
    // https://linear.app/developers/webhooks#securing-webhooks
    let linear = Method::Linear { tolerance: 60 };
    let body = format!(r#"{{"type":"Issue","webhookTimestamp":{}}}"#, NOW * 1000);
    let sig = hex::encode(Alg::Sha256.mac(b"lin_wh", &[body.as_bytes()]));
    let v = verifier(linear.clone(), &[b"lin_wh"]);
    assert_eq!(
        check(&v, &[("linear-signature", &sig)], body.as_bytes(), "/", NOW),
        Ok(())
    );
    assert_eq!(
        check(
            &v,
            &[("linear-signature", &sig)],
            body.as_bytes(),
            "/",
            NOW + 61
        ),
        Err(Failure::Stale)
    );
    common_negatives(linear.clone(), body.as_bytes(), "/", NOW);
    // The timestamp is what makes a captured body stale: without a usable one the
    // request is refused, never waved through.
    let ms = NOW * 1000;
    for stamp in [
        r#"{"type":"Issue"}"#.to_string(),
        format!(r#"{{"type":"Issue","webhookTimestamp":"{ms}"}}"#),
        format!(r#"{{"type":"Issue","webhookTimestamp":{ms}.5}}"#),
        format!(r#"{{"type":"Issue","webhookTimestamp":{ms},"webhookTimestamp":{ms}}}"#),
        format!(r#"{{"type":"Issue","webhookTimestamp":-{ms}}}"#),
        r#"{"type":"Issue","webhookTimestamp":null}"#.to_string(),
        "not json".to_string(),
    ] {
        let sig = hex::encode(Alg::Sha256.mac(b"lin_wh", &[stamp.as_bytes()]));
        assert_eq!(
            check(
                &v,
                &[("linear-signature", &sig)],
                stamp.as_bytes(),
                "/",
                NOW
            ),
            Err(Failure::Malformed),
            "{stamp}"
        );
    }
    // Meta (WhatsApp Cloud API): X-Hub-Signature-256 with the app secret,
    // https://developers.facebook.com/docs/graph-api/webhooks/getting-started#event-notifications
    common_negatives(
        Method::HubSignature,
        br#"{"object":"whatsapp_business_account"}"#,
        "/",
        0,
    );
}

#[test]
fn generic_hmac() {
    let spec = GenericHmac {
        header: "X-Signature".into(),
        algorithm: Alg::Sha512,
        encoding: Encoding::Base64,
        prefix: "sha512=".into(),
        content: "{id}.{timestamp}.{body}".into(),
        timestamp_header: Some("X-Timestamp".into()),
        id_header: Some("X-Id".into()),
    };
    let m = Method::Hmac {
        spec: spec.clone(),
        tolerance: 300,
    };
    let v = verifier(m.clone(), &[b"g"]);
    let mac = Alg::Sha512.mac(b"g", &[b"e1.", NOW.to_string().as_bytes(), b".", BODY]);
    let sig = format!("sha512={}", Encoding::Base64.encode(&mac));
    let ts = NOW.to_string();
    let h = [
        ("x-signature", sig.as_str()),
        ("x-timestamp", ts.as_str()),
        ("x-id", "e1"),
    ];
    assert_eq!(check(&v, &h, BODY, "/", NOW), Ok(()));
    assert_eq!(check(&v, &h, BODY, "/", NOW + 301), Err(Failure::Stale));
    let h2 = [
        ("x-signature", sig.as_str()),
        ("x-timestamp", ts.as_str()),
        ("x-id", "e2"),
    ];
    assert_eq!(check(&v, &h2, BODY, "/", NOW), Err(Failure::Mismatch));
    assert_eq!(
        check(
            &v,
            &[
                ("x-signature", "sha512="),
                ("x-timestamp", &ts),
                ("x-id", "e1")
            ],
            BODY,
            "/",
            NOW
        ),
        Err(Failure::Malformed)
    );
    common_negatives(m, BODY, "/", NOW);
    let sha1_hex = Method::Hmac {
        spec: GenericHmac {
            algorithm: Alg::Sha1,
            encoding: Encoding::Hex,
            prefix: String::new(),
            content: "{body}".into(),
            timestamp_header: None,
            id_header: None,
            ..spec
        },
        tolerance: 0,
    };
    common_negatives(sha1_hex, BODY, "/", NOW);
}

#[test]
fn tokens() {
    let basic = verifier(Method::Basic, &[b"user:pa55"]);
    assert_eq!(
        check(
            &basic,
            &[("authorization", "Basic dXNlcjpwYTU1")],
            BODY,
            "/",
            0
        ),
        Ok(())
    );
    assert_eq!(
        check(
            &basic,
            &[("authorization", "Basic dXNlcjpwYTU2")],
            BODY,
            "/",
            0
        ),
        Err(Failure::Mismatch)
    );
    assert_eq!(
        check(&basic, &[("authorization", "Bearer x")], BODY, "/", 0),
        Err(Failure::Malformed)
    );
    assert_eq!(
        check(&basic, &[("authorization", "Basic ")], BODY, "/", 0),
        Err(Failure::Malformed)
    );
    let bearer = verifier(Method::Bearer, &[b"old", b"t0k3n"]);
    assert_eq!(
        check(&bearer, &[("authorization", "Bearer t0k3n")], BODY, "/", 0),
        Ok(())
    );
    assert_eq!(
        check(&bearer, &[("authorization", "Bearer t0k3")], BODY, "/", 0),
        Err(Failure::Mismatch)
    );
    assert_eq!(check(&bearer, &[], BODY, "/", 0), Err(Failure::Missing));
    let ht = verifier(
        Method::HeaderToken {
            header: "x-token".into(),
        },
        &[b"abc"],
    );
    assert_eq!(check(&ht, &[("x-token", "abc")], BODY, "/", 0), Ok(()));
    assert_eq!(
        check(&ht, &[("x-token", "abd")], BODY, "/", 0),
        Err(Failure::Mismatch)
    );
}

#[test]
fn handshakes() {
    let kinds = Handshakes {
        github_ping: true,
        slack_url_verification: true,
        zoom_url_validation: true,
        meta_get: true,
    };
    let keys = [Key::shared(b"zoom-secret".to_vec())];
    let ping =
        handshake::post(kinds, b"{}", &headers(&[("x-github-event", "ping")]), &keys).unwrap();
    assert_eq!(ping.status, 200);
    let slack = handshake::post(
        kinds,
        br#"{"type":"url_verification","challenge":"3eZbrw1aB"}"#,
        &HeaderMap::new(),
        &keys,
    )
    .unwrap();
    assert_eq!(slack.body, br#"{"challenge":"3eZbrw1aB"}"#);
    let zoom = handshake::post(
        kinds,
        br#"{"event":"endpoint.url_validation","payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"}}"#,
        &HeaderMap::new(),
        &keys,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&zoom.body).unwrap();
    assert_eq!(v["plainToken"], "qgg8vlvZRS6UYooatFL8Aw");
    assert_eq!(
        v["encryptedToken"],
        hex::encode(Alg::Sha256.mac(b"zoom-secret", &[b"qgg8vlvZRS6UYooatFL8Aw"]))
    );
    let ok = handshake::get(
        kinds,
        "hub.mode=subscribe&hub.verify_token=vt&hub.challenge=1158201444",
        Some(b"vt"),
    )
    .unwrap();
    assert_eq!(
        (ok.status, ok.body.as_slice()),
        (200, b"1158201444".as_slice())
    );
    let bad = handshake::get(
        kinds,
        "hub.mode=subscribe&hub.verify_token=no&hub.challenge=1",
        Some(b"vt"),
    )
    .unwrap();
    assert_eq!(bad.status, 403);
    assert!(handshake::get(Handshakes::default(), "hub.mode=subscribe", Some(b"vt")).is_none());
}

/// In json-stringify mode, when only the stringified form verifies, that form is
/// what was signed: it is what the extractor reads and what is published, so every
/// variant of a captured body (whitespace, a repeated key, `12345.0` for `12345`)
/// is the same event with the same bytes, not a new one with the sender's bytes.
#[test]
fn json_stringify_hands_on_the_signed_form() {
    let compat = verifier(
        Method::Quickassist {
            json_stringify: true,
        },
        &[b"k"],
    );
    let canonical = br#"{"event":"message.read","data":{"messageId":12345}}"#;
    let sig = quickassist_sign(b"k", canonical);
    let h = headers(&[("x-webhook-signature", &sig)]);
    for variant in [
        &br#"{ "event": "message.read",  "data": { "messageId": 12345 } }"#[..],
        br#"{"event":"message.read","data":{"messageId":1},"data":{"messageId":12345}}"#,
        br#"{"event":"message.read","data":{"messageId":12345.0}}"#,
        br#"{"event":"message.read","data":{"messageId":1.2345e4}}"#,
    ] {
        let v = compat
            .verify(&h, bytes::Bytes::copy_from_slice(variant), "/")
            .unwrap();
        assert_eq!(&v.body()[..], &canonical[..]);
    }
    // The bytes received, when they are what was signed.
    let raw = br#"{ "event": "message.read" }"#;
    let h = headers(&[("x-webhook-signature", &quickassist_sign(b"k", raw))]);
    let v = compat
        .verify(&h, bytes::Bytes::copy_from_slice(raw), "/")
        .unwrap();
    assert_eq!(&v.body()[..], &raw[..]);
}
