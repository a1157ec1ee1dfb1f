//! Values kept in object storage instead of inline.
//!
//! A run input or task output larger than the storage threshold is written to an object store;
//! the database keeps a small reference in its place:
//! `{"$orbit_object": {"backend": "local", "key": "runs/…/extract/attempt-1.json", "size": 81920}}`.
//! Whoever reads the value (the engine building a task's context, an SDK worker, the dashboard)
//! fetches the object when it meets a reference. An inline value of that same shape would be
//! mistaken for a reference, so such a value is always stored as an object (see
//! [`looks_like_reference`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The one key of a reference object.
pub const MARKER: &str = "$orbit_object";

/// Where a value lives in object storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ObjectRef {
    /// The id of the storage backend (`local`, or an id from `STORAGE_BACKENDS`).
    pub backend: String,
    /// The object's key inside that backend.
    pub key: String,
    /// Size of the stored JSON, in bytes.
    #[serde(default)]
    pub size: u64,
}

impl ObjectRef {
    /// The reference `value` is, if it is one.
    pub fn of(value: &Value) -> Option<ObjectRef> {
        let Value::Object(map) = value else {
            return None;
        };
        if map.len() != 1 {
            return None;
        }
        serde_json::from_value(map.get(MARKER)?.clone()).ok()
    }

    /// The value the store keeps in place of the object's content.
    pub fn to_value(&self) -> Value {
        let mut map = Map::with_capacity(1);
        map.insert(
            MARKER.to_owned(),
            serde_json::to_value(self).unwrap_or(Value::Null),
        );
        Value::Object(map)
    }

    /// `backend/key`: how an assignment names the object it grants access to.
    pub fn id(&self) -> String {
        format!("{}/{}", self.backend, self.key)
    }
}

/// True when `value` has the shape of a reference (an object whose only key is [`MARKER`]),
/// valid or not: such a value cannot be kept inline without being misread.
pub fn looks_like_reference(value: &Value) -> bool {
    matches!(value, Value::Object(m) if m.len() == 1 && m.contains_key(MARKER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_reference_round_trips_through_its_value() {
        let r = ObjectRef {
            backend: "s3".into(),
            key: "runs/1/input.json".into(),
            size: 70_000,
        };
        assert_eq!(ObjectRef::of(&r.to_value()), Some(r.clone()));
        assert_eq!(r.id(), "s3/runs/1/input.json");
        assert!(looks_like_reference(&r.to_value()));
    }

    #[test]
    fn ordinary_values_are_not_references() {
        for v in [
            json!(null),
            json!("$orbit_object"),
            json!({"a": 1}),
            json!({"$orbit_object": {"backend": "x", "key": "k"}, "other": 1}),
        ] {
            assert_eq!(ObjectRef::of(&v), None, "{v}");
        }
        // A malformed reference is not a reference, but it has the shape of one.
        let odd = json!({"$orbit_object": 5});
        assert_eq!(ObjectRef::of(&odd), None);
        assert!(looks_like_reference(&odd));
        assert!(!looks_like_reference(&json!({"a": 1})));
    }
}
