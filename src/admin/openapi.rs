//! The Admin API's OpenAPI document. Resource schemas come from the model
//! types; the operations are the same for every kind, so they are built
//! from one table rather than annotated one by one.

use actix_web::HttpResponse;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, Required};
use utoipa::OpenApi as _;

use crate::model::{self, Kind};

/// The `plugins` object of a route or service: plugin name → its
/// configuration. Documentation only; configurations are checked by the
/// plugin registry.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Plugins {
    #[serde(rename = "openid-connect")]
    openid_connect: Option<crate::plugins::openid_connect::OidcConfig>,
    cors: Option<crate::plugins::cors::CorsConfig>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Portcullis Admin API",
        description = "APISIX-compatible Admin API (v3) of the Portcullis gateway. \
            Every /apisix/admin request needs the admin key in the X-API-KEY header.",
    ),
    components(schemas(
        model::Route,
        model::Service,
        model::Upstream,
        model::upstream::Nodes,
        model::upstream::Node,
        model::upstream::KeepalivePool,
        model::Timeout,
        model::Id,
        Plugins,
        crate::plugins::cors::CorsConfig,
        crate::plugins::openid_connect::OidcConfig,
        crate::plugins::openid_connect::ClaimValidator,
        crate::plugins::openid_connect::IssuerRule,
        crate::plugins::openid_connect::AudienceRule
    ))
)]
struct Base;

/// Builds the whole document.
pub fn document() -> OpenApi {
    let mut doc = Base::openapi();
    if let Some(components) = doc.components.as_mut() {
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-KEY",
                "The admin key: set with PORTCULLIS_ADMIN_KEY, or generated and printed on first start",
            ))),
        );
    }
    for kind in Kind::ALL {
        add_operations(&mut doc, kind);
    }
    doc
}

fn schema_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Route => "Route",
        Kind::Service => "Service",
        Kind::Upstream => "Upstream",
    }
}

fn add_operations(doc: &mut OpenApi, kind: Kind) {
    let plural = kind.plural();
    let word = kind.singular();
    let schema = Ref::from_schema_name(schema_name(kind));
    let collection = format!("/apisix/admin/{plural}");
    let one = format!("/apisix/admin/{plural}/{{id}}");
    let body = || {
        RequestBodyBuilder::new()
            .content("application/json", Content::new(Some(schema.clone())))
            .required(Some(Required::True))
            .build()
    };
    let id_param = || {
        ParameterBuilder::new()
            .name("id")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some("string of [a-zA-Z0-9-_.]{1,64}, or an integer ≥ 1"))
            .build()
    };
    let query = |name: &str, description: &str| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .description(Some(description))
            .build()
    };
    let op = |id: String, summary: String| {
        OperationBuilder::new()
            .tag(plural)
            .operation_id(Some(id))
            .summary(Some(summary))
            .security(SecurityRequirement::new("admin_key", Vec::<String>::new()))
            .response(
                "401",
                ResponseBuilder::new().description("missing or wrong admin key"),
            )
            .response(
                "403",
                ResponseBuilder::new().description("peer address not in allow_admin"),
            )
    };
    let ok = |d: &str| ResponseBuilder::new().description(d).build();
    let invalid = || ok("invalid configuration: {\"error_msg\": \"…\"}");
    let missing = || ok("{\"message\": \"Key not found\"}");

    let mut list = op(format!("list_{plural}"), format!("List {plural}"))
        .response(
            "200",
            ok("{\"total\": N, \"list\": [{key, value, createdIndex, modifiedIndex}]}"),
        )
        .response("400", ok("page_size outside 10..=500, or a bad filter"));
    for (name, d) in [
        ("page", "page number, from 1 (needs page_size)"),
        ("page_size", "items per page, 10 to 500 (needs page)"),
        ("name", "regular expression matched against name"),
        ("label", "keep items whose labels have this key"),
    ] {
        list = list.parameter(query(name, d));
    }
    if kind == Kind::Route {
        list = list.parameter(query(
            "uri",
            "regular expression matched against uri or uris",
        ));
    }
    doc.paths
        .add_path_operation(&collection, vec![HttpMethod::Get], list);

    doc.paths.add_path_operation(
        &collection,
        vec![HttpMethod::Post],
        op(
            format!("create_{word}"),
            format!("Create a {word} with a generated id"),
        )
        .request_body(Some(body()))
        .response("201", ok("{\"key\": \"/apisix/…\", \"value\": {…}}"))
        .response("400", invalid()),
    );
    doc.paths.add_path_operation(
        &collection,
        vec![HttpMethod::Put],
        op(
            format!("put_{word}_with_body_id"),
            format!("Create or replace a {word} named by the id in the body"),
        )
        .request_body(Some(body()))
        .response("200", ok("replaced"))
        .response("201", ok("created"))
        .response("400", invalid()),
    );
    doc.paths.add_path_operation(
        &one,
        vec![HttpMethod::Get],
        op(format!("get_{word}"), format!("Get a {word}"))
            .parameter(id_param())
            .response(
                "200",
                ok("{\"key\", \"value\", \"createdIndex\", \"modifiedIndex\"}"),
            )
            .response("404", missing()),
    );
    doc.paths.add_path_operation(
        &one,
        vec![HttpMethod::Put],
        op(format!("put_{word}"), format!("Create or replace a {word}"))
            .parameter(id_param())
            .request_body(Some(body()))
            .response("200", ok("replaced"))
            .response("201", ok("created"))
            .response("400", invalid()),
    );
    doc.paths.add_path_operation(
        &one,
        vec![HttpMethod::Patch],
        op(format!("patch_{word}"), format!("Merge changes into a {word} (JSON merge patch; null removes a key, arrays are replaced)"))
            .parameter(id_param())
            .request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", Content::new(Some(utoipa::openapi::schema::Object::new())))
                    .build(),
            ))
            .response("200", ok("the merged object"))
            .response("400", invalid())
            .response("404", missing()),
    );
    let mut delete = op(format!("delete_{word}"), format!("Delete a {word}"))
        .parameter(id_param())
        .response("200", ok("{\"deleted\": \"1\", \"key\": \"/apisix/…\"}"))
        .response("404", missing());
    if kind != Kind::Route {
        delete = delete
            .parameter(query(
                "force",
                "`true` deletes even when a route still uses it",
            ))
            .response("400", ok("still in use"));
    }
    doc.paths
        .add_path_operation(&one, vec![HttpMethod::Delete], delete);

    doc.paths.add_path_operation(
        format!("/apisix/admin/{plural}/{{id}}/{{path}}"),
        vec![HttpMethod::Patch],
        op(
            format!("patch_{word}_path"),
            format!("Replace the value at a path inside a {word}, e.g. upstream/nodes"),
        )
        .parameter(id_param())
        .parameter(
            ParameterBuilder::new()
                .name("path")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .build(),
        )
        .request_body(Some(
            RequestBodyBuilder::new()
                .content(
                    "application/json",
                    Content::new(Some(utoipa::openapi::schema::Object::new())),
                )
                .build(),
        ))
        .response("200", ok("the changed object"))
        .response("404", missing()),
    );
}

/// The document as pretty JSON with a trailing newline, as committed under
/// `openapi/admin-api.json`.
pub fn document_json() -> String {
    let mut s = document()
        .to_pretty_json()
        .expect("the document serialises");
    s.push('\n');
    s
}

pub async fn serve_spec() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document_json())
}
