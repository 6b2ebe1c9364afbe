//! The policy file: what an operator writes. [`crate::compile`] turns it into the form the
//! gateway evaluates; everything here is plain data that serde fills in.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A whole policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Places data may be stored. At most 64.
    pub regions: Vec<RegionPolicy>,
    /// Known tenants.
    #[serde(default)]
    pub tenants: Vec<TenantPolicy>,
    /// What happens to a tenant the policy does not list. Default: refused.
    #[serde(default)]
    pub unknown_tenants: UnknownTenants,
    /// Data classes by name, each narrowing where data of that class may go.
    #[serde(default)]
    pub classes: BTreeMap<String, ClassPolicy>,
    /// Label rules, evaluated for every series of every tenant they apply to.
    #[serde(default)]
    pub rules: Vec<RulePolicy>,
    /// Key for `hash_label` (at least 16 bytes). Required when a rule hashes. Whoever holds
    /// it can test guesses against hashed values, so keep the policy file private.
    #[serde(default)]
    pub hash_key: Option<String>,
}

/// One entry of `regions:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionPolicy {
    /// Region id.
    pub id: String,
    /// Legal jurisdiction, for people and for `classes[].jurisdictions` (e.g. `EU`, `CN`).
    pub jurisdiction: String,
    /// Labels added to every series stored in this region.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// One entry of `tenants:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPolicy {
    /// Tenant id.
    pub id: String,
    /// Where its data goes first.
    pub home: String,
    /// Regions its data may reach, in failover order. Default: the home region only. When
    /// given, it must start with the home region.
    #[serde(default)]
    pub allowed: Vec<String>,
    /// Data class of a series no `classify` rule matched. Default: none (the tenant's whole
    /// allowed list applies).
    #[serde(default)]
    pub default_class: Option<String>,
}

/// `unknown_tenants:`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "action")]
pub enum UnknownTenants {
    /// Refuse requests of tenants the policy does not list.
    #[default]
    Deny,
    /// Treat them as if listed with this home and allowed list.
    Allow {
        /// Home region.
        home: String,
        /// Allowed regions in failover order; default the home region only.
        #[serde(default)]
        allowed: Vec<String>,
    },
}

/// One entry of `classes:`: where data of the class may go, as a narrowing of the tenant's
/// allowed regions (never a widening).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassPolicy {
    /// `home`: the tenant's home region only; `allowed`: the tenant's allowed list;
    /// `jurisdiction`: allowed regions with the home region's jurisdiction.
    #[serde(default)]
    pub scope: ClassScope,
    /// When given, additionally only these regions.
    #[serde(default)]
    pub regions: Option<Vec<String>>,
}

/// See [`ClassPolicy::scope`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassScope {
    /// The tenant's allowed list.
    #[default]
    Allowed,
    /// Allowed regions in the home region's jurisdiction.
    Jurisdiction,
    /// The home region only.
    Home,
}

/// One entry of `rules:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulePolicy {
    /// Name shown in decisions, logs and metrics. Default `rules[<index>]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Tenants it applies to; default all.
    #[serde(default)]
    pub tenants: Option<Vec<String>>,
    /// Which label it looks at.
    #[serde(rename = "match")]
    pub matcher: MatchPolicy,
    /// What it does when a label matches.
    pub action: ActionPolicy,
    /// Data class, for `action: classify`.
    #[serde(default)]
    pub class: Option<String>,
    /// Reason given to the client, for `deny_series` and `deny_request`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `rules[].match`: a series matches when one of its labels matches both parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchPolicy {
    /// The label name.
    pub name: StringMatch,
    /// The label value; default any value.
    #[serde(default)]
    pub value: Option<StringMatch>,
}

/// A string matcher: a bare string is an exact match.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringMatch {
    /// Exact.
    Exact(String),
    /// One of the forms.
    Form(StringMatchForm),
}

/// `{exact: ...}`, `{prefix: ...}` or `{regex: ...}` (anchored at both ends, as in PromQL).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum StringMatchForm {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Matches the whole string.
    Regex(String),
}

/// `rules[].action`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionPolicy {
    /// Put the series in `class`, narrowing its regions.
    Classify,
    /// Remove the matching label.
    DropLabel,
    /// Replace the matching label's value by a keyed hash.
    HashLabel,
    /// Drop the series (counted), keep the rest of the request.
    DenySeries,
    /// Refuse the whole request with 403 and `reason`.
    DenyRequest,
}

impl Policy {
    /// Parses YAML. `serde_yaml`'s message names the line and column of a shape error.
    pub fn from_yaml(text: &str) -> Result<Policy, serde_yaml::Error> {
        serde_yaml::from_str(text)
    }
}
