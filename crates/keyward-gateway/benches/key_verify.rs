//! Key verification from cache, at growing cache sizes.
//!
//! Times the gateway's hot path for a presented key: `KeyFormat::parse` (prefix,
//! alphabet, CRC32 checksum, SHA-256 of the key) followed by `KeyCache::get`. The
//! baseline, run in the same process, is a bare SHA-256 of the same key
//! (`KeyHash::of`): absolute times drift on a shared machine, ratios do not.
//!
//! Two access patterns per size:
//! - *hot*: the same key every time (one client hammering the gateway);
//! - *spread*: a rotation over up to 100,000 distinct cached keys in random order,
//!   so that at large sizes the table lookups miss the CPU caches.
//!
//! Run: `cargo bench -p keyward-gateway --bench key_verify [-- --sizes 1000,100000,1000000]`
//! (or `cargo xtask bench keys`). Plain `main` (`harness = false`): no criterion.

use keyward_core::{KeyFormat, KeyHash, KeyId, KeyKind, OrgId, ProjectId};
use keyward_gateway::key_cache::KeyCache;
use keyward_store::{KeyRecord, KeyStatus};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Distinct real keys the *spread* pattern rotates over (at most).
const SPREAD_KEYS: usize = 100_000;
/// A cache TTL long enough that nothing expires during the run.
const TTL_MS: i64 = i64::MAX / 4;
const NOW_MS: i64 = 1_700_000_000_000;

fn main() {
    let sizes = parse_sizes();
    let format = KeyFormat::default();
    let cache = KeyCache::new(TTL_MS);
    let org = OrgId::generate();
    let project = ProjectId::generate();
    let record = || {
        Arc::new(KeyRecord {
            id: KeyId::generate(),
            project_id: project.clone(),
            org_id: org.clone(),
            name: "bench".into(),
            hint: "kwk_…abcd".into(),
            status: KeyStatus::Active,
            tags: vec![],
            created_by: None,
            created_at: 0,
            last_used_at: None,
            revoked_at: None,
            expires_at: None,
            secret_expires_at: None,
            minted_from: None,
            parent_id: None,
            policy: Default::default(),
            rotated_at: None,
        })
    };

    // Real keys first (their strings are kept for the spread pattern), then fillers
    // whose hashes are made up: only the hash reaches the cache.
    let max = *sizes.iter().max().expect("at least one size");
    let real: Vec<String> = (0..max.min(SPREAD_KEYS))
        .map(|_| format.generate(KeyKind::Standard).expose().to_owned())
        .collect();
    let hot = real[0].clone();
    let mut filler = SplitMix(0x6b65_7977_6172_6421);

    println!("key verification from cache: ns/op (median of 11 samples) and x = ratio to a bare SHA-256 of the key measured back to back");
    println!(
        "{:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "cached keys", "fill s", "sha256", "parse", "hot", "hot x", "spread", "spread x"
    );
    let mut inserted = 0usize;
    let mut rows = Vec::new();
    for &size in &sizes {
        let fill_start = Instant::now();
        while inserted < size {
            let hash = match real.get(inserted) {
                Some(k) => KeyHash::of(k),
                None => KeyHash(filler.bytes32()),
            };
            cache.insert(hash, record(), NOW_MS);
            inserted += 1;
        }
        let fill = fill_start.elapsed();
        assert_eq!(cache.len(), size, "every key is cached once");

        let sha = |_| {
            black_box(KeyHash::of(black_box(&hot)));
        };
        let (_, parse, _) = time_against(sha, |_| {
            black_box(format.parse(black_box(&hot)).expect("valid key"));
        });
        let (sha_ns, verify_hot, hot_ratio) = time_against(sha, |_| {
            let parsed = format.parse(black_box(&hot)).expect("valid key");
            black_box(cache.get(&parsed.hash, NOW_MS).expect("cached"));
        });
        let spread_keys = shuffled(&real[..size.min(real.len())], &mut filler);
        let (_, verify_spread, spread_ratio) = time_against(sha, |i| {
            let key = &spread_keys[i as usize % spread_keys.len()];
            let parsed = format.parse(black_box(key)).expect("valid key");
            black_box(cache.get(&parsed.hash, NOW_MS).expect("cached"));
        });
        println!(
            "{size:>12} {:>9.1} {sha_ns:>9.0} {parse:>9.0} {verify_hot:>9.0} {hot_ratio:>9.2} {verify_spread:>9.0} {spread_ratio:>9.2}",
            fill.as_secs_f64(),
        );
        rows.push((size, hot_ratio, spread_ratio));
    }

    let (first, last) = (rows[0], rows[rows.len() - 1]);
    println!();
    println!(
        "hot key, {} keys against {} keys: {:.2}x (ratio of the rows' sha256-relative costs)",
        last.0,
        first.0,
        last.1 / first.1
    );
    println!(
        "spread over up to {} distinct keys, {} keys against {} keys: {:.2}x",
        SPREAD_KEYS,
        last.0,
        first.0,
        last.2 / first.2
    );
}

/// Sizes from `--sizes a,b,c` (ascending), default 1 thousand, 100 thousand, 1 million.
/// Other arguments (cargo passes `--bench`) are ignored.
fn parse_sizes() -> Vec<usize> {
    let args: Vec<String> = std::env::args().collect();
    let mut sizes = vec![1_000, 100_000, 1_000_000];
    if let Some(i) = args.iter().position(|a| a == "--sizes") {
        let list = args
            .get(i + 1)
            .expect("--sizes needs a comma-separated list");
        sizes = list
            .split(',')
            .map(|s| s.trim().replace('_', "").parse().expect("--sizes: numbers"))
            .collect();
    }
    sizes.sort_unstable();
    sizes.dedup();
    assert!(
        sizes.first().is_some_and(|&s| s > 0),
        "sizes must be positive"
    );
    sizes
}

/// Calls per sample such that one sample of `f` takes at least 20 ms.
fn calibrate(f: &mut impl FnMut(u64)) -> u64 {
    let mut iters: u64 = 1_000;
    loop {
        let start = Instant::now();
        for i in 0..iters {
            f(i);
        }
        if start.elapsed() >= Duration::from_millis(20) {
            return iters;
        }
        iters *= 2;
    }
}

fn sample(f: &mut impl FnMut(u64), iters: u64) -> f64 {
    let start = Instant::now();
    for i in 0..iters {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

/// Median ns per call of `base` and of `f`, and the median of their per-sample
/// ratio `f / base`, over 11 samples taken back to back: other work on the machine
/// slows both sides of a ratio alike.
fn time_against(mut base: impl FnMut(u64), mut f: impl FnMut(u64)) -> (f64, f64, f64) {
    let (bi, fi) = (calibrate(&mut base), calibrate(&mut f));
    let (mut b, mut v, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..11 {
        let (x, y) = (sample(&mut base, bi), sample(&mut f, fi));
        b.push(x);
        v.push(y);
        r.push(y / x);
    }
    (median(b), median(v), median(r))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn shuffled(keys: &[String], rng: &mut SplitMix) -> Vec<String> {
    let mut v = keys.to_vec();
    for i in (1..v.len()).rev() {
        v.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    v
}

/// A tiny deterministic generator for made-up hashes and shuffling.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        out
    }
}
