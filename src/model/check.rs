//! Small validators over JSON values that speak APISIX's error language
//! (`property "name" validation failed: string too long, expected at most
//! 256, got 257`), so messages read the same as users know them.

use serde_json::{Map, Value};

pub type Checked<T = ()> = Result<T, String>;

/// Wraps an error found inside `field`.
pub fn nested<T>(field: &str, r: Checked<T>) -> Checked<T> {
    r.map_err(|e| format!("property \"{field}\" validation failed: {e}"))
}

pub fn object(v: &Value) -> Checked<&Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| format!("wrong type: expected object, got {}", type_name(v)))
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Refuses any key not in `allowed`.
pub fn known_fields(obj: &Map<String, Value>, allowed: &[&str]) -> Checked {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("additional properties forbidden, found {k}")),
        None => Ok(()),
    }
}

pub fn string(v: &Value, min: usize, max: usize) -> Checked<&str> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("wrong type: expected string, got {}", type_name(v)))?;
    let n = s.chars().count();
    if n < min {
        return Err(format!(
            "string too short, expected at least {min}, got {n}"
        ));
    }
    if n > max {
        return Err(format!("string too long, expected at most {max}, got {n}"));
    }
    Ok(s)
}

pub fn integer(v: &Value) -> Checked<i64> {
    v.as_i64()
        .ok_or_else(|| format!("wrong type: expected integer, got {}", type_name(v)))
}

pub fn integer_min(v: &Value, min: i64) -> Checked<i64> {
    let n = integer(v)?;
    if n < min {
        return Err(format!("expected {n} to be at least {min}"));
    }
    Ok(n)
}

pub fn number_positive(v: &Value) -> Checked<f64> {
    let n = v
        .as_f64()
        .ok_or_else(|| format!("wrong type: expected number, got {}", type_name(v)))?;
    if n <= 0.0 {
        return Err(format!("expected {v} to be greater than 0"));
    }
    Ok(n)
}

pub fn boolean(v: &Value) -> Checked<bool> {
    v.as_bool()
        .ok_or_else(|| format!("wrong type: expected boolean, got {}", type_name(v)))
}

pub fn one_of<'a>(v: &'a Value, values: &[&str]) -> Checked<&'a str> {
    match v.as_str() {
        Some(s) if values.contains(&s) => Ok(s),
        _ => Err("matches none of the enum values".into()),
    }
}

/// An array of items checked by `item`, with APISIX's unique/min rules.
pub fn array<'a, T>(
    v: &'a Value,
    min_items: usize,
    unique: bool,
    item: impl Fn(&'a Value) -> Checked<T>,
) -> Checked<Vec<T>> {
    let items = v
        .as_array()
        .ok_or_else(|| format!("wrong type: expected array, got {}", type_name(v)))?;
    if items.len() < min_items {
        return Err(format!("expect array to have at least {min_items} items"));
    }
    if unique {
        // Linear in the number of items: a set of their JSON forms.
        let mut seen = std::collections::HashMap::with_capacity(items.len());
        for (i, a) in items.iter().enumerate() {
            if let Some(j) = seen.insert(a.to_string(), i) {
                return Err(format!(
                    "expected unique items but items {} and {} are equal",
                    j + 1,
                    i + 1
                ));
            }
        }
    }
    items
        .iter()
        .enumerate()
        .map(|(i, x)| item(x).map_err(|e| format!("failed to validate item {}: {e}", i + 1)))
        .collect()
}

/// APISIX's id: a string of 1–64 of `[a-zA-Z0-9-_.]`, or an integer ≥ 1.
/// Returns the canonical string form used in keys.
pub fn id(v: &Value) -> Checked<String> {
    let ok = match v {
        Value::String(s) => {
            // `.` and `..` would be dot-segments in the resource's URL.
            s != "."
                && s != ".."
                && (1..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        }
        Value::Number(n) => n.as_u64().is_some_and(|n| n >= 1),
        _ => false,
    };
    if !ok {
        return Err("object matches none of the required".into());
    }
    Ok(match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// A host name as APISIX accepts it: `*`, or an optional leading `*`
/// followed by `[0-9a-zA-Z-._\[\]:]+`.
pub fn host(v: &Value) -> Checked<&str> {
    let s = string(v, 1, 1024)?;
    let rest = s.strip_prefix('*').unwrap_or(s);
    let ok = s == "*"
        || (!rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b)));
    if !ok {
        return Err(format!(
            "failed to match pattern \"^\\*?[0-9a-zA-Z-._\\[\\]:]+$\" with \"{s}\""
        ));
    }
    Ok(s)
}

/// Labels: an object of non-blank strings.
pub fn labels(v: &Value) -> Checked {
    for (k, val) in object(v)? {
        nested(k, string(val, 1, 256)).and_then(|s| {
            if s.chars().any(char::is_whitespace) {
                Err(format!(
                    "property \"{k}\" validation failed: failed to match pattern \"^\\S+$\" with \"{s}\""
                ))
            } else {
                Ok(())
            }
        })?;
    }
    Ok(())
}

/// `{connect, send, read}`, all required, seconds > 0.
pub fn timeout(v: &Value) -> Checked {
    let obj = object(v)?;
    known_fields(obj, &["connect", "send", "read"])?;
    for f in ["connect", "send", "read"] {
        match obj.get(f) {
            None => return Err(format!("property \"{f}\" is required")),
            Some(x) => nested(f, number_positive(x))?,
        };
    }
    Ok(())
}

/// Runs `check` on `obj[field]` when present, wrapping its error.
pub fn opt<'a, T>(
    obj: &'a Map<String, Value>,
    field: &str,
    check: impl FnOnce(&'a Value) -> Checked<T>,
) -> Checked<Option<T>> {
    match obj.get(field) {
        None => Ok(None),
        Some(v) => nested(field, check(v)).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids() {
        assert_eq!(id(&json!("a-b_c.1")).unwrap(), "a-b_c.1");
        assert_eq!(id(&json!(7)).unwrap(), "7");
        for bad in [
            json!(-100),
            json!(0),
            json!(""),
            json!("a/b"),
            json!(1.5),
            json!(null),
        ] {
            assert!(id(&bad).is_err(), "{bad}");
        }
        assert!(id(&json!("x".repeat(65))).is_err());
    }

    #[test]
    fn hosts() {
        assert!(host(&json!("*.foo.com")).is_ok());
        assert!(host(&json!("*")).is_ok());
        assert!(host(&json!("a.*.foo.com")).is_err());
        assert!(host(&json!("a b")).is_err());
    }

    #[test]
    fn messages_match_apisix() {
        assert_eq!(
            nested("name", string(&json!("x".repeat(257)), 1, 256)).unwrap_err(),
            "property \"name\" validation failed: string too long, expected at most 256, got 257"
        );
        assert_eq!(
            nested("retries", integer_min(&json!(-1), 0)).unwrap_err(),
            "property \"retries\" validation failed: expected -1 to be at least 0"
        );
    }
}
