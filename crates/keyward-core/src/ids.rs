//! Typed ids. Every id is a short type prefix plus 16 random base62 characters
//! (about 95 bits), so ids cannot be enumerated and one kind cannot be passed where
//! another is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random id.
            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, crate::base62::random(16)))
            }

            /// Accepts an id read from storage or a request; `None` when it is not of this kind.
            pub fn parse(s: &str) -> Option<Self> {
                let rest = s.strip_prefix($prefix)?.strip_prefix('_')?;
                (!rest.is_empty() && rest.len() <= 64 && crate::base62::is_base62(rest))
                    .then(|| Self(s.to_owned()))
            }

            /// Wraps an id already known to be valid (read back from our own storage).
            pub fn from_trusted(s: String) -> Self {
                Self(s)
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

typed_id!(
    /// An organization.
    OrgId, "org"
);
typed_id!(
    /// A project inside an organization.
    ProjectId, "prj"
);
typed_id!(
    /// A key record (stable across rotations).
    KeyId, "key"
);
typed_id!(
    /// An audit event.
    AuditId, "aud"
);

typed_id!(
    /// A report that a key was found exposed.
    LeakReportId, "leak"
);
typed_id!(
    /// A webhook endpoint that receives signed event notifications.
    WebhookId, "whk"
);
typed_id!(
    /// An email address that receives event notifications.
    RecipientId, "rcp"
);
typed_id!(
    /// One notification to one webhook or recipient, with its attempts.
    DeliveryId, "dlv"
);
typed_id!(
    /// An event that notifications are about (stable across retries).
    EventId, "evt"
);
typed_id!(
    /// A person's account.
    UserId, "usr"
);
typed_id!(
    /// A signed-in session (its public id; the bearer secret is separate).
    SessionId, "ses"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_kinds() {
        let k = KeyId::generate();
        assert!(k.as_str().starts_with("key_"));
        assert_eq!(KeyId::parse(k.as_str()), Some(k.clone()));
        assert_eq!(ProjectId::parse(k.as_str()), None);
        assert_eq!(KeyId::parse("key_"), None);
        assert_eq!(KeyId::parse("key_a/b"), None);
    }
}
