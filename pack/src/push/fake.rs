//! A registry on 127.0.0.1 that speaks just enough of the distribution API for the push tests:
//! blob HEAD, chunked and one-request uploads, manifest PUT (refused while a blob or manifest it
//! names is missing, as real registries do), and a record of what it was sent.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    pub(crate) blobs: HashMap<String, Vec<u8>>,
    /// By tag and by digest.
    pub(crate) manifests: HashMap<String, Vec<u8>>,
    pub(crate) content_types: HashMap<String, String>,
    /// The tag or digest of each manifest PUT, in order.
    pub(crate) manifest_puts: Vec<String>,
    /// Upload sessions opened, and PATCH requests.
    pub(crate) uploads: usize,
    pub(crate) patches: usize,
    sessions: HashMap<String, Vec<u8>>,
    /// Answer PATCH with 405, as registries without chunked uploads do.
    refuse_chunks: bool,
}

pub(crate) struct Registry {
    /// `127.0.0.1:port`.
    pub(crate) address: String,
    state: Arc<Mutex<State>>,
}

impl Registry {
    pub(crate) fn start() -> Registry {
        Registry::listen(State::default())
    }

    /// A registry that takes blobs in one PUT only.
    pub(crate) fn without_chunks() -> Registry {
        Registry::listen(State {
            refuse_chunks: true,
            ..State::default()
        })
    }

    fn listen(state: State) -> Registry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(state));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let state = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Registry { address, state }
    }

    pub(crate) fn state(&self) -> State {
        self.state.lock().unwrap().clone()
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader) {
        let response = handle(&request, &mut state.lock().unwrap());
        if respond(&mut writer, &response, request.method == "HEAD").is_err() {
            return;
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    assert!(
        !headers.contains_key("transfer-encoding"),
        "the fake registry reads sized bodies only"
    );
    let length = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_string(), query.to_string()),
        None => (target, String::new()),
    };
    Some(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

fn respond(writer: &mut TcpStream, response: &Response, head: bool) -> std::io::Result<()> {
    let body: &[u8] = if head { &[] } else { &response.body };
    let mut out = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
        response.status,
        body.len()
    );
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    writer.write_all(out.as_bytes())?;
    writer.write_all(body)?;
    writer.flush()
}

fn answer(status: u16, headers: Vec<(&'static str, String)>) -> Response {
    Response {
        status,
        headers,
        body: vec![],
    }
}

fn error(status: u16, code: &str) -> Response {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": code.to_lowercase() }] });
    Response {
        status,
        headers: vec![("Content-Type", "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn handle(request: &Request, state: &mut State) -> Response {
    if request.path == "/v2/" || request.path == "/v2" {
        return Response {
            status: 200,
            headers: vec![],
            body: b"{}".to_vec(),
        };
    }
    let Some(rest) = request.path.strip_prefix("/v2/") else {
        return error(404, "NOT_FOUND");
    };
    if let Some((repo, tail)) = rest.split_once("/blobs/") {
        if let Some(id) = tail.strip_prefix("uploads/") {
            return upload(request, state, repo, id);
        }
        return match state.blobs.get(tail) {
            Some(_) if request.method == "HEAD" => {
                answer(200, vec![("Docker-Content-Digest", tail.into())])
            }
            _ => error(404, "BLOB_UNKNOWN"),
        };
    }
    if let Some((repo, reference)) = rest.split_once("/manifests/")
        && request.method == "PUT"
    {
        return put_manifest(request, state, repo, reference);
    }
    error(404, "NOT_FOUND")
}

fn upload(request: &Request, state: &mut State, repo: &str, id: &str) -> Response {
    let here = format!("/v2/{repo}/blobs/uploads/{id}");
    match request.method.as_str() {
        "POST" => {
            state.uploads += 1;
            let id = format!("u{}", state.uploads);
            state.sessions.insert(id.clone(), Vec::new());
            let location = format!("/v2/{repo}/blobs/uploads/{id}");
            answer(202, vec![("Location", location), ("Range", "0-0".into())])
        }
        "PATCH" if state.refuse_chunks => error(405, "UNSUPPORTED"),
        "PATCH" => {
            let Some(data) = state.sessions.get_mut(id) else {
                return error(404, "BLOB_UPLOAD_UNKNOWN");
            };
            data.extend_from_slice(&request.body);
            let range = format!("0-{}", data.len().saturating_sub(1));
            state.patches += 1;
            answer(202, vec![("Location", here), ("Range", range)])
        }
        "PUT" => {
            let Some(mut data) = state.sessions.remove(id) else {
                return error(404, "BLOB_UPLOAD_UNKNOWN");
            };
            data.extend_from_slice(&request.body);
            let digest = request
                .query
                .split('&')
                .find_map(|kv| kv.strip_prefix("digest="))
                .unwrap_or_default()
                .replace("%3A", ":")
                .replace("%3a", ":");
            if crate::digest(&data) != digest {
                return error(400, "DIGEST_INVALID");
            }
            state.blobs.insert(digest.clone(), data);
            let location = format!("/v2/{repo}/blobs/{digest}");
            answer(
                201,
                vec![("Location", location), ("Docker-Content-Digest", digest)],
            )
        }
        _ => error(405, "UNSUPPORTED"),
    }
}

fn put_manifest(request: &Request, state: &mut State, repo: &str, reference: &str) -> Response {
    let Ok(manifest) = serde_json::from_slice::<Value>(&request.body) else {
        return error(400, "MANIFEST_INVALID");
    };
    let named = |key: &str| {
        let list = manifest[key].as_array().cloned().unwrap_or_default();
        list.iter()
            .map(|d| d["digest"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    let mut blobs = named("layers");
    blobs.extend(manifest["config"]["digest"].as_str().map(String::from));
    if blobs.iter().any(|d| !state.blobs.contains_key(d)) {
        return error(400, "MANIFEST_BLOB_UNKNOWN");
    }
    if named("manifests")
        .iter()
        .any(|d| !state.manifests.contains_key(d))
    {
        return error(400, "MANIFEST_UNKNOWN");
    }
    let digest = crate::digest(&request.body);
    if reference.starts_with("sha256:") && reference != digest {
        return error(400, "DIGEST_INVALID");
    }
    for key in [reference, digest.as_str()] {
        state
            .manifests
            .insert(key.to_string(), request.body.clone());
    }
    let content_type = request
        .headers
        .get("content-type")
        .cloned()
        .unwrap_or_default();
    state
        .content_types
        .insert(reference.to_string(), content_type);
    state.manifest_puts.push(reference.to_string());
    let location = format!("/v2/{repo}/manifests/{digest}");
    answer(
        201,
        vec![("Location", location), ("Docker-Content-Digest", digest)],
    )
}
