//! `spec.tolerations` as upstream KMM's webhook checks them (`validateTolerations` in
//! `internal/webhook/module.go`): the CRD takes corev1 tolerations as they are, so without this
//! a toleration the scheduler would never honour (a bad operator, `tolerationSeconds` without
//! `NoExecute`) would be stored silently.

use k8s_openapi::api::core::v1::Toleration;

use super::ValidationError;
use super::label_keys::{check_label_key, check_label_value};

const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// Every toleration of `spec.tolerations`, in upstream's order of checks (first failure of each).
pub(super) fn check(tolerations: &[Toleration], errors: &mut Vec<ValidationError>) {
    for (i, toleration) in tolerations.iter().enumerate() {
        if let Err(e) = check_one(toleration) {
            errors.push(ValidationError::new(
                format!("spec.tolerations[{i}].{}", e.0),
                e.1,
            ));
        }
    }
}

/// `(sub-field, message)` of the first failed check.
fn check_one(t: &Toleration) -> Result<(), (&'static str, String)> {
    let key = t.key.as_deref().unwrap_or_default();
    let operator = t.operator.as_deref().unwrap_or_default();
    let value = t.value.as_deref().unwrap_or_default();
    let effect = t.effect.as_deref().unwrap_or_default();
    if !key.is_empty() {
        check_label_key(key).map_err(|e| ("key", format!("invalid key: {e}")))?;
    } else if operator != "Exists" {
        return Err(("operator", "must be 'Exists' when key is empty".into()));
    }
    if t.toleration_seconds.is_some() && effect != "NoExecute" {
        return Err((
            "tolerationSeconds",
            "effect must be 'NoExecute' when tolerationSeconds is set".into(),
        ));
    }
    match operator {
        "" | "Equal" => check_label_value(value).map_err(|e| {
            (
                "value",
                format!("invalid value for the Equal operator: {e}"),
            )
        })?,
        "Exists" if !value.is_empty() => {
            return Err(("value", "must be empty when operator is 'Exists'".into()));
        }
        "Exists" => {}
        other => {
            return Err((
                "operator",
                format!("invalid operator {other:?}, allowed values are ['Equal', 'Exists']"),
            ));
        }
    }
    if !effect.is_empty() && !EFFECTS.contains(&effect) {
        return Err((
            "effect",
            format!(
                "invalid effect {effect:?}, allowed values are ['NoSchedule', 'PreferNoSchedule', 'NoExecute']"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tol(key: &str, operator: &str, value: &str, effect: &str, secs: Option<i64>) -> Toleration {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Toleration {
            key: some(key),
            operator: some(operator),
            value: some(value),
            effect: some(effect),
            toleration_seconds: secs,
        }
    }

    fn field_of(t: Toleration) -> Option<String> {
        let mut errors = Vec::new();
        check(&[t], &mut errors);
        errors.first().map(|e| e.field.clone())
    }

    #[test]
    fn tolerations_upstream_admits_pass() {
        for t in [
            tol(
                "node-role.kubernetes.io/control-plane",
                "Exists",
                "",
                "NoSchedule",
                None,
            ),
            tol("example.com/gpu", "Equal", "true", "PreferNoSchedule", None),
            tol("example.com/gpu", "", "true", "", None),
            tol(
                "node.kubernetes.io/unreachable",
                "Exists",
                "",
                "NoExecute",
                Some(300),
            ),
            tol("", "Exists", "", "", None),
        ] {
            assert_eq!(field_of(t.clone()), None, "{t:?}");
        }
    }

    #[test]
    fn tolerations_upstream_refuses_are_refused_naming_the_sub_field() {
        for (t, field) in [
            (tol("bad key!", "Exists", "", "", None), "key"),
            (tol("", "Equal", "x", "", None), "operator"),
            (
                tol("k", "Exists", "", "NoSchedule", Some(1)),
                "tolerationSeconds",
            ),
            (tol("k", "Equal", "not a value", "", None), "value"),
            (tol("k", "Exists", "v", "", None), "value"),
            (tol("k", "Sometimes", "", "", None), "operator"),
            (tol("k", "Exists", "", "Never", None), "effect"),
        ] {
            assert_eq!(
                field_of(t.clone()).as_deref(),
                Some(format!("spec.tolerations[0].{field}").as_str()),
                "{t:?}"
            );
        }
    }
}
