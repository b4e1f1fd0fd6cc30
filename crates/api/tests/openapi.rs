//! The committed `crates/api/openapi.json` is the document the code builds. Run with
//! `UPDATE_OPENAPI=1` to rewrite it after changing the API.

use std::path::Path;

#[test]
fn committed_openapi_json_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let fresh = paddock_api::openapi::document_text();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "crates/api/openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test -p paddock-api --test openapi` and commit it"
    );
}

#[test]
fn every_schema_reference_resolves() {
    let doc = paddock_api::openapi::document();
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for piece in text.split("#/components/schemas/").skip(1) {
        let name: String = piece.chars().take_while(|c| c.is_alphanumeric()).collect();
        assert!(schemas.contains_key(&name), "dangling $ref to {name}");
    }
    assert!(paddock_api::openapi::operations()
        .contains(&("POST".into(), "/api/v1/vms/{name}/start".into())));
}
