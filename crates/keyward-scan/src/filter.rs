//! Value checks applied after a rule's regex matched: entropy, placeholders,
//! documentation examples, and the extra checks generic rules must pass.

use memchr::memmem;

/// Shannon entropy of `bytes`, in bits per byte.
pub(crate) fn shannon_entropy(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let len = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum()
}

/// Well-known values published in provider documentation. They are not
/// secrets anyone can use, and flagging them trains people to ignore findings.
const DOCUMENTATION_VALUES: &[&[u8]] = &[
    b"AKIAIOSFODNN7EXAMPLE",
    b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    b"sk_test_4eC39HqLyjWDarjtT1zdp7dc",
    b"sk_test_BQokikJOvBiI2HlWgH4olfQ2",
    b"pk_test_TYooMQauvdEDq54NiTphI7jx",
    b"ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    b"gho_16C7e42F292c6912E7710c838347Ae178B4a",
];

/// Substrings (matched case-insensitively) that mark a value as a placeholder,
/// a template or an environment-variable reference rather than a secret.
const PLACEHOLDER_MARKERS: &[&[u8]] = &[
    b"example",
    b"xxxx",
    b"****",
    b"...",
    b"${",
    b"{{",
    b"<",
    b">",
    b"%s",
    b"process.env",
    b"os.environ",
    b"getenv",
    b"env[",
    b"env(",
    b"your_",
    b"your-",
    b"yourkey",
    b"yourtoken",
    b"yoursecret",
    b"placeholder",
    b"changeme",
    b"change_me",
    b"redacted",
    b"dummy",
    b"not-a-real",
    b"notreal",
    b"insert_",
    b"replace_me",
    b"replaceme",
];

/// Whole values (case-insensitive) that are stand-ins, not passwords.
const PLACEHOLDER_WORDS: &[&[u8]] = &[
    b"password",
    b"passwd",
    b"pass",
    b"secret",
    b"changeit",
    b"admin",
    b"root",
    b"test",
    b"user",
    b"username",
    b"pwd",
    b"token",
    b"guest",
    b"postgres",
    b"mysql",
    b"redis",
    b"rabbitmq",
    b"example",
    b"default",
    b"none",
    b"null",
    b"empty",
    b"foo",
    b"bar",
    b"password123",
    b"secret123",
    b"letmein",
];

/// Whether the secret is a known documentation value, a placeholder or an
/// environment reference.
pub(crate) fn is_placeholder(secret: &[u8]) -> bool {
    if DOCUMENTATION_VALUES.contains(&secret) {
        return true;
    }
    let lower = secret.to_ascii_lowercase();
    if PLACEHOLDER_WORDS.contains(&lower.as_slice()) {
        return true;
    }
    if PLACEHOLDER_MARKERS
        .iter()
        .any(|m| memmem::find(&lower, m).is_some())
    {
        return true;
    }
    if is_env_reference(secret) || is_stand_in(&lower) {
        return true;
    }
    // `aaaaaaaa`, `12121212`: too few distinct bytes to be random.
    let mut seen = [false; 256];
    let mut distinct = 0;
    for &b in secret {
        if !seen[b as usize] {
            seen[b as usize] = true;
            distinct += 1;
        }
    }
    secret.len() >= 8 && distinct <= 3
}

/// Words that stand-in passwords in documentation and samples are made of
/// (`mysecretpassword`, `yourpassword`, `supersecret`, `admin`, `hunter2`).
const STAND_IN_WORDS: &[&[u8]] = &[
    b"password",
    b"passwd",
    b"pass",
    b"pwd",
    b"word",
    b"secret",
    b"changeme",
    b"change",
    b"me",
    b"my",
    b"your",
    b"our",
    b"the",
    b"some",
    b"super",
    b"very",
    b"strong",
    b"new",
    b"old",
    b"db",
    b"database",
    b"app",
    b"user",
    b"admin",
    b"root",
    b"test",
    b"example",
    b"sample",
    b"demo",
    b"dev",
    b"local",
    b"default",
    b"dummy",
    b"fake",
    b"guest",
    b"pg",
    b"postgres",
    b"postgresql",
    b"mysql",
    b"mariadb",
    b"mongo",
    b"mongodb",
    b"redis",
    b"rabbitmq",
    b"sql",
    b"letmein",
    b"hunter",
    b"qwerty",
    b"tiger",
    b"welcome",
    b"foo",
    b"bar",
    b"baz",
    b"abc",
    b"here",
    b"put",
    b"enter",
    b"insert",
    b"replace",
];

/// Whether a value is made only of stand-in words once common letter
/// substitutions (`pa$$w0rd`, `p4ssw0rd`, `s3cr3t`) are undone and trailing
/// digits and punctuation (`password123!`) dropped: a placeholder in a
/// sample, not a credential (issue 17, item 5). Random values never split
/// into these words; a real password that does is a weak one we accept to
/// miss.
fn is_stand_in(lower: &[u8]) -> bool {
    if lower.len() > 48 {
        return false;
    }
    let plain: Vec<u8> = lower
        .iter()
        .map(|&b| match b {
            b'$' | b'5' => b's',
            b'@' | b'4' => b'a',
            b'0' => b'o',
            b'1' | b'!' => b'i',
            b'3' => b'e',
            b'7' => b't',
            _ => b,
        })
        .collect();
    // Trailing digits and punctuation, judged on the original value (a
    // trailing `1` or `!` is a suffix, not an `i`).
    let stem_len = lower.len()
        - lower
            .iter()
            .rev()
            .take_while(|b| !b.is_ascii_alphabetic() && !matches!(b, b'$' | b'@'))
            .count();
    let stem: Vec<u8> = plain[..stem_len]
        .iter()
        .copied()
        .filter(|&b| b != b'_' && b != b'-' && b != b'.')
        .collect();
    if stem.is_empty() || !stem.iter().all(u8::is_ascii_lowercase) {
        return false;
    }
    // Whether `stem[..i]` splits into stand-in words, for each `i`.
    let mut splits = vec![false; stem.len() + 1];
    splits[0] = true;
    for end in 1..=stem.len() {
        splits[end] = STAND_IN_WORDS
            .iter()
            .any(|w| w.len() <= end && splits[end - w.len()] && stem[end - w.len()..end] == **w);
    }
    splits[stem.len()]
}

/// `$DB_PASSWORD`, `$(cat secret)`, `%DB_PASSWORD%`: a reference to where
/// the value is, not the value.
fn is_env_reference(secret: &[u8]) -> bool {
    let name =
        |s: &[u8]| !s.is_empty() && s.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_');
    match secret {
        [b'$', b'(', .., b')'] => true,
        [b'$', rest @ ..] => name(rest),
        [b'%', rest @ .., b'%'] => name(rest),
        _ => false,
    }
}

/// Token formats whose last six characters are a CRC32 of the random part
/// (`crc32-base62`): prefix and length of the alphanumeric body after it.
const CHECKSUMMED_FORMATS: &[(&[u8], usize)] = &[
    (b"kwk_", 38),
    (b"kwe_", 38),
    (b"kwa_", 38),
    (b"ghp_", 36),
    (b"gho_", 36),
    (b"ghu_", 36),
    (b"ghs_", 36),
    (b"npm_", 36),
];

/// Whether `secret` has the shape of a checksummed token format but its
/// checksum fails: a placeholder or a typo, not a credential, so no rule
/// (generic ones included) may report it (issue 17, item 5).
pub(crate) fn fails_known_checksum(secret: &[u8]) -> bool {
    CHECKSUMMED_FORMATS.iter().any(|&(prefix, len)| {
        secret.len() == prefix.len() + len
            && secret[..prefix.len()].eq_ignore_ascii_case(prefix)
            && secret[prefix.len()..].iter().all(u8::is_ascii_alphanumeric)
            && !crate::rules::ValidatorKind::Crc32Base62.validate(secret)
    })
}

/// Extra checks for generic rules ("some key = some value"): the value must
/// look random, not like code, a path, a URL, a version or prose.
pub(crate) fn generic_value_ok(secret: &[u8]) -> bool {
    if secret.len() < 12 {
        return false;
    }
    let digits = secret.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = secret.iter().filter(|b| b.is_ascii_alphabetic()).count();
    if digits == 0 || letters == 0 {
        return false;
    }
    // Identifiers, dotted names, paths and URLs.
    if secret.starts_with(b"http") || secret.contains(&b' ') || secret.starts_with(b"/") {
        return false;
    }
    let lower = secret.to_ascii_lowercase();
    // A value naming what it is (`sha256_password`, `secret1`, `my-token-v2`)
    // is a label, not the secret.
    if [
        &b"password"[..],
        b"passwd",
        b"secret",
        b"token",
        b"apikey",
        b"api_key",
    ]
    .iter()
    .any(|w| memmem::find(&lower, w).is_some())
    {
        return false;
    }
    // Hex digests of files and lock entries are rarely secrets in assignments
    // named like these, but hex API keys are common: keep hex, drop UUIDs,
    // which are mostly ids.
    if looks_like_uuid(&lower) {
        return false;
    }
    // A run of lowercase words joined by separators (`my_secret_key_name_2`).
    let separators = secret
        .iter()
        .filter(|&&b| b == b'_' || b == b'-' || b == b'.')
        .count();
    if separators >= 2 && digits <= 2 {
        return false;
    }
    // camelCase or snake_case identifiers: few digits, mostly lowercase.
    let upper = secret.iter().filter(|b| b.is_ascii_uppercase()).count();
    if digits * 10 < secret.len() && upper * 5 < secret.len() && !is_hex(&lower) {
        return false;
    }
    true
}

fn is_hex(lower: &[u8]) -> bool {
    lower.iter().all(|b| b.is_ascii_hexdigit())
}

fn looks_like_uuid(lower: &[u8]) -> bool {
    lower.len() == 36
        && lower.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_bounds() {
        assert_eq!(shannon_entropy(b"aaaa"), 0.0);
        assert!((shannon_entropy(b"abcd") - 2.0).abs() < 1e-9);
    }

    #[test]
    fn placeholders() {
        for p in [
            &b"AKIAIOSFODNN7EXAMPLE"[..],
            b"sk-proj-xxxxxxxxxxxxxxxxxxxxxxxx",
            b"${OPENAI_API_KEY}",
            b"<your-key>",
            b"process.env.OPENAI_API_KEY",
            b"aaaaaaaaaaaaaaaa",
            b"pa$$word",
            b"P@ssw0rd1!",
            b"mysecretpassword",
            b"YOUR_PASSWORD",
            b"s3cr3t",
            b"hunter2",
            b"$DB_PASSWORD",
            b"%DB_PASSWORD%",
        ] {
            assert!(is_placeholder(p), "{}", String::from_utf8_lossy(p));
        }
        for real in [
            &b"sk-proj-8fK2mQ9xLp4RtZ7wVb3NcY6h"[..],
            b"Zq8PidONxwlCt2D",
            b"h7Kp2xQw9LmZ4tRb",
            b"correcthorsebatterystaple",
            b"$DB_PASSWORD-and-more",
        ] {
            assert!(!is_placeholder(real), "{}", String::from_utf8_lossy(real));
        }
    }

    #[test]
    fn generic_values() {
        assert!(generic_value_ok(b"8fK2mQ9xLp4RtZ7wVb3NcY6h"));
        assert!(generic_value_ok(b"3f9a0c7e1b2d4f6a8c0e2b4d6f8a0c1e"));
        assert!(!generic_value_ok(b"my_secret_key_name"));
        assert!(!generic_value_ok(b"getUserAccessToken"));
        assert!(!generic_value_ok(b"123e4567-e89b-12d3-a456-426614174000"));
        assert!(!generic_value_ok(b"https://example.org/x1"));
        assert!(!generic_value_ok(b"sha256_password"));
    }
}
