//! What a person may do in their organization. The order is the order of power:
//! each role may do everything the one below it may.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A user's role in their organization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the organization's keys, usage, budgets and activity.
    Viewer,
    /// Also manages the keys of the projects they belong to.
    Member,
    /// Also manages every key, budget and webhook of the organization.
    Admin,
    /// Also manages users, roles and the organization's settings.
    Owner,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Member, Role::Admin, Role::Owner];

    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// Reads a stored or typed name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role includes everything `needed` may do.
    pub fn at_least(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_order_by_power() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        assert!(Role::Owner.at_least(Role::Admin));
        assert!(!Role::Viewer.at_least(Role::Member));
    }
}
