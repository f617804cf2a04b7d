//! Labels and the one label selector of leash, used by the cluster model (controller and
//! workload selectors), by the evaluator (NetworkPolicy selectors) and by the recommendation.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use leash_records::error::Chain;
use leash_records::names;

/// Labels of an object, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// The label every namespace carries with its own name (GA since Kubernetes 1.22).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One requirement of a label selector (`matchExpressions` entry).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator.
    pub operator: Operator,
    /// The values (sorted, deduplicated; empty for Exists / DoesNotExist).
    pub values: Vec<String>,
}

/// A label selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    /// The label is present with one of the values.
    In,
    /// The label is absent or has none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl Operator {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
            Self::Exists => "Exists",
            Self::DoesNotExist => "DoesNotExist",
        }
    }
}

/// A validated label selector: `matchLabels` AND every `matchExpressions` entry. The empty
/// selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSelector {
    /// Exact label matches.
    pub match_labels: Labels,
    /// Requirements, in the order they were given ([`Self::canonical`] sorts them).
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// A selector of exactly these labels.
    pub fn labels(labels: Labels) -> Self {
        Self {
            match_labels: labels,
            match_expressions: Vec::new(),
        }
    }

    /// Validates a Kubernetes label selector as the API server does (label keys and values,
    /// operators, value counts); `what` names it in errors (e.g. `spec.podSelector`).
    pub fn parse(sel: &meta::LabelSelector, what: &str) -> Result<Self, String> {
        let match_labels = sel.match_labels.clone().unwrap_or_default();
        for (k, v) in &match_labels {
            check_label_key(k).map_err(|e| format!("{what}.matchLabels: {e}"))?;
            check_label_value(v).map_err(|e| format!("{what}.matchLabels[{k}]: {e}"))?;
        }
        let mut match_expressions = Vec::new();
        for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
            let at = format!("{what}.matchExpressions[{i}]");
            check_label_key(&expr.key).map_err(|e| format!("{at}: {e}"))?;
            let mut values: Vec<String> = expr.values.iter().flatten().cloned().collect();
            values.sort();
            values.dedup();
            for v in &values {
                check_label_value(v).map_err(|e| format!("{at}.values: {e}"))?;
            }
            let operator = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "{at}: operator {} needs at least one value",
                        expr.operator
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!("{at}: operator {} takes no values", expr.operator));
                }
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(format!(
                        "{at}: unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ));
                }
            };
            match_expressions.push(Requirement {
                key: expr.key.clone(),
                operator,
                values,
            });
        }
        Ok(Self {
            match_labels,
            match_expressions,
        })
    }

    /// The same selector with its requirements sorted and deduplicated, so that equal
    /// selectors compare, hash and render equal.
    pub fn canonical(mut self) -> Self {
        self.match_expressions.sort();
        self.match_expressions.dedup();
        self
    }

    /// True when the selector has no terms (it selects everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let got = labels.get(&r.key);
                match r.operator {
                    Operator::In => got.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => got.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => got.is_some(),
                    Operator::DoesNotExist => got.is_none(),
                }
            })
    }

    /// The first `In` term (`matchLabels` entries come first): every object the selector
    /// matches carries `key` with one of `values`. Used to index policies.
    pub fn anchor(&self) -> Option<(&str, &[String])> {
        if let Some((k, v)) = self.match_labels.iter().next() {
            return Some((k.as_str(), std::slice::from_ref(v)));
        }
        self.match_expressions
            .iter()
            .find(|r| r.operator == Operator::In)
            .map(|r| (r.key.as_str(), r.values.as_slice()))
    }

    /// The Kubernetes form, with empty parts omitted.
    pub fn to_k8s(&self) -> meta::LabelSelector {
        meta::LabelSelector {
            match_labels: (!self.match_labels.is_empty()).then(|| self.match_labels.clone()),
            match_expressions: (!self.match_expressions.is_empty()).then(|| {
                self.match_expressions
                    .iter()
                    .map(|r| meta::LabelSelectorRequirement {
                        key: r.key.clone(),
                        operator: r.operator.as_str().to_owned(),
                        values: (!r.values.is_empty()).then(|| r.values.clone()),
                    })
                    .collect()
            }),
        }
    }

    /// The set-based form explanations print, e.g. `{app=web, tier in (a,b), !canary}`.
    pub fn braced(&self) -> impl fmt::Display + '_ {
        Braced(self)
    }
}

/// The report form: `app=web,tier In (a,b)`, or `{}` for the empty selector.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.match_labels {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        for r in &self.match_expressions {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(
                f,
                "{} {} ({})",
                r.key,
                r.operator.as_str(),
                r.values.join(",")
            )?;
        }
        if first {
            f.write_str("{}")?;
        }
        Ok(())
    }
}

/// See [`LabelSelector::braced`].
struct Braced<'a>(&'a LabelSelector);

impl fmt::Display for Braced<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let mut parts: Vec<String> = s
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &s.match_expressions {
            let (k, vs) = (&r.key, r.values.join(","));
            parts.push(match r.operator {
                Operator::In if r.values.len() == 1 => format!("{k}={vs}"),
                Operator::In => format!("{k} in ({vs})"),
                Operator::NotIn => format!("{k} notin ({vs})"),
                Operator::Exists => k.clone(),
                Operator::DoesNotExist => format!("!{k}"),
            });
        }
        write!(f, "{{{}}}", parts.join(", "))
    }
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters, with an optional DNS
/// subdomain prefix.
fn check_label_key(k: &str) -> Result<(), String> {
    names::label_key(k).map_err(|e| format!("invalid label key {k:?}: {}", Chain(&e)))
}

fn check_label_value(v: &str) -> Result<(), String> {
    names::label_value(v).map_err(|e| format!("invalid label value {v:?}: {}", Chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> meta::LabelSelector {
        meta::LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
            match_labels: None,
        }
    }

    #[test]
    fn selector_operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let none = labels(&[]);
        let m =
            |s: meta::LabelSelector, l: &Labels| LabelSelector::parse(&s, "s").unwrap().matches(l);
        assert!(m(expr("app", "In", &["web", "api"]), &l));
        assert!(!m(expr("app", "In", &["api"]), &l));
        assert!(!m(expr("app", "In", &["web"]), &none));
        assert!(m(expr("app", "NotIn", &["api"]), &l));
        assert!(!m(expr("app", "NotIn", &["web"]), &l));
        assert!(
            m(expr("app", "NotIn", &["web"]), &none),
            "NotIn matches a missing key"
        );
        assert!(m(expr("tier", "Exists", &[]), &l));
        assert!(!m(expr("tier", "Exists", &[]), &none));
        assert!(m(expr("tier", "DoesNotExist", &[]), &none));
        assert!(!m(expr("tier", "DoesNotExist", &[]), &l));
        assert!(
            m(meta::LabelSelector::default(), &none),
            "empty selector matches all"
        );
    }

    #[test]
    fn invalid_selectors_are_errors() {
        for (s, want) in [
            (expr("app", "In", &[]), "needs at least one value"),
            (expr("app", "NotIn", &[]), "needs at least one value"),
            (expr("app", "Exists", &["x"]), "takes no values"),
            (expr("app", "Equals", &["x"]), "unknown operator"),
            (expr("-bad", "Exists", &[]), "invalid label key"),
            (expr("Ex.com/a", "Exists", &[]), "invalid label key"),
            (expr("app", "In", &["bad value"]), "invalid label value"),
        ] {
            let err = LabelSelector::parse(&s, "spec.podSelector").unwrap_err();
            assert!(err.contains(want), "{err}");
            assert!(
                err.starts_with("spec.podSelector.matchExpressions[0]"),
                "{err}"
            );
        }
        assert!(LabelSelector::parse(&expr("example.com/app-x_y.z", "Exists", &[]), "s").is_ok());
    }

    #[test]
    fn both_printed_forms() {
        let mut sel = meta::LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            ..Default::default()
        };
        sel.match_expressions = Some(vec![
            LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["b".into(), "a".into()]),
            },
            LabelSelectorRequirement {
                key: "canary".into(),
                operator: "DoesNotExist".into(),
                values: None,
            },
        ]);
        let s = LabelSelector::parse(&sel, "s").unwrap();
        assert_eq!(s.braced().to_string(), "{app=web, tier in (a,b), !canary}");
        assert_eq!(
            s.canonical().to_string(),
            "app=web,canary DoesNotExist (),tier In (a,b)"
        );
        assert_eq!(LabelSelector::default().braced().to_string(), "{}");
        assert_eq!(LabelSelector::default().to_string(), "{}");
    }
}
