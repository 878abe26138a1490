//! The resource operations of the Admin API: list, get, put, post, patch
//! and delete for routes, services and upstreams, with APISIX's envelopes,
//! status codes and error texts.

use actix_web::http::{Method, StatusCode};
use actix_web::HttpResponse;
use serde_json::{json, Map, Value};

use super::{json_response, AdminError, AdminState};
use crate::form::query_param;
use crate::model::{check, Invalid, Kind};
use crate::store::{Batch, Entry, StoreError};

/// Largest admin request body, as in APISIX.
pub const MAX_BODY: usize = 1_572_864;

/// One parsed admin request on a resource.
pub struct Request<'a> {
    pub method: &'a Method,
    pub kind: Kind,
    pub id: Option<&'a str>,
    /// Path below the id for a sub-path PATCH (`upstream/nodes`).
    pub sub: Option<&'a str>,
    pub query: &'a str,
    pub body: &'a [u8],
}

pub async fn handle(state: &AdminState, req: Request<'_>) -> Result<HttpResponse, AdminError> {
    let singular = req.kind.singular();
    match *req.method {
        Method::GET => match req.id {
            None => list(state, req.kind, req.query),
            Some(id) => get(state, req.kind, id),
        },
        Method::PUT => {
            let body = parse_body(req.body)?;
            let id = match (req.id, body.get("id")) {
                (Some(path_id), Some(body_id)) => {
                    if check::id(body_id).ok().as_deref() != Some(path_id) {
                        return Err(AdminError::bad(format!("wrong {singular} id")));
                    }
                    path_id.to_owned()
                }
                (Some(path_id), None) => path_id.to_owned(),
                (None, Some(body_id)) => check::id(body_id).map_err(|e| {
                    AdminError::bad(format!(
                        "invalid configuration: property \"id\" validation failed: {e}"
                    ))
                })?,
                (None, None) => return Err(AdminError::bad(format!("missing {singular} id"))),
            };
            write(state, req.kind, Some(id), body).await
        }
        Method::POST => {
            let body = parse_body(req.body)?;
            if req.id.is_some() || body.contains_key("id") {
                return Err(AdminError::bad(format!(
                    "wrong {singular} id, do not need it"
                )));
            }
            write(state, req.kind, None, body).await
        }
        Method::PATCH => {
            let id = req
                .id
                .ok_or_else(|| AdminError::bad(format!("missing {singular} id")))?;
            patch(state, req.kind, id, req.sub, req.body).await
        }
        Method::DELETE => {
            let id = req
                .id
                .ok_or_else(|| AdminError::bad(format!("missing {singular} id")))?;
            let force = query_param(req.query, "force").as_deref() == Some("true");
            delete(state, req.kind, id, force).await
        }
        ref other => Err(AdminError::MethodNotAllowed(format!(
            "not supported `{other}` method for {singular}"
        ))),
    }
}

fn get(state: &AdminState, kind: Kind, id: &str) -> Result<HttpResponse, AdminError> {
    let key = kind.key(id);
    let entry = state.store.get(&key)?.ok_or(AdminError::NotFound)?;
    Ok(json_response(StatusCode::OK, &item(&key, &entry)))
}

fn item(key: &str, e: &Entry) -> Value {
    json!({"key": key, "value": e.value, "createdIndex": e.created_index, "modifiedIndex": e.modified_index})
}

fn list(state: &AdminState, kind: Kind, query: &str) -> Result<HttpResponse, AdminError> {
    let mut items = state.store.list(&kind.prefix())?;

    // Filters, ANDed.
    if let Some(re) = query_param(query, "name") {
        let re = filter_regex("name", &re)?;
        items.retain(|(_, e)| e.value["name"].as_str().is_some_and(|n| re.is_match(n)));
    }
    if let Some(label) = query_param(query, "label") {
        items.retain(|(_, e)| !label.is_empty() && e.value["labels"].get(label.as_str()).is_some());
    }
    if kind == Kind::Route {
        if let Some(re) = query_param(query, "uri") {
            let re = filter_regex("uri", &re)?;
            items.retain(|(_, e)| {
                let v = &e.value;
                v["uri"].as_str().is_some_and(|u| re.is_match(u))
                    || v["uris"].as_array().is_some_and(|us| {
                        us.iter().filter_map(Value::as_str).any(|u| re.is_match(u))
                    })
            });
        }
    }
    let total = items.len();

    // Pagination needs both `page` and `page_size`.
    if let (Some(page), Some(size)) = (query_param(query, "page"), query_param(query, "page_size"))
    {
        let size: usize = size.parse().ok().filter(|s| (10..=500).contains(s)).ok_or(
            AdminError::PlainBadRequest("page_size must be between 10 and 500"),
        )?;
        let page: usize = page.parse().ok().filter(|p| *p >= 1).unwrap_or(1);
        items.sort_by_key(|(_, e)| e.created_index);
        items = items
            .into_iter()
            .skip((page - 1).saturating_mul(size))
            .take(size)
            .collect();
    }
    let list: Vec<Value> = items.iter().map(|(k, e)| item(k, e)).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"list": list, "total": total}),
    ))
}

fn filter_regex(field: &str, pattern: &str) -> Result<regex::Regex, AdminError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|_| AdminError::bad(format!("invalid regular expression in filter {field}")))
}

/// PUT (with an id) and POST (without): validate, check references, store.
async fn write(
    state: &AdminState,
    kind: Kind,
    id: Option<String>,
    mut body: Map<String, Value>,
) -> Result<HttpResponse, AdminError> {
    forbid_times(&body)?;
    let now = unix_now();
    let committed = state
        .store
        .update(|batch| {
            let id = match id {
                Some(id) => id,
                None => format!("{:020}", batch.revision()),
            };
            if !body.contains_key("id") {
                body.insert("id".into(), Value::String(id.clone()));
            }
            let key = kind.key(&id);
            let previous = batch.get(&key)?;
            let created = previous
                .as_ref()
                .and_then(|p| p.value.get("create_time").cloned())
                .unwrap_or(json!(now));
            body.insert("create_time".into(), created);
            body.insert("update_time".into(), json!(now));
            let value = Value::Object(body);
            validate(kind, &value)?;
            check_references(batch, kind, &value)?;
            let (entry, is_new) = batch.put(&key, value)?;
            Ok::<_, AdminError>((key, entry, is_new))
        })
        .await?;
    state.wait_applied(committed.revision).await;
    let (key, entry, is_new) = committed.value;
    let status = if is_new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(
        status,
        &json!({"key": key, "value": entry.value}),
    ))
}

async fn patch(
    state: &AdminState,
    kind: Kind,
    id: &str,
    sub: Option<&str>,
    raw: &[u8],
) -> Result<HttpResponse, AdminError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::bad("missing new configuration"));
    }
    let patch: Value = serde_json::from_slice(raw)
        .map_err(|e| AdminError::bad(format!("invalid request body: {e}")))?;
    let sub = sub.filter(|s| !s.is_empty());
    if sub.is_none() && !patch.is_object() {
        return Err(AdminError::bad("invalid configuration"));
    }
    let key = kind.key(id);
    let now = unix_now();
    let committed = state
        .store
        .update(|batch| {
            let current = batch.get(&key)?.ok_or(AdminError::NotFound)?;
            let mut value = current.value.clone();
            match sub {
                None => merge_patch(&mut value, &patch),
                Some(path) => set_path(&mut value, path, patch.clone())?,
            }
            let obj = value
                .as_object_mut()
                .ok_or_else(|| AdminError::bad("invalid configuration"))?;
            if let Some(body_id) = obj.get("id") {
                if check::id(body_id).ok().as_deref() != Some(id) {
                    return Err(AdminError::bad(format!("wrong {} id", kind.singular())));
                }
            }
            if let Some(created) = current.value.get("create_time") {
                obj.insert("create_time".into(), created.clone());
            }
            obj.insert("update_time".into(), json!(now));
            validate(kind, &value)?;
            check_references(batch, kind, &value)?;
            let (entry, _) = batch.put(&key, value)?;
            Ok::<_, AdminError>(entry)
        })
        .await?;
    state.wait_applied(committed.revision).await;
    Ok(json_response(
        StatusCode::OK,
        &json!({"key": key, "value": committed.value.value}),
    ))
}

async fn delete(
    state: &AdminState,
    kind: Kind,
    id: &str,
    force: bool,
) -> Result<HttpResponse, AdminError> {
    let key = kind.key(id);
    let committed = state
        .store
        .update(|batch| {
            if batch.get(&key)?.is_none() {
                return Err(AdminError::NotFound);
            }
            if !force {
                refuse_if_referenced(batch, kind, id)?;
            }
            batch.delete(&key)?;
            Ok(())
        })
        .await?;
    state.wait_applied(committed.revision).await;
    Ok(json_response(
        StatusCode::OK,
        &json!({"deleted": "1", "key": key}),
    ))
}

fn validate(kind: Kind, value: &Value) -> Result<(), AdminError> {
    kind.validate(value).map_err(|e| match e {
        Invalid::Schema(_) | Invalid::Plugin(_) => AdminError::BadRequest(e.to_string()),
    })
}

/// Server-set times may not come from the client on PUT/POST: not at the
/// top level, nor in `upstream` or `plugins` (APISIX names the nested ones
/// `upstream.create_time`, `plugins.create_time`).
fn forbid_times(body: &Map<String, Value>) -> Result<(), AdminError> {
    let nested = ["upstream", "plugins"].into_iter().filter_map(|field| {
        body.get(field)
            .and_then(Value::as_object)
            .map(|obj| (format!("{field}."), obj))
    });
    for (prefix, obj) in std::iter::once((String::new(), body)).chain(nested) {
        for field in ["create_time", "update_time"] {
            if obj.contains_key(field) {
                return Err(AdminError::bad(format!(
                    "the property is forbidden:  {prefix}{field}"
                )));
            }
        }
    }
    Ok(())
}

/// The ids this object refers to must exist.
fn check_references(batch: &Batch<'_>, kind: Kind, value: &Value) -> Result<(), AdminError> {
    let refs: &[(&str, Kind)] = match kind {
        Kind::Route => &[
            ("upstream_id", Kind::Upstream),
            ("service_id", Kind::Service),
        ],
        Kind::Service => &[("upstream_id", Kind::Upstream)],
        Kind::Upstream => &[],
    };
    for (field, target) in refs {
        if let Some(v) = value.get(*field) {
            let id = id_string(v);
            if batch.get(&target.key(&id))?.is_none() {
                let word = target.singular();
                return Err(AdminError::bad(format!(
                    "failed to fetch {word} info by {word} id [{id}], response code: 404"
                )));
            }
        }
    }
    Ok(())
}

/// Refuses to delete an upstream or service that something still uses.
fn refuse_if_referenced(batch: &Batch<'_>, kind: Kind, id: &str) -> Result<(), AdminError> {
    let (field, users, what): (&str, &[Kind], &str) = match kind {
        Kind::Upstream => (
            "upstream_id",
            &[Kind::Route, Kind::Service],
            "this upstream",
        ),
        Kind::Service => ("service_id", &[Kind::Route], "this service directly"),
        Kind::Route => return Ok(()),
    };
    for user in users {
        for (_, entry) in batch.list(&user.prefix())? {
            if entry.value.get(field).map(id_string).as_deref() == Some(id) {
                let user_id = entry.value.get("id").map(id_string).unwrap_or_default();
                return Err(AdminError::bad(format!(
                    "can not delete {what}, {} [{user_id}] is still using it now",
                    user.singular()
                )));
            }
        }
    }
    Ok(())
}

fn id_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse_body(raw: &[u8]) -> Result<Map<String, Value>, AdminError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::bad("missing configurations"));
    }
    let v: Value = serde_json::from_slice(raw)
        .map_err(|e| AdminError::bad(format!("invalid request body: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(AdminError::bad(
            "invalid configuration: wrong type: expected object",
        )),
    }
}

/// JSON merge patch (RFC 7396): objects merge, `null` removes, anything
/// else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_obj) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_obj = target.as_object_mut().expect("made an object above");
    for (k, v) in patch_obj {
        if v.is_null() {
            target_obj.remove(k);
        } else {
            merge_patch(target_obj.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Replaces the value at a `/`-separated path, creating objects on the way.
fn set_path(root: &mut Value, path: &str, value: Value) -> Result<(), AdminError> {
    let mut cur = root;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        cur = match cur {
            Value::Object(m) => {
                if last {
                    m.insert((*part).to_owned(), value);
                    return Ok(());
                }
                m.entry((*part).to_owned())
                    .or_insert_with(|| Value::Object(Map::new()))
            }
            Value::Array(a) => {
                let idx: usize = part
                    .parse()
                    .ok()
                    .filter(|i| *i < a.len())
                    .ok_or_else(|| AdminError::bad(format!("invalid sub path {path}")))?;
                if last {
                    a[idx] = value;
                    return Ok(());
                }
                &mut a[idx]
            }
            _ => return Err(AdminError::bad(format!("invalid sub path {path}"))),
        };
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        AdminError::Store(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_removes_nulls_and_replaces_arrays() {
        let mut v = json!({"a":{"x":1,"y":2},"m":["GET","POST"]});
        merge_patch(&mut v, &json!({"a":{"x":null,"z":3},"m":["PUT"]}));
        assert_eq!(v, json!({"a":{"y":2,"z":3},"m":["PUT"]}));
    }

    #[test]
    fn sub_path_replaces() {
        let mut v = json!({"upstream":{"nodes":{"a:1":1}}});
        set_path(&mut v, "upstream/nodes", json!({"b:2":1})).unwrap();
        assert_eq!(v, json!({"upstream":{"nodes":{"b:2":1}}}));
        set_path(&mut v, "uri", json!("/x")).unwrap();
        assert_eq!(v["uri"], "/x");
    }
}
