//! RBAC as a set of single grants, to compare a ClusterRole with the API access the code
//! declares ([`ApiAccess`]).

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::rbac::v1::PolicyRule;
use leash_records::access::ApiAccess;

/// One verb on one resource of one API group (`""` is the core group).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    /// The API group.
    pub group: String,
    /// The plural resource name.
    pub resource: String,
    /// The verb.
    pub verb: String,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)
    }
}

/// A rule shape the comparison cannot express, reported rather than silently widened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The rule grants non-resource URLs (e.g. `/metrics`), which no code declares.
    #[error("rule {index}: grants non-resource URLs {urls:?}")]
    NonResourceUrls {
        /// 0-based rule index.
        index: usize,
        /// The URLs.
        urls: Vec<String>,
    },
    /// The rule restricts to named objects, which the declarations cannot express.
    #[error("rule {index}: restricts to resourceNames {names:?}")]
    ResourceNames {
        /// 0-based rule index.
        index: usize,
        /// The names.
        names: Vec<String>,
    },
}

/// Expands policy rules into single grants (wildcards stay `*`, so they show up as extra).
pub fn grants_of_rules(rules: &[PolicyRule]) -> Result<BTreeSet<Grant>, RuleError> {
    let mut out = BTreeSet::new();
    for (index, rule) in rules.iter().enumerate() {
        if let Some(urls) = rule.non_resource_urls.as_ref().filter(|u| !u.is_empty()) {
            return Err(RuleError::NonResourceUrls {
                index,
                urls: urls.clone(),
            });
        }
        if let Some(names) = rule.resource_names.as_ref().filter(|n| !n.is_empty()) {
            return Err(RuleError::ResourceNames {
                index,
                names: names.clone(),
            });
        }
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert(Grant {
                        group: group.clone(),
                        resource: resource.clone(),
                        verb: verb.clone(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Expands declared API access into single grants.
pub fn grants_of_access<'a>(access: impl IntoIterator<Item = &'a ApiAccess>) -> BTreeSet<Grant> {
    access
        .into_iter()
        .flat_map(|a| {
            a.verbs.iter().map(|verb| Grant {
                group: a.group.to_owned(),
                resource: a.resource.to_owned(),
                verb: (*verb).to_owned(),
            })
        })
        .collect()
}

/// What a role grants beyond the declared access (`extra`) and what it lacks (`missing`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantDiff {
    /// Granted but not used by the code.
    pub extra: Vec<Grant>,
    /// Used by the code but not granted.
    pub missing: Vec<Grant>,
}

impl GrantDiff {
    /// Compares a role's grants with the declared ones.
    pub fn between(role: &BTreeSet<Grant>, declared: &BTreeSet<Grant>) -> Self {
        Self {
            extra: role.difference(declared).cloned().collect(),
            missing: declared.difference(role).cloned().collect(),
        }
    }

    /// Whether the role grants exactly what is declared.
    pub fn is_empty(&self) -> bool {
        self.extra.is_empty() && self.missing.is_empty()
    }
}

impl fmt::Display for GrantDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |g: &[Grant]| {
            g.iter()
                .map(Grant::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "granted but not declared by the code: [{}]; declared but not granted: [{}]",
            list(&self.extra),
            list(&self.missing)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
        let own = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        PolicyRule {
            api_groups: Some(own(groups)),
            resources: Some(own(resources)),
            verbs: own(verbs),
            ..PolicyRule::default()
        }
    }

    #[test]
    fn rules_and_declarations_expand_to_the_same_grants() {
        let rules = [
            rule(&[""], &["pods", "nodes"], &["list", "watch"]),
            rule(&["apps"], &["deployments"], &["list"]),
        ];
        const DECLARED: &[ApiAccess] = &[
            ApiAccess {
                group: "",
                resource: "nodes",
                verbs: &["watch", "list"],
            },
            ApiAccess {
                group: "",
                resource: "pods",
                verbs: &["list", "watch"],
            },
            ApiAccess {
                group: "apps",
                resource: "deployments",
                verbs: &["list"],
            },
        ];
        let role = grants_of_rules(&rules).expect("plain rules");
        assert_eq!(role.len(), 5);
        assert!(GrantDiff::between(&role, &grants_of_access(DECLARED)).is_empty());
    }

    #[test]
    fn extra_and_missing_grants_are_named() {
        let role = grants_of_rules(&[rule(&[""], &["pods", "*"], &["get"])]).expect("plain");
        const DECLARED: &[ApiAccess] = &[ApiAccess {
            group: "",
            resource: "pods",
            verbs: &["get", "watch"],
        }];
        let diff = GrantDiff::between(&role, &grants_of_access(DECLARED));
        assert_eq!(
            diff.extra.iter().map(Grant::to_string).collect::<Vec<_>>(),
            ["get core/*"]
        );
        assert_eq!(
            diff.missing
                .iter()
                .map(Grant::to_string)
                .collect::<Vec<_>>(),
            ["watch core/pods"]
        );
        assert!(diff.to_string().contains("get core/*"), "{diff}");
    }

    #[test]
    fn resource_names_and_non_resource_urls_are_rejected() {
        let mut r = rule(&[""], &["pods"], &["get"]);
        r.resource_names = Some(vec!["one".into()]);
        assert!(matches!(
            grants_of_rules(&[r]),
            Err(RuleError::ResourceNames { index: 0, .. })
        ));
        let r = PolicyRule {
            non_resource_urls: Some(vec!["/metrics".into()]),
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        };
        assert!(matches!(
            grants_of_rules(&[rule(&[""], &["pods"], &["get"]), r]),
            Err(RuleError::NonResourceUrls { index: 1, .. })
        ));
    }
}
