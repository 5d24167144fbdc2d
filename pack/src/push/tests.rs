//! Push tests: error wording, and pushes to the fake registry.

use super::*;
use crate::Format;
use crate::package::tests::{hello, package};
use std::sync::Mutex;

#[test]
fn registry_errors_are_said_briefly() {
    let server = |code, message: &str| {
        RegistryError(OciDistributionError::ServerError {
            code,
            url: "http://127.0.0.1:5000/v2/app/manifests/1".into(),
            message: message.into(),
        })
        .to_string()
    };
    let cases = [
        (
            server(
                400,
                r#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":{}}]}"#,
            ),
            "HTTP 400: MANIFEST_INVALID: manifest invalid ({})",
        ),
        (
            server(
                404,
                r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
            ),
            "HTTP 404: NAME_UNKNOWN: repository name not known to registry",
        ),
        (server(502, "bad gateway\n"), "HTTP 502: bad gateway"),
        (server(500, ""), "HTTP 500"),
        (
            server(401, ""),
            "HTTP 401 (give credentials: --username with --password or --password-stdin, \
             or WASM_OCI_USERNAME and WASM_OCI_PASSWORD)",
        ),
    ];
    for (said, want) in cases {
        assert_eq!(said, want);
    }
    assert_eq!(clip("ab", 1), "a…");
}

#[test]
fn a_digest_reference_is_refused() {
    let layout = package(Format::ContentLayer, hello()).build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let digest = format!("127.0.0.1:1/app@{}", layout.target.digest);
    let err = rt
        .block_on(push(
            &layout,
            &digest,
            &PushOptions::default(),
            Arc::new(|_: Progress| {}),
        ))
        .unwrap_err();
    assert!(err.to_string().starts_with("invalid reference"), "{err}");
}

/// Pushes to the fake registry; returns what the push reported.
fn push_to(registry: &fake::Registry, layout: &Layout, tag: &str) -> Vec<Progress> {
    let events = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let seen = Arc::clone(&events);
    let observe: Observer = Arc::new(move |p: Progress| seen.lock().unwrap().push(p));
    let options = PushOptions {
        plain_http: true,
        ..PushOptions::default()
    };
    let reference = format!("{}/app:{tag}", registry.address);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let digest = rt
        .block_on(push(layout, &reference, &options, observe))
        .unwrap();
    assert_eq!(digest, layout.target.digest);
    events.lock().unwrap().clone()
}

/// A valid module of about 2.5 MiB: a custom section pads it.
fn big_module() -> Vec<u8> {
    let mut wasm = hello();
    let payload = vec![7u8; 5 << 19];
    let mut section = vec![4, b'p', b'a', b'd', b'!'];
    section.extend(&payload);
    wasm.push(0); // custom section
    let mut len = section.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        wasm.push(if len == 0 { byte } else { byte | 0x80 });
        if len == 0 {
            break;
        }
    }
    wasm.extend(section);
    wasm
}

#[test]
fn a_push_sends_large_blobs_in_chunks_and_skips_what_the_registry_has() {
    let registry = fake::Registry::start();
    let wasm = big_module();
    let layout = package(Format::ContentLayer, wasm.clone()).build().unwrap();
    let layer = crate::digest(&wasm);
    let events = push_to(&registry, &layout, "1");
    let state = registry.state();
    assert_eq!(state.blobs[&layer], wasm);
    assert_eq!(state.manifests["1"], layout.target.bytes);
    assert!(state.patches >= 3, "{} PATCH requests", state.patches);
    let size = wasm.len() as u64;
    let progress: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Progress::Sent { digest, sent, .. } if *digest == layer => Some(*sent),
            _ => None,
        })
        .collect();
    assert!(
        progress.len() >= 3 && progress.windows(2).all(|w| w[0] < w[1]),
        "{progress:?}"
    );
    assert_eq!(progress.last(), Some(&size));
    // A second push sends no blob: the registry has them.
    let uploads = state.uploads;
    let events = push_to(&registry, &layout, "2");
    assert_eq!(registry.state().uploads, uploads);
    let exists = events
        .iter()
        .filter(|e| matches!(e, Progress::Exists { .. }))
        .count();
    assert_eq!(exists, layout.blobs.len());
    assert_eq!(registry.state().manifests["2"], layout.target.bytes);
}

#[test]
fn an_index_goes_up_after_its_manifests() {
    let registry = fake::Registry::start();
    let d = tempfile::tempdir().unwrap();
    let mut native = package(Format::Image, hello()).build().unwrap();
    native.platform = Some(crate::Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
    });
    native.write_archive(&d.path().join("native.tar")).unwrap();
    let layout = package(Format::ContentLayer, hello())
        .build()
        .unwrap()
        .with_native(&d.path().join("native.tar"))
        .unwrap();
    push_to(&registry, &layout, "both");
    let state = registry.state();
    let order: Vec<&str> = state.manifest_puts.iter().map(String::as_str).collect();
    let digests: Vec<&str> = layout.manifests.iter().map(|m| m.digest.as_str()).collect();
    assert_eq!(order, [digests[0], digests[1], "both"]);
    assert_eq!(state.manifests["both"], layout.target.bytes);
    assert_eq!(state.content_types["both"], crate::INDEX);
}

#[test]
fn a_registry_without_chunked_uploads_gets_each_blob_in_one_request() {
    let registry = fake::Registry::without_chunks();
    let wasm = big_module();
    let layout = package(Format::ContentLayer, wasm.clone()).build().unwrap();
    let events = push_to(&registry, &layout, "1");
    let state = registry.state();
    assert_eq!(state.patches, 0);
    assert_eq!(state.blobs[&crate::digest(&wasm)], wasm);
    assert_eq!(state.blobs.len(), layout.blobs.len());
    assert_eq!(state.manifests["1"], layout.target.bytes);
    let done = |e: &Progress| matches!(e, Progress::Sent { sent, size, .. } if sent == size);
    assert_eq!(
        events.iter().filter(|e| done(e)).count(),
        layout.blobs.len()
    );
}
