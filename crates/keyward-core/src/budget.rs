//! Budgets: an amount per period on an organization, a project or a key.

use crate::money::Micros;
use serde::{Deserialize, Serialize};

/// What a budget is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "scope", content = "id", rename_all = "lowercase")]
pub enum BudgetScope {
    /// An organization (all its projects).
    Org(String),
    /// A project (all its keys).
    Project(String),
    /// One key (and the ephemeral tokens derived from it).
    Key(String),
}

impl BudgetScope {
    /// `org`, `project` or `key`.
    pub fn kind(&self) -> &'static str {
        match self {
            BudgetScope::Org(_) => "org",
            BudgetScope::Project(_) => "project",
            BudgetScope::Key(_) => "key",
        }
    }

    /// The id of the scoped object.
    pub fn id(&self) -> &str {
        match self {
            BudgetScope::Org(id) | BudgetScope::Project(id) | BudgetScope::Key(id) => id,
        }
    }

    /// Rebuilds a scope from storage.
    pub fn from_parts(kind: &str, id: String) -> Option<Self> {
        match kind {
            "org" => Some(BudgetScope::Org(id)),
            "project" => Some(BudgetScope::Project(id)),
            "key" => Some(BudgetScope::Key(id)),
            _ => None,
        }
    }
}

/// How often a budget starts over (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// Calendar month.
    Month,
    /// Calendar day.
    Day,
    /// Never: a lifetime budget.
    None,
}

impl Period {
    /// Parses `month`, `day` or `none`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "month" => Some(Period::Month),
            "day" => Some(Period::Day),
            "none" => Some(Period::None),
            _ => None,
        }
    }

    /// Name used in storage and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Month => "month",
            Period::Day => "day",
            Period::None => "none",
        }
    }

    /// Start of the period containing `now_ms` (0 for a lifetime budget).
    pub fn start(self, now_ms: i64) -> i64 {
        match self {
            Period::None => 0,
            Period::Day => crate::clock::day_start(now_ms),
            Period::Month => {
                let (y, m, _) = civil_from_days(now_ms.div_euclid(86_400_000));
                days_from_civil(y, m, 1) * 86_400_000
            }
        }
    }
}

/// A spending limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// What it limits.
    #[serde(flatten)]
    pub scope: BudgetScope,
    /// The limit per period.
    pub amount_micros: Micros,
    /// When it starts over.
    pub period: Period,
    /// Percentages of the amount at which an alert is recorded once per period.
    pub soft_thresholds: Vec<u32>,
}

impl Budget {
    /// Default soft alert thresholds.
    pub const DEFAULT_THRESHOLDS: [u32; 3] = [50, 80, 100];
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's civil calendar algorithms).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_starts_are_utc_calendar_boundaries() {
        // 2026-11-26T18:15:03.123Z
        let t = 1_795_716_903_123;
        assert_eq!(Period::Day.start(t), 1_795_651_200_000); // 2026-11-26T00:00Z
        assert_eq!(Period::Month.start(t), 1_793_491_200_000); // 2026-11-01T00:00Z
        assert_eq!(Period::None.start(t), 0);
        // 2024-02-29 (leap day) is in February.
        assert_eq!(Period::Month.start(1_709_208_000_000), 1_706_745_600_000);
    }

    #[test]
    fn scope_round_trips() {
        let s = BudgetScope::Project("prj_x".into());
        assert_eq!(BudgetScope::from_parts(s.kind(), s.id().into()), Some(s));
        assert_eq!(BudgetScope::from_parts("team", "x".into()), None);
    }
}
