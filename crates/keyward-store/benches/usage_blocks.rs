//! Encoding and decoding a SQLite usage block: serde on named fields (what the
//! store uses) against the hand-written encoder and 17-tuple decoder it
//! replaced (kept only here), in one process, alternating rounds so that the
//! machine's drift hits both alike. Prints the time per 2,000-event block and
//! the ratio new / old.
//!
//! `cargo bench -p keyward-store --bench usage_blocks`

use keyward_core::{KeyId, Micros, OrgId, ProjectId};
use keyward_store::UsageEvent;
use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "../src/sqlite/usage_blocks/stored.rs"]
mod stored;

/// The code before issue 16, item 7.
mod old {
    use keyward_core::{KeyId, Micros, OrgId, ProjectId};
    use keyward_store::UsageEvent;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Read(
        String,
        String,
        String,
        i64,
        String,
        String,
        u16,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        Option<String>,
        bool,
        bool,
    );

    impl From<Read> for UsageEvent {
        fn from(r: Read) -> Self {
            UsageEvent {
                key_id: KeyId::from_trusted(r.0),
                project_id: ProjectId::from_trusted(r.1),
                org_id: OrgId::from_trusted(r.2),
                at: r.3,
                endpoint: r.4,
                model: r.5,
                status: r.6,
                input_tokens: r.7,
                cached_input_tokens: r.8,
                output_tokens: r.9,
                reasoning_tokens: r.10,
                cost_micros: Micros(r.11),
                upstream_latency_ms: r.12,
                total_latency_ms: r.13,
                client_ip: r.14,
                streamed: r.15,
                incomplete: r.16,
            }
        }
    }

    pub fn encode(events: &[UsageEvent]) -> String {
        let mut body = String::with_capacity(events.len() * 320 + 2);
        body.push('[');
        for (n, e) in events.iter().enumerate() {
            if n > 0 {
                body.push(',');
            }
            body.push('[');
            string(&mut body, e.key_id.as_str());
            body.push(',');
            string(&mut body, e.project_id.as_str());
            body.push(',');
            string(&mut body, e.org_id.as_str());
            body.push(',');
            int(&mut body, e.at);
            body.push(',');
            string(&mut body, &e.endpoint);
            body.push(',');
            string(&mut body, &e.model);
            for v in [
                i64::from(e.status),
                e.input_tokens,
                e.cached_input_tokens,
                e.output_tokens,
                e.reasoning_tokens,
                e.cost_micros.0,
                e.upstream_latency_ms,
                e.total_latency_ms,
            ] {
                body.push(',');
                int(&mut body, v);
            }
            body.push(',');
            match &e.client_ip {
                Some(ip) => string(&mut body, ip),
                None => body.push_str("null"),
            }
            for flag in [e.streamed, e.incomplete] {
                body.push_str(if flag { ",true" } else { ",false" });
            }
            body.push(']');
        }
        body.push(']');
        body
    }

    static ESCAPED: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 0x20 {
            t[b] = true;
            b += 1;
        }
        t[b'"' as usize] = true;
        t[b'\\' as usize] = true;
        t
    };

    fn string(out: &mut String, s: &str) {
        if s.bytes().any(|b| ESCAPED[usize::from(b)]) {
            out.push_str(&serde_json::Value::from(s).to_string());
        } else {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
    }

    fn int(out: &mut String, v: i64) {
        out.push_str(itoa::Buffer::new().format(v));
    }

    pub fn decode(body: &str) -> Vec<UsageEvent> {
        let rows: Vec<Read> = serde_json::from_str(body).expect("old decoder reads the block");
        rows.into_iter().map(UsageEvent::from).collect()
    }
}

/// A block as the gateway writes them: a few keys, realistic ids and values.
fn block(n: usize) -> Vec<UsageEvent> {
    (0..n)
        .map(|i| UsageEvent {
            key_id: KeyId::from_trusted(format!("key_7Hq2mXc9LpV4rT8wZs{:04}", i % 16)),
            project_id: ProjectId::from_trusted("prj_3kF9sQ2vB7nM1xW5".into()),
            org_id: OrgId::from_trusted("org_8dJ4tR6yU2pL0aZ3".into()),
            at: 1_764_900_000_000 + i as i64 * 3,
            endpoint: "/v1/chat/completions".into(),
            model: "gpt-4o-mini-2024-07-18".into(),
            status: if i % 50 == 0 { 429 } else { 200 },
            input_tokens: 1_200 + i as i64,
            cached_input_tokens: 256,
            output_tokens: 350,
            reasoning_tokens: 0,
            cost_micros: Micros(412 + i as i64),
            upstream_latency_ms: 480,
            total_latency_ms: 1_930,
            client_ip: Some("10.20.30.40".into()),
            streamed: i % 3 == 0,
            incomplete: false,
        })
        .collect()
}

/// Median time of one call of `f`, over `runs` runs.
fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() {
    let events = block(2_000);
    let old_body = old::encode(&events);
    let new_body = stored::encode_body(&events).expect("encode");
    assert_eq!(old_body, new_body, "the stored bytes must not change");
    assert_eq!(stored::decode_body(&old_body).expect("decode"), events);
    assert_eq!(old::decode(&new_body), events);

    const ROUNDS: usize = 200;
    let (mut enc_old, mut enc_new, mut dec_old, mut dec_new) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        black_box(old::encode(black_box(&events)));
        enc_old.push(t.elapsed());
        let t = Instant::now();
        black_box(stored::encode_body(black_box(&events)).expect("encode"));
        enc_new.push(t.elapsed());
        let t = Instant::now();
        black_box(old::decode(black_box(&old_body)));
        dec_old.push(t.elapsed());
        let t = Instant::now();
        black_box(stored::decode_body(black_box(&old_body)).expect("decode"));
        dec_new.push(t.elapsed());
    }
    let bytes = old_body.len();
    println!("usage block of 2,000 events ({bytes} bytes), median of {ROUNDS} rounds");
    for (what, old, new) in [
        ("encode", median(&mut enc_old), median(&mut enc_new)),
        ("decode", median(&mut dec_old), median(&mut dec_new)),
    ] {
        println!(
            "{what}: old {:>9.1} µs  new {:>9.1} µs  new/old {:.2}",
            old.as_secs_f64() * 1e6,
            new.as_secs_f64() * 1e6,
            new.as_secs_f64() / old.as_secs_f64()
        );
    }
}
