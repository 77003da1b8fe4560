//! The path of a `/v1` request, checked once so that the path the endpoint
//! policy matches is the path the upstream receives.
//!
//! Decision: paths are refused, never normalised. A path with a dot segment
//! (`/v1/models/../files`), an encoded slash, dot, backslash or percent sign
//! (`%2F`, `%2e%2e`, `%5C`, `%25`), a character that some server may read as a
//! separator (`\`, `;`) or an empty segment is answered 400 before any policy
//! check; every other path is forwarded byte for byte as it was checked. No
//! OpenAI path needs any of these, and a path we refuse cannot be read one way by
//! the policy and another by the upstream (or by a proxy in front of it). A
//! path that holds something shaped like a keyward key is refused too, so that no
//! key reaches the upstream URL (or the usage log) through it.
//!
//! The check is one pass over the path's bytes with a table lookup per byte and
//! no allocation: it runs on every proxied request.

use crate::error::GatewayError;

/// Why a path was refused. The message never repeats the path: it may hold a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathRefusal {
    /// A `.` or `..` segment (or one of dots only).
    DotSegment,
    /// `//` inside the path.
    EmptySegment,
    /// A percent-escape that decodes to something that could change the path
    /// (`/`, `.`, `\`, `%`, `;`, `?`, `#`, a control or non-ASCII byte), or a
    /// malformed one.
    Encoded,
    /// A byte outside the characters OpenAI's paths use.
    Character,
    /// Text shaped like a keyward key.
    Key,
}

impl From<PathRefusal> for GatewayError {
    fn from(r: PathRefusal) -> Self {
        let why = match r {
            PathRefusal::DotSegment => "a `.` or `..` segment",
            PathRefusal::EmptySegment => "an empty segment (`//`)",
            PathRefusal::Encoded => {
                "a percent-encoded `/`, `.`, `\\`, `%`, `;`, `?`, `#`, control or non-ASCII character"
            }
            PathRefusal::Character => "a character that is not allowed in a path",
            PathRefusal::Key => {
                "what looks like a keyward key (send keys in the Authorization header, never in a URL)"
            }
        };
        GatewayError::BadRequest(format!(
            "The request path is not accepted: it contains {why}. The gateway refuses paths that could be read differently after decoding or normalising."
        ))
    }
}

/// What a path byte may be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Refused.
    No,
    /// Allowed as is.
    Plain,
    /// `/`.
    Slash,
    /// `.`.
    Dot,
    /// `%`: an escape follows.
    Percent,
    /// `_`: maybe the end of a key prefix.
    Underscore,
}

/// The class of each byte: RFC 3986 unreserved characters, `/`, `%`, and the
/// sub-delimiters and `:`/`@` that model ids use (`ft:gpt-4o-mini:org::id`),
/// except `;` (path parameters, which some servers strip before normalising:
/// `..;/`).
const CLASSES: [Class; 256] = {
    let mut t = [Class::No; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() {
            t[b] = Class::Plain;
        }
        b += 1;
    }
    let plain = b"-~:@!$&'()*+,=";
    let mut i = 0;
    while i < plain.len() {
        t[plain[i] as usize] = Class::Plain;
        i += 1;
    }
    t[b'/' as usize] = Class::Slash;
    t[b'.' as usize] = Class::Dot;
    t[b'%' as usize] = Class::Percent;
    t[b'_' as usize] = Class::Underscore;
    t
};

/// May a percent-escape decode to `b`? Only to bytes that are plain in a path
/// (a space too), never to a separator, a dot or another escape.
fn decodes_harmlessly(b: u8) -> bool {
    b == b' ' || (b != b'.' && CLASSES[b as usize] == Class::Plain)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Checks a request path (without its query); `stem` is the deployment's key
/// prefix stem (`kw`), whose `<stem>k_`, `<stem>e_` and `<stem>a_` start a key.
pub fn check(path: &str, stem: &str) -> Result<(), PathRefusal> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathRefusal::Character);
    }
    // Start of the current segment and whether it has been only dots so far.
    let mut segment_start = 1;
    let mut only_dots = true;
    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        match CLASSES[b as usize] {
            Class::No => return Err(PathRefusal::Character),
            Class::Plain => only_dots = false,
            Class::Dot => {}
            Class::Underscore => {
                only_dots = false;
                if key_prefix_ends_at(bytes, i, stem.as_bytes()) {
                    return Err(PathRefusal::Key);
                }
            }
            Class::Percent => {
                let decoded = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| (h << 4) | l),
                    _ => None,
                };
                match decoded {
                    Some(d) if decodes_harmlessly(d) => {}
                    _ => return Err(PathRefusal::Encoded),
                }
                only_dots = false;
                i += 2;
            }
            Class::Slash => {
                end_segment(i - segment_start, only_dots)?;
                segment_start = i + 1;
                only_dots = true;
            }
        }
        i += 1;
    }
    // A trailing slash (an empty last segment) is how some clients list things.
    if segment_start < bytes.len() && only_dots {
        return Err(PathRefusal::DotSegment);
    }
    Ok(())
}

fn end_segment(len: usize, only_dots: bool) -> Result<(), PathRefusal> {
    match (len, only_dots) {
        (0, _) => Err(PathRefusal::EmptySegment),
        (_, true) => Err(PathRefusal::DotSegment),
        _ => Ok(()),
    }
}

/// Does `bytes[..=underscore]` end with `<stem>k_`, `<stem>e_` or `<stem>a_`?
pub(crate) fn key_prefix_ends_at(bytes: &[u8], underscore: usize, stem: &[u8]) -> bool {
    underscore > stem.len()
        && matches!(bytes[underscore - 1], b'k' | b'e' | b'a')
        && &bytes[underscore - 1 - stem.len()..underscore - 1] == stem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_openai_uses_pass() {
        for path in [
            "/v1",
            "/v1/",
            "/v1/chat/completions",
            "/v1/models/gpt-4o-mini",
            "/v1/models/ft:gpt-4o-mini:acme:custom_suffix:9abc",
            "/v1/models/ft%3Agpt-4o-mini%3Aacme",
            "/v1/files/file-abc123/content",
            "/v1/models/gpt-4o-mini-2024-07-18",
            "/v1/models/a.b",
            "/v1/models/...x",
        ] {
            assert_eq!(check(path, "kw"), Ok(()), "{path}");
        }
    }

    #[test]
    fn paths_that_could_change_after_decoding_are_refused() {
        use PathRefusal::*;
        for (path, why) in [
            ("/v1/models/../files", DotSegment),
            ("/v1/models/..", DotSegment),
            ("/v1/./models", DotSegment),
            ("/v1/models/.", DotSegment),
            ("/v1/models/.../files", DotSegment),
            ("/v1/models/../../dashboard/billing/usage", DotSegment),
            ("/v1/models/%2e%2e/files", Encoded),
            ("/v1/models/%2E%2E/files", Encoded),
            ("/v1/models/..%2ffiles", Encoded),
            ("/v1/models/x%2Ffiles", Encoded),
            ("/v1/models/x%5Cfiles", Encoded),
            ("/v1/models/%252e%252e/files", Encoded),
            ("/v1/models/x%00", Encoded),
            ("/v1/models/x%C0%AE", Encoded),
            ("/v1/models/x%3F", Encoded),
            ("/v1/models/x%2", Encoded),
            ("/v1/models/x%zz", Encoded),
            ("/v1/models/..;/files", Character),
            ("/v1/models/x\\..\\files", Character),
            ("/v1/models/x\"", Character),
            ("/v1//files", EmptySegment),
            ("/v1/models/kwk_abc", Key),
            ("/v1/models/x-kwa_", Key),
        ] {
            assert_eq!(check(path, "kw"), Err(why), "{path}");
        }
        assert_eq!(check("/v1/models/acmek_x", "acme"), Err(Key));
        assert_eq!(check("/v1/models/kwk_x", "acme"), Ok(()));
    }
}
