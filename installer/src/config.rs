//! containerd's configuration, read and patched with a TOML library that keeps the file's
//! comments, order and formatting. Pure functions: no file system, no processes.
//!
//! Two schemas: version 2 (containerd 1.6/1.7; CRI runtimes under
//! `plugins."io.containerd.grpc.v1.cri".containerd.runtimes`) and version 3 (containerd 2.x;
//! under `plugins."io.containerd.cri.v1.runtime".containerd.runtimes`).

use crate::Error;
use toml_edit::{DocumentMut, Item, Table, Value};

/// The shim's runtime type, as containerd names shims: `containerd-shim-wasmtime-v1`.
pub const RUNTIME_TYPE: &str = "io.containerd.wasmtime.v1";

/// The pod annotations CRI passes to the shim: the executor choice
/// (`wasmtime.containerd.io/executor.<container>`) is set on a pod.
pub const POD_ANNOTATIONS: &str = "wasmtime.containerd.io/*";

/// A containerd configuration schema (the file's `version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    V2,
    V3,
}

impl Schema {
    /// The plugin whose `containerd.runtimes` table holds the CRI runtime handlers.
    pub fn runtime_plugin(self) -> &'static str {
        match self {
            Schema::V2 => "io.containerd.grpc.v1.cri",
            Schema::V3 => "io.containerd.cri.v1.runtime",
        }
    }

    pub fn number(self) -> i64 {
        match self {
            Schema::V2 => 2,
            Schema::V3 => 3,
        }
    }

    /// The TOML header of a handler's table, as a user would write it.
    pub fn runtime_header(self, handler: &str) -> String {
        format!(
            "plugins.\"{}\".containerd.runtimes.{}",
            self.runtime_plugin(),
            quote_key(handler)
        )
    }
}

/// The runtime entry the installer registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// The CRI runtime handler (RuntimeClass `handler`).
    pub handler: String,
    /// `options.SystemdCgroup`: the node's cgroup driver.
    pub systemd_cgroup: bool,
}

/// Parses a configuration, refusing what is not valid TOML.
pub fn parse(text: &str) -> Result<DocumentMut, Error> {
    text.parse::<DocumentMut>()
        .map_err(|e| Error::InvalidConfig(e.to_string().trim_end().to_string()))
}

/// The schema a document declares. A file without `version` is version 1, which neither
/// containerd 1.6+ writes nor this installer edits.
pub fn schema(doc: &DocumentMut) -> Result<Schema, Error> {
    match doc.get("version").map(|v| v.as_integer()) {
        Some(Some(2)) => Ok(Schema::V2),
        Some(Some(3)) => Ok(Schema::V3),
        Some(Some(n)) => Err(Error::UnsupportedConfigVersion(n.to_string())),
        Some(None) => Err(Error::UnsupportedConfigVersion(
            "a `version` that is not an integer".into(),
        )),
        None => Err(Error::UnsupportedConfigVersion(
            "1 (no `version` key; migrate it with `containerd config migrate`)".into(),
        )),
    }
}

fn path_get<'a>(mut item: &'a Item, keys: &[&str]) -> Option<&'a Item> {
    for k in keys {
        item = item.as_table_like()?.get(k)?;
    }
    Some(item)
}

fn runtimes_path(schema: Schema) -> [&'static str; 4] {
    ["plugins", schema.runtime_plugin(), "containerd", "runtimes"]
}

/// The handler's table, when the document has one.
pub fn runtime_entry<'a>(doc: &'a DocumentMut, schema: Schema, handler: &str) -> Option<&'a Item> {
    path_get(doc.as_item(), &runtimes_path(schema))?
        .as_table_like()?
        .get(handler)
}

/// `options.SystemdCgroup` of the `runc` handler: the cgroup driver the node's pods use.
pub fn runc_systemd_cgroup(doc: &DocumentMut, schema: Schema) -> Option<bool> {
    let runc = runtime_entry(doc, schema, "runc")?;
    path_get(runc, &["options", "SystemdCgroup"])?.as_bool()
}

/// What the document says about the handler, compared with what the installer registers.
#[derive(Debug, PartialEq, Eq)]
pub enum Registered {
    /// No entry for the handler.
    No,
    /// An entry for this shim with the same cgroup driver.
    Same,
    /// An entry for this shim whose `SystemdCgroup` differs or is missing, or whose
    /// `pod_annotations` lack the shim's.
    Differs,
    /// The handler runs something else: the installer refuses to take it over.
    Other(String),
}

pub fn registered(doc: &DocumentMut, schema: Schema, rt: &Runtime) -> Registered {
    let Some(entry) = runtime_entry(doc, schema, &rt.handler) else {
        return Registered::No;
    };
    let runtime_type = path_get(entry, &["runtime_type"]).and_then(|v| v.as_str());
    if runtime_type != Some(RUNTIME_TYPE) {
        return Registered::Other(runtime_type.unwrap_or("(no runtime_type)").to_string());
    }
    let driver = path_get(entry, &["options", "SystemdCgroup"]).and_then(|v| v.as_bool());
    if driver == Some(rt.systemd_cgroup) && passes_annotations(entry) {
        Registered::Same
    } else {
        Registered::Differs
    }
}

/// Whether the entry's `pod_annotations` pass the shim's (containerd matches them as globs).
fn passes_annotations(entry: &Item) -> bool {
    let Some(list) = path_get(entry, &["pod_annotations"]).and_then(Item::as_array) else {
        return false;
    };
    list.iter().filter_map(Value::as_str).any(|pattern| {
        pattern == POD_ANNOTATIONS
            || glob::Pattern::new(pattern).is_ok_and(|p| p.matches(POD_ANNOTATIONS))
    })
}

fn annotations_array() -> toml_edit::Array {
    let mut list = toml_edit::Array::new();
    list.push(POD_ANNOTATIONS);
    list
}

/// Walks to (creating as implicit tables) the handlers table.
fn runtimes_table_mut(doc: &mut DocumentMut, schema: Schema) -> Result<&mut Table, Error> {
    let mut table = doc.as_table_mut();
    for key in runtimes_path(schema) {
        let item = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        table = item.as_table_mut().ok_or_else(|| {
            Error::InvalidConfig(format!(
                "`{key}` under {} is not a table the installer can edit (inline tables are not \
                 supported)",
                schema.runtime_plugin()
            ))
        })?;
    }
    Ok(table)
}

fn runtime_table(rt: &Runtime) -> Table {
    let mut options = Table::new();
    options.insert("SystemdCgroup", toml_edit::value(rt.systemd_cgroup));
    let mut t = Table::new();
    t.insert("runtime_type", toml_edit::value(RUNTIME_TYPE));
    t.insert("pod_annotations", toml_edit::value(annotations_array()));
    t.insert("options", Item::Table(options));
    t
}

/// Whether registering a handler in a version 2 file must also write containerd's built-in
/// `runc` entry: containerd 1.x replaces its default `runtimes` map with the file's, so a file
/// that names no runtime and gets one loses `runc`, the default runtime, and with it every
/// ordinary pod. (containerd 2 merges; the entry is harmless there.)
pub fn missing_default_runtime(doc: &DocumentMut, schema: Schema) -> bool {
    if schema != Schema::V2 {
        return false;
    }
    let containerd = path_get(
        doc.as_item(),
        &["plugins", schema.runtime_plugin(), "containerd"],
    );
    let default = containerd
        .and_then(|c| path_get(c, &["default_runtime_name"]))
        .and_then(|v| v.as_str())
        .unwrap_or("runc");
    default == "runc" && runtime_entry(doc, schema, "runc").is_none()
}

/// The whitespace after the last line break of a decor prefix: a line's indentation.
fn indentation(decor: &toml_edit::Decor) -> Option<String> {
    let raw = decor.prefix()?.as_str()?;
    Some(raw.rsplit('\n').next().unwrap_or("").to_string())
}

/// Indents a new handler table as its sibling (e.g. `runc`) is, so the edit reads as if
/// written by hand in files that indent their tables.
fn indent_like(table: &mut Table, sibling: &Table) {
    let header = indentation(sibling.decor()).unwrap_or_default();
    let keys = sibling
        .iter()
        .find(|(_, i)| i.is_value())
        .and_then(|(k, _)| sibling.key(k))
        .and_then(|k| indentation(k.leaf_decor()))
        .unwrap_or_default();
    let options = sibling.get("options").and_then(Item::as_table);
    let options_header = options
        .and_then(|t| indentation(t.decor()))
        .unwrap_or_else(|| header.clone());
    let options_keys = options
        .and_then(|t| t.iter().next().and_then(|(k, _)| t.key(k)))
        .and_then(|k| indentation(k.leaf_decor()))
        .unwrap_or_else(|| keys.clone());
    table.decor_mut().set_prefix(format!("\n{header}"));
    for key in ["runtime_type", "pod_annotations"] {
        if let Some(mut k) = table.key_mut(key) {
            k.leaf_decor_mut().set_prefix(keys.clone());
        }
    }
    if let Some(opts) = table.get_mut("options").and_then(Item::as_table_mut) {
        opts.decor_mut().set_prefix(options_header);
        if let Some(mut k) = opts.key_mut("SystemdCgroup") {
            k.leaf_decor_mut().set_prefix(options_keys);
        }
    }
}

/// The document with the handler registered in place (version 2 files, where containerd 1.x
/// `imports` would replace the whole CRI plugin table instead of merging into it). `None`
/// when it already is.
pub fn with_runtime(text: &str, schema: Schema, rt: &Runtime) -> Result<Option<String>, Error> {
    let mut doc = parse(text)?;
    match registered(&doc, schema, rt) {
        Registered::Same => return Ok(None),
        Registered::Other(t) => return Err(Error::HandlerTaken(rt.handler.clone(), t)),
        Registered::Differs => {
            let runtimes = runtimes_table_mut(&mut doc, schema)?;
            let item = runtimes
                .get_mut(&rt.handler)
                .ok_or_else(|| Error::InvalidConfig(format!("{} is not a table", rt.handler)))?;
            if !passes_annotations(item) {
                let entry = item.as_table_like_mut().ok_or_else(|| {
                    Error::InvalidConfig(format!("{} is not a table", rt.handler))
                })?;
                match entry.get_mut("pod_annotations") {
                    Some(list) => list
                        .as_array_mut()
                        .ok_or_else(|| {
                            Error::InvalidConfig("`pod_annotations` is not an array".into())
                        })?
                        .push(POD_ANNOTATIONS),
                    None => {
                        entry.insert("pod_annotations", toml_edit::value(annotations_array()));
                    }
                }
            }
            let entry = item
                .as_table_like_mut()
                .ok_or_else(|| Error::InvalidConfig(format!("{} is not a table", rt.handler)))?;
            let options = entry
                .entry("options")
                .or_insert(Item::Table(Table::new()))
                .as_table_like_mut()
                .ok_or_else(|| Error::InvalidConfig("runtime options is not a table".into()))?;
            options.insert("SystemdCgroup", toml_edit::value(rt.systemd_cgroup));
        }
        Registered::No => {
            let default = missing_default_runtime(&doc, schema);
            let runtimes = runtimes_table_mut(&mut doc, schema)?;
            if default {
                let mut runc = Table::new();
                runc.insert("runtime_type", toml_edit::value("io.containerd.runc.v2"));
                runtimes.insert("runc", Item::Table(runc));
            }
            let mut table = runtime_table(rt);
            if let Some(sibling) = runtimes.iter().find_map(|(_, i)| i.as_table()) {
                indent_like(&mut table, sibling);
            }
            runtimes.insert(&rt.handler, Item::Table(table));
        }
    }
    let mut out = doc.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        out.push('\n');
    }
    Ok(Some(out))
}

/// The document without the handler's table (and without tables the removal left empty and
/// implicit). Used by `uninstall` when the file changed after the install, so the backup
/// cannot simply be put back.
pub fn without_runtime(text: &str, schema: Schema, handler: &str) -> Result<Option<String>, Error> {
    let mut doc = parse(text)?;
    let Some(runtimes) = path_get_mut(doc.as_item_mut(), &runtimes_path(schema)) else {
        return Ok(None);
    };
    let Some(t) = runtimes.as_table_like_mut() else {
        return Ok(None);
    };
    if t.remove(handler).is_none() {
        return Ok(None);
    }
    Ok(Some(doc.to_string()))
}

fn path_get_mut<'a>(mut item: &'a mut Item, keys: &[&str]) -> Option<&'a mut Item> {
    for k in keys {
        item = item.as_table_like_mut()?.get_mut(k)?;
    }
    Some(item)
}

/// The drop-in file for version 3 configurations (containerd 2.x merges imported plugin tables
/// key by key into the main file's).
pub fn dropin(rt: &Runtime) -> Result<String, Error> {
    let mut doc = DocumentMut::new();
    doc.decor_mut().set_prefix(
        "# Registers the wasmtime shim as a CRI runtime handler. Written by\n\
         # wasmtime-shim-installer; `wasmtime-shim-installer uninstall` removes it.\n",
    );
    doc.insert("version", toml_edit::value(Schema::V3.number()));
    runtimes_table_mut(&mut doc, Schema::V3)?.insert(&rt.handler, Item::Table(runtime_table(rt)));
    Ok(doc.to_string())
}

/// The `imports` entries of a document, resolved as containerd resolves them (relative paths
/// against the directory of the configuration file).
pub fn imports(doc: &DocumentMut, config_dir: &str) -> Vec<String> {
    let Some(arr) = doc.get("imports").and_then(|i| i.as_array()) else {
        return Vec::new();
    };
    arr.iter()
        .filter_map(Value::as_str)
        .map(|s| {
            if s.starts_with('/') {
                s.to_string()
            } else {
                format!("{}/{s}", config_dir.trim_end_matches('/'))
            }
        })
        .collect()
}

/// Whether an `imports` entry (a glob) already names `path`.
pub fn imported(doc: &DocumentMut, config_dir: &str, path: &str) -> bool {
    imports(doc, config_dir).iter().any(|pattern| {
        glob::Pattern::new(pattern)
            .map(|p| p.matches(path))
            .unwrap_or(pattern == path)
    })
}

/// The document with `path` appended to `imports` (created when missing).
pub fn with_import(text: &str, path: &str) -> Result<String, Error> {
    let mut doc = parse(text)?;
    match doc.get_mut("imports") {
        Some(item) => {
            let arr = item.as_array_mut().ok_or_else(|| {
                Error::InvalidConfig("`imports` is not an array of strings".into())
            })?;
            arr.push(path);
        }
        None => {
            // The root table's keys are written before its first sub-table, wherever added.
            let mut arr = toml_edit::Array::new();
            arr.push(path);
            doc.insert("imports", toml_edit::value(arr));
        }
    }
    Ok(doc.to_string())
}

/// The document without the `imports` entry `path` (and without `imports` when that leaves it
/// empty and the installer created it).
pub fn without_import(text: &str, path: &str, drop_empty: bool) -> Result<Option<String>, Error> {
    let mut doc = parse(text)?;
    let Some(arr) = doc.get_mut("imports").and_then(|i| i.as_array_mut()) else {
        return Ok(None);
    };
    let before = arr.len();
    arr.retain(|v| v.as_str() != Some(path));
    if arr.len() == before {
        return Ok(None);
    }
    if arr.is_empty() && drop_empty {
        doc.remove("imports");
    }
    Ok(Some(doc.to_string()))
}

fn quote_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(systemd: bool) -> Runtime {
        Runtime {
            handler: "wasmtime".into(),
            systemd_cgroup: systemd,
        }
    }

    #[test]
    fn schemas_are_read_from_version() {
        let s = |t: &str| schema(&parse(t).unwrap()).map_err(|e| e.to_string());
        assert_eq!(s("version = 2"), Ok(Schema::V2));
        assert_eq!(s("version = 3"), Ok(Schema::V3));
        assert!(s("[plugins.cri]").unwrap_err().contains("version 1"));
        assert!(s("version = 4").unwrap_err().contains("version 4"));
        assert!(
            parse("[a")
                .unwrap_err()
                .to_string()
                .contains("not valid TOML")
        );
    }

    #[test]
    fn a_v2_handler_goes_beside_runc_in_runc_s_indentation() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n";
        let out = with_runtime(text, Schema::V2, &rt(true)).unwrap().unwrap();
        assert_eq!(
            out,
            format!(
                "{text}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\n  runtime_type = \"io.containerd.wasmtime.v1\"\n  pod_annotations = [\"wasmtime.containerd.io/*\"]\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime.options]\n  SystemdCgroup = true\n"
            )
        );
        assert_eq!(with_runtime(&out, Schema::V2, &rt(true)).unwrap(), None);
        // Another driver updates the key only; a removal takes the table out again.
        let other = with_runtime(&out, Schema::V2, &rt(false)).unwrap().unwrap();
        assert!(other.contains("SystemdCgroup = false") && !other.contains("SystemdCgroup = true"));
        assert_eq!(
            without_runtime(&out, Schema::V2, "wasmtime")
                .unwrap()
                .unwrap(),
            text
        );
    }

    #[test]
    fn an_entry_without_the_shim_s_pod_annotations_gets_them_added() {
        let head = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\nruntime_type = \"io.containerd.wasmtime.v1\"\n";
        let opts = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime.options]\nSystemdCgroup = false\n";
        let bare = format!("{head}{opts}");
        let doc = parse(&bare).unwrap();
        assert_eq!(
            registered(&doc, Schema::V2, &rt(false)),
            Registered::Differs
        );
        let out = with_runtime(&bare, Schema::V2, &rt(false))
            .unwrap()
            .unwrap();
        assert!(
            out.contains("pod_annotations = [\"wasmtime.containerd.io/*\"]"),
            "{out}"
        );
        assert_eq!(with_runtime(&out, Schema::V2, &rt(false)).unwrap(), None);
        // The user's own annotations stay; a glob that covers the shim's is enough.
        let own = format!("{head}pod_annotations = [\"example.com/*\"]\n{opts}");
        let out = with_runtime(&own, Schema::V2, &rt(false)).unwrap().unwrap();
        assert!(
            out.contains("[\"example.com/*\", \"wasmtime.containerd.io/*\"]"),
            "{out}"
        );
        let wide = format!("{head}pod_annotations = [\"*\"]\n{opts}");
        assert_eq!(with_runtime(&wide, Schema::V2, &rt(false)).unwrap(), None);
    }

    #[test]
    fn a_v2_file_without_runc_gets_runc_too() {
        let out = with_runtime("version = 2\n", Schema::V2, &rt(false))
            .unwrap()
            .unwrap();
        let doc = parse(&out).unwrap();
        assert!(runtime_entry(&doc, Schema::V2, "runc").is_some(), "{out}");
        assert_eq!(registered(&doc, Schema::V2, &rt(false)), Registered::Same);
        assert!(!missing_default_runtime(
            &parse("version = 3\n").unwrap(),
            Schema::V3
        ));
    }

    #[test]
    fn a_handler_of_another_runtime_is_not_taken_over() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\nruntime_type = \"io.containerd.spin.v2\"\n";
        let err = with_runtime(text, Schema::V2, &rt(false)).unwrap_err();
        assert!(matches!(err, Error::HandlerTaken(_, ref t) if t == "io.containerd.spin.v2"));
    }

    #[test]
    fn imports_are_matched_as_globs_and_added_and_removed() {
        let doc =
            parse("version = 3\nimports = [\"/etc/containerd/conf.d/*.toml\", \"rel.toml\"]\n")
                .unwrap();
        assert!(imported(
            &doc,
            "/etc/containerd",
            "/etc/containerd/conf.d/wasmtime-shim.toml"
        ));
        assert!(imported(
            &doc,
            "/etc/containerd",
            "/etc/containerd/rel.toml"
        ));
        assert!(!imported(
            &doc,
            "/etc/containerd",
            "/etc/other/wasmtime-shim.toml"
        ));

        let text = "version = 3\n\n[plugins]\n";
        let added = with_import(text, "/d/w.toml").unwrap();
        assert_eq!(
            added,
            "version = 3\nimports = [\"/d/w.toml\"]\n\n[plugins]\n"
        );
        assert_eq!(
            without_import(&added, "/d/w.toml", true).unwrap().unwrap(),
            text
        );
        let two = with_import("version = 3\nimports = [\"/a.toml\"]\n", "/d/w.toml").unwrap();
        assert_eq!(two, "version = 3\nimports = [\"/a.toml\", \"/d/w.toml\"]\n");
        assert_eq!(without_import(&two, "/x.toml", false).unwrap(), None);
    }

    #[test]
    fn the_dropin_is_a_version_3_file_with_the_handler() {
        let text = dropin(&rt(true)).unwrap();
        let doc = parse(&text).unwrap();
        assert_eq!(schema(&doc).unwrap(), Schema::V3);
        assert_eq!(registered(&doc, Schema::V3, &rt(true)), Registered::Same);
        assert!(text.starts_with("# Registers the wasmtime shim"), "{text}");
    }
}
