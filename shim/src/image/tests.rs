//! Choosing the layer and the argv; reading manifests.

use super::*;

fn layer(digest: &str, title: &str) -> LayerDesc {
    LayerDesc {
        digest: digest.into(),
        size: 1,
        title: title.into(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn wasm_layers_are_found_by_media_type_with_their_titles() {
    let manifest = serde_json::json!({
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:aa", "size": 3},
            {"mediaType": "application/wasm", "digest": "sha256:bb", "size": 4,
             "annotations": {"org.opencontainers.image.title": "app.wasm"}},
            {"mediaType": "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
             "digest": "sha256:0123456789abcdef", "size": 5},
        ]
    });
    assert_eq!(
        layers_of(&manifest).unwrap(),
        vec![
            LayerDesc {
                digest: "sha256:bb".into(),
                size: 4,
                title: "app.wasm".into()
            },
            LayerDesc {
                digest: "sha256:0123456789abcdef".into(),
                size: 5,
                title: "0123456789ab.wasm".into()
            },
        ]
    );
    let tar_only = serde_json::json!({"layers": [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:aa", "size": 3}]});
    assert_eq!(layers_of(&tar_only), None);
}

#[test]
fn one_layer_runs_with_the_args_as_given_and_no_args_become_its_title() {
    let one = [layer("sha256:1", "hello.wasm")];
    let (l, argv) = select("img", &one, &strings(&["x", "-v"])).unwrap();
    assert_eq!(
        (l.title.as_str(), argv),
        ("hello.wasm", strings(&["x", "-v"]))
    );
    let (_, argv) = select("img", &one, &[]).unwrap();
    assert_eq!(argv, strings(&["hello.wasm"]));
}

#[test]
fn several_layers_need_the_command_to_name_one() {
    let two = [layer("sha256:1", "a.wasm"), layer("sha256:2", "b.wasm")];
    let (l, argv) = select("img", &two, &strings(&["/b.wasm", "1"])).unwrap();
    assert_eq!(
        (l.digest.as_str(), argv),
        ("sha256:2", strings(&["/b.wasm", "1"]))
    );
    let err = select("img", &two, &strings(&["c.wasm"])).unwrap_err();
    assert!(
        err.to_string().contains("2 Wasm layers (a.wasm, b.wasm)"),
        "{err}"
    );
    assert!(select("img", &two, &[]).is_err());
}

#[test]
fn index_manifests_put_wasm_platforms_first() {
    let index = serde_json::json!({"manifests": [
        {"digest": "sha256:linux", "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:p2", "size": 2, "platform": {"os": "wasip2", "architecture": "wasm"}},
        {"digest": "sha256:w", "size": 3, "platform": {"os": "wasi", "architecture": "wasm"}},
    ]});
    let order: Vec<String> = index_manifests(&index).into_iter().map(|m| m.0).collect();
    assert_eq!(order, strings(&["sha256:p2", "sha256:w", "sha256:linux"]));
    assert!(is_index("", &index));
    assert!(!is_index(
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::json!({"layers": []})
    ));
}
