//! Property tests ("fuzzing" within a bounded budget) of every decoder a
//! request goes through: YAML/JSON bodies, strict typed decoding of every
//! kind, label and field selectors, merge patches over valid objects,
//! request paths and bearer tokens.
//! None may panic; bad input must come back as 400 or 422 (404 for unknown
//! kinds), never as a 500.
//!
//! Longer run: `PROPTEST_CASES=200000 cargo test --release -p keel-controlplane --test fuzz_decoders`

use axum::http::HeaderMap;
use keel_controlplane::api::{codec, route, select};
use keel_controlplane::auth::tokens;
use keel_controlplane::kinds::KINDS;
use proptest::prelude::*;
use serde_json::{Value, json};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-zA-Z0-9 ._/%:-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("metadata".to_string()),
                    Just("spec".to_string()),
                    Just("name".to_string()),
                    Just("replicas".to_string()),
                    Just("containers".to_string()),
                    Just("labels".to_string()),
                    Just("selector".to_string()),
                    Just("template".to_string()),
                    "[a-zA-Z]{1,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn deployment() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
          "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "100m"}}}]}}}})
}

/// Cases per property: `PROPTEST_CASES` if set, else 512. (A literal in
/// the config would override the variable: proptest reads it only into
/// its default config.)
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512)
}

fn client_error(code: u16) -> bool {
    matches!(code, 400 | 404 | 413 | 422)
}

proptest! {
    // 512 cases per property in the suite; PROPTEST_CASES sets a longer run.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn bodies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), yaml in any::<bool>()) {
        let mut h = HeaderMap::new();
        h.insert("content-type", if yaml { "application/yaml" } else { "application/json" }.parse().unwrap());
        if let Err(e) = codec::parse(&h, &bytes) {
            prop_assert!(client_error(e.code), "{e:?}");
        }
    }

    #[test]
    fn yaml_text_never_panics(text in "[ a-z:{}\\[\\],'\"\n-]{0,200}") {
        if let Err(e) = codec::parse(&HeaderMap::new(), text.as_bytes()) {
            prop_assert!(client_error(e.code), "{e:?}");
        }
    }

    #[test]
    fn every_kind_decodes_arbitrary_objects_without_panicking(v in json_value(), k in 0..KINDS.len()) {
        if let Err(e) = (KINDS[k].check)(v) {
            prop_assert!(client_error(e.code), "{} {e:?}", KINDS[k].kind);
        }
    }

    #[test]
    fn merge_patches_over_a_valid_object(patch in json_value()) {
        let mut doc = deployment();
        json_patch::merge(&mut doc, &patch);
        let kind = keel_controlplane::kinds::by_kind("apps/v1", "Deployment").unwrap();
        if let Err(e) = (kind.check)(doc) {
            prop_assert!(client_error(e.code), "{e:?}");
        }
    }

    #[test]
    fn label_selectors_never_panic(s in "[a-z=!,() .in-]{0,40}") {
        match select::labels(&s) {
            Ok(sel) => { select::labels_match(&sel, &deployment()["spec"]["template"]); }
            Err(e) => prop_assert_eq!(e.code, 400),
        }
    }

    #[test]
    fn field_selectors_never_panic(s in "[a-zA-Z.=!,]{0,40}") {
        match select::fields(&s) {
            Ok(f) => { select::fields_match(&f, &deployment()); }
            Err(e) => prop_assert_eq!(e.code, 400),
        }
    }

    #[test]
    fn bearer_tokens_never_panic_and_only_the_exact_shape_parses(s in "(keel\\.)?[0-9a-fA-Fz.]{0,70}") {
        if let Ok((id, secret)) = tokens::parse(&s) {
            prop_assert_eq!(id.len(), 12);
            prop_assert_eq!(secret.len(), 48);
            prop_assert_eq!(format!("keel.{id}.{secret}"), s);
        }
    }

    #[test]
    fn request_paths_never_panic(
        segs in prop::collection::vec("[a-z0-9{}.%-]{0,12}", 0..8),
        apis in any::<bool>(),
        method in prop::sample::select(vec!["GET", "PUT", "POST", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
        query in "[a-z=&%0-9]{0,16}",
    ) {
        let path = format!("/{}/{}?{query}", if apis { "apis" } else { "api" }, segs.join("/"));
        let Ok(uri) = path.parse::<axum::http::Uri>() else {
            return Ok(());
        };
        let method = axum::http::Method::from_bytes(method.as_bytes()).unwrap();
        if let Err(e) = route::parse(&method, &uri) {
            prop_assert!([400, 404, 405].contains(&e.code), "{e:?}");
        }
    }
}
