//! The part of JSON Schema tool arguments are checked against before a tool runs: `type`
//! (one or a list), `properties`, `required`, `additionalProperties: false`, `enum`,
//! `items`, `minimum`/`maximum`. Other keywords are accepted in a schema and not checked.
//!
//! Invariants:
//! - [`check`] names the first argument that fails and why, as one line
//!   (`` `path`: expected string, got number ``).
//! - The arguments are always an object, whatever the schema says.

use serde_json::Value;

/// Checks `args` against `schema`; the error is one line naming the argument.
pub fn check(args: &Value, schema: &Value) -> Result<(), String> {
    if !args.is_object() {
        return Err(format!(
            "arguments must be a JSON object, got {}",
            kind(args)
        ));
    }
    check_value(args, schema, "")
}

/// Checks that `schema` is one [`check`] can use: an object whose `type`, if given, is
/// `object`, and whose `properties` and `required` are well formed.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    let Some(obj) = schema.as_object() else {
        return Err("the parameters schema must be a JSON object".into());
    };
    if let Some(t) = obj.get("type") {
        if t != "object" {
            return Err(format!(
                "the parameters schema must have type \"object\", not {t}"
            ));
        }
    }
    if let Some(p) = obj.get("properties") {
        let Some(props) = p.as_object() else {
            return Err("`properties` must be an object".into());
        };
        for (name, sub) in props {
            if !sub.is_object() {
                return Err(format!("property `{name}` must be a schema object"));
            }
            if let Some(t) = sub.get("type") {
                let names: Vec<&Value> = match t {
                    Value::Array(a) => a.iter().collect(),
                    t => vec![t],
                };
                for t in names {
                    match t.as_str() {
                        Some(
                            "string" | "integer" | "number" | "boolean" | "array" | "object"
                            | "null",
                        ) => {}
                        _ => return Err(format!("property `{name}`: unknown type {t}")),
                    }
                }
            }
        }
    }
    if let Some(r) = obj.get("required") {
        let ok = r.as_array().is_some_and(|a| a.iter().all(Value::is_string));
        if !ok {
            return Err("`required` must be a list of property names".into());
        }
    }
    Ok(())
}

fn check_value(v: &Value, schema: &Value, at: &str) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        return Ok(());
    };
    let name = |at: &str| {
        if at.is_empty() {
            "arguments".to_string()
        } else {
            format!("`{at}`")
        }
    };
    if let Some(t) = schema.get("type") {
        let wanted: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !wanted.is_empty() && !wanted.iter().any(|w| is_type(v, w)) {
            return Err(format!(
                "{}: expected {}, got {}",
                name(at),
                wanted.join(" or "),
                kind(v)
            ));
        }
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        if !options.contains(v) {
            let list: Vec<String> = options.iter().map(Value::to_string).collect();
            return Err(format!("{}: must be one of {}", name(at), list.join(", ")));
        }
    }
    if let Some(x) = v.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if x < min {
                return Err(format!("{}: {v} is below the minimum {min}", name(at)));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if x > max {
                return Err(format!("{}: {v} is above the maximum {max}", name(at)));
            }
        }
    }
    if let Value::Object(obj) = v {
        let props = schema.get("properties").and_then(Value::as_object);
        if let Some(Value::Array(required)) = schema.get("required") {
            for r in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return Err(format!("missing required argument `{}`", join(at, r)));
                }
            }
        }
        let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
        for (k, sub) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check_value(sub, s, &join(at, k))?,
                None if closed => {
                    let known: Vec<&str> = props
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    return Err(format!(
                        "unknown argument `{}` (known: {})",
                        join(at, k),
                        known.join(", ")
                    ));
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (v, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check_value(item, item_schema, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => true,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "n": {"type": "integer", "minimum": 1},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["path"],
            "additionalProperties": false
        })
    }

    #[test]
    fn good_arguments_pass() {
        check(
            &json!({"path": "x", "n": 3, "mode": "b", "tags": ["t"]}),
            &schema(),
        )
        .unwrap();
    }

    #[test]
    fn each_violation_names_the_argument() {
        let cases = [
            (json!({}), "missing required argument `path`"),
            (json!({"path": 1}), "`path`: expected string, got integer"),
            (
                json!({"path": "x", "n": 0}),
                "`n`: 0 is below the minimum 1",
            ),
            (
                json!({"path": "x", "n": 1.5}),
                "`n`: expected integer, got number",
            ),
            (
                json!({"path": "x", "mode": "c"}),
                "`mode`: must be one of \"a\", \"b\"",
            ),
            (
                json!({"path": "x", "tags": [1]}),
                "`tags[0]`: expected string, got integer",
            ),
            (json!({"path": "x", "extra": 1}), "unknown argument `extra`"),
            (json!([1]), "arguments must be a JSON object, got array"),
        ];
        for (args, want) in cases {
            let err = check(&args, &schema()).unwrap_err();
            assert!(err.contains(want), "{args}: {err}");
        }
    }

    #[test]
    fn schema_shapes_are_checked() {
        check_schema(&schema()).unwrap();
        assert!(check_schema(&json!({"type": "string"})).is_err());
        assert!(check_schema(&json!({"properties": {"a": {"type": "text"}}})).is_err());
        assert!(check_schema(&json!({"required": "a"})).is_err());
        assert!(check_schema(&json!([])).is_err());
    }
}
