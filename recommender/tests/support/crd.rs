//! A strict validator of objects against a CRD's published `openAPIV3Schema` (the copies in
//! the repository's sibling `shared/schemas/`): `type`, `properties`, `required`, `enum`,
//! `pattern`, `minLength`/`maxLength`, `minimum`/`maximum`, `minItems`/`maxItems`, `items`,
//! `oneOf`, `additionalProperties`, `format: cidr` and `int32`, `x-kubernetes-int-or-string`.
//!
//! Stricter than the API server on purpose: an object schema with `properties` rejects every
//! other field (the server would drop it silently), unless it declares
//! `additionalProperties` or `x-kubernetes-preserve-unknown-fields`. `oneOf` branches are
//! constraints only (their `properties` list no complete shape), so they reject nothing as
//! unknown. An object schema with neither (`metadata`) accepts any fields, as the CRD says.

use std::path::PathBuf;

use serde_json::Value;

/// The `openAPIV3Schema` of version `version` of the CRD file `file` of `shared/schemas/`,
/// found next to the repository root (or one of its ancestors: a git worktree's root sits
/// deeper than the main checkout's).
pub fn schema(file: &str, version: &str) -> Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = root
        .ancestors()
        .map(|a| a.join("shared/schemas").join(file))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("shared/schemas/{file} next to {}", root.display()));
    let text = std::fs::read_to_string(&path).expect("reads the CRD");
    let crd: Value = serde_norway::from_str(&text).expect("the CRD is YAML");
    crd["spec"]["versions"]
        .as_array()
        .expect("spec.versions")
        .iter()
        .find(|v| v["name"] == version)
        .map(|v| v["schema"]["openAPIV3Schema"].clone())
        .unwrap_or_else(|| panic!("{file} has version {version}"))
}

/// The CiliumNetworkPolicy CRD's `v2` schema.
pub fn cilium_network_policy() -> Value {
    schema("cilium.io_ciliumnetworkpolicies.yaml", "v2")
}

/// Every violation of `schema` by `value`, as `path: what`; empty when it is valid.
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, "$", true, &mut errors);
    errors
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => false,
    }
}

fn check(s: &Value, v: &Value, path: &str, strict: bool, errors: &mut Vec<String>) {
    let int_or_string = s["x-kubernetes-int-or-string"] == Value::Bool(true);
    if int_or_string {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errors.push(format!("{path}: not an integer or a string"));
        }
    } else if let Some(ty) = s["type"].as_str()
        && !type_ok(ty, v)
    {
        errors.push(format!("{path}: expected {ty}, got {v}"));
        return;
    }
    if let Some(options) = s["enum"].as_array()
        && !options.contains(v)
    {
        errors.push(format!("{path}: {v} is not one of {options:?}"));
    }
    if let Some(text) = v.as_str() {
        let chars = text.chars().count() as u64;
        if let Some(max) = s["maxLength"].as_u64()
            && chars > max
        {
            errors.push(format!("{path}: longer than {max}"));
        }
        if let Some(min) = s["minLength"].as_u64()
            && chars < min
        {
            errors.push(format!("{path}: shorter than {min}"));
        }
        if let Some(p) = s["pattern"].as_str() {
            let re = regex::Regex::new(p).unwrap_or_else(|e| panic!("pattern {p}: {e}"));
            if !re.is_match(text) {
                errors.push(format!("{path}: {text:?} does not match {p}"));
            }
        }
        if s["format"] == "cidr" && text.parse::<ipnet::IpNet>().is_err() {
            errors.push(format!("{path}: {text:?} is not a CIDR"));
        }
    }
    if let Some(n) = v.as_i64() {
        if let Some(max) = s["maximum"].as_i64()
            && n > max
        {
            errors.push(format!("{path}: {n} > {max}"));
        }
        if let Some(min) = s["minimum"].as_i64()
            && n < min
        {
            errors.push(format!("{path}: {n} < {min}"));
        }
        if s["format"] == "int32" && i32::try_from(n).is_err() {
            errors.push(format!("{path}: {n} is not an int32"));
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(max) = s["maxItems"].as_u64()
            && items.len() as u64 > max
        {
            errors.push(format!("{path}: more than {max} items"));
        }
        if let Some(min) = s["minItems"].as_u64()
            && (items.len() as u64) < min
        {
            errors.push(format!("{path}: fewer than {min} items"));
        }
        if s["items"].is_object() {
            for (i, item) in items.iter().enumerate() {
                check(&s["items"], item, &format!("{path}[{i}]"), strict, errors);
            }
        }
    }
    if let Some(obj) = v.as_object() {
        for r in s["required"].as_array().into_iter().flatten() {
            if let Some(k) = r.as_str()
                && !obj.contains_key(k)
            {
                errors.push(format!("{path}: missing required {k}"));
            }
        }
        let props = s["properties"].as_object();
        let preserve = s["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true);
        for (k, child) in obj {
            let at = format!("{path}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(ps, child, &at, strict, errors),
                None => match &s["additionalProperties"] {
                    Value::Object(_) => {
                        check(&s["additionalProperties"], child, &at, strict, errors)
                    }
                    Value::Bool(false) => errors.push(format!("{at}: unknown field")),
                    _ if props.is_some() && strict && !preserve => {
                        errors.push(format!("{at}: unknown field"));
                    }
                    _ => {}
                },
            }
        }
    }
    if let Some(branches) = s["oneOf"].as_array() {
        let passing = branches
            .iter()
            .filter(|b| {
                let mut e = Vec::new();
                check(b, v, path, false, &mut e);
                e.is_empty()
            })
            .count();
        if passing != 1 {
            errors.push(format!(
                "{path}: matches {passing} of the oneOf branches, not exactly one"
            ));
        }
    }
}
