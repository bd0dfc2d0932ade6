//! Signature verification cost per scheme, per KiB of body, next to a bare
//! HMAC-SHA256 of the same bytes measured in the same run.
//!
//! `cargo run --release --example bench_verify`

use std::hint::black_box;
use std::time::{Duration, Instant};

use hookrelay::verify::{Alg, Encoding, GenericHmac, Method, Request, Verifier};
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

const NOW_SLACK: Duration = Duration::from_millis(300);

fn time(mut f: impl FnMut()) -> f64 {
    // Warm up, then run for a fixed time and report ns per call.
    for _ in 0..1000 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < NOW_SLACK {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let secret = b"c2VjcmV0b25lc2VjcmV0b25l";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let schemes: Vec<(&str, Method)> = vec![
        (
            "quickassist",
            Method::Quickassist {
                json_stringify: false,
            },
        ),
        (
            "standard-webhooks",
            Method::StandardWebhooks { tolerance: 300 },
        ),
        ("github/meta", Method::HubSignature),
        ("stripe", Method::Stripe { tolerance: 300 }),
        ("shopify", Method::Shopify),
        ("slack", Method::Slack { tolerance: 300 }),
        (
            "twilio (form)",
            Method::Twilio {
                public_url: "https://hooks.example.com".into(),
            },
        ),
        ("razorpay", Method::Razorpay),
        ("paddle", Method::Paddle { tolerance: 300 }),
        ("zoom", Method::Zoom { tolerance: 300 }),
        (
            "hmac sha512/base64",
            Method::Hmac {
                spec: GenericHmac {
                    header: "x-signature".into(),
                    algorithm: Alg::Sha512,
                    encoding: Encoding::Base64,
                    prefix: String::new(),
                    content: "{timestamp}.{body}".into(),
                    timestamp_header: Some("x-timestamp".into()),
                    id_header: None,
                },
                tolerance: 300,
            },
        ),
        ("bearer", Method::Bearer),
    ];
    println!("| scheme | body | ns/verify | ns/KiB | vs bare HMAC-SHA256 |");
    println!("|---|---|---|---|---|");
    let mut worst_per_kib: f64 = 0.0;
    for size in [1024usize, 16 * 1024] {
        let json = format!("{{\"type\":\"x\",\"pad\":\"{}\"}}", "a".repeat(size - 20));
        let form = format!("A=1&pad={}", "a".repeat(size - 8));
        let bare = time(|| {
            black_box(Alg::Sha256.mac(secret, &[json.as_bytes()]));
        });
        println!(
            "| bare HMAC-SHA256 | {} KiB | {bare:.0} | {:.0} | 1.00 |",
            size / 1024,
            bare / (size as f64 / 1024.0)
        );
        for (label, alg) in [
            ("bare HMAC-SHA1", Alg::Sha1),
            ("bare HMAC-SHA512", Alg::Sha512),
        ] {
            let ns = time(|| {
                black_box(alg.mac(secret, &[json.as_bytes()]));
            });
            println!(
                "| {label} | {} KiB | {ns:.0} | {:.0} | {:.2} |",
                size / 1024,
                ns / (size as f64 / 1024.0),
                ns / bare
            );
        }
        for (name, method) in &schemes {
            let body = if name.starts_with("twilio") {
                form.as_bytes()
            } else {
                json.as_bytes()
            };
            let v = Verifier::with_secrets(method.clone(), &[secret]).unwrap();
            let mut headers = HeaderMap::new();
            for (k, val) in v.sign(body, "/webhooks/x").unwrap() {
                headers.insert(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(&val).unwrap(),
                );
            }
            let req = Request {
                headers: &headers,
                body,
                path_and_query: "/webhooks/x",
                now,
            };
            assert!(v.verify_at(&req).is_ok(), "{name}");
            let ns = time(|| {
                black_box(v.verify_at(black_box(&req))).ok();
            });
            let per_kib = ns / (size as f64 / 1024.0);
            worst_per_kib = worst_per_kib.max(per_kib);
            println!(
                "| {name} | {} KiB | {ns:.0} | {per_kib:.0} | {:.2} |",
                size / 1024,
                ns / bare
            );
        }
    }
    println!(
        "\nworst: {:.2} µs per KiB (target: under 2 µs per KiB)",
        worst_per_kib / 1000.0
    );
}
