//! Common and breached passwords, embedded (being replaced by the full list
//! from a registry package; see issue 18).

use std::collections::HashSet;
use std::sync::LazyLock;

static LIST: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    [
        "password1234",
        "qwertyuiop",
        "iloveyou123",
        "passwordpassword",
        "123456789012345",
    ]
    .into_iter()
    .collect()
});

/// Whether a password (NFKC, lowercased) is on the list.
pub fn contains(candidate_nfkc_lowercase: &str) -> bool {
    LIST.contains(candidate_nfkc_lowercase)
}

/// How many entries the list holds.
pub fn len() -> usize {
    LIST.len()
}
