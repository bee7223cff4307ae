//! Setting a key on a JSON object built a step earlier (the answers of the
//! OpenAI API and the OpenAPI document), without indexing that could panic
//! were the value not an object.

use serde_json::Value;

/// Sets `key` on `target` when it is an object (it always is where this is
/// used: objects just made with `json!`).
pub(crate) fn set(target: &mut Value, key: &str, value: Value) {
    if let Value::Object(object) = target {
        object.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_get_the_key_and_anything_else_is_left_alone() {
        let mut object = serde_json::json!({"a": 1});
        set(&mut object, "b", Value::from(2));
        assert_eq!(object, serde_json::json!({"a": 1, "b": 2}));
        let mut list = serde_json::json!([1]);
        set(&mut list, "b", Value::from(2));
        assert_eq!(list, serde_json::json!([1]));
    }
}
