//! The container's stdio as containerd passes it: FIFO paths (or log URIs) in CreateTaskRequest.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::path::PathBuf;

/// Opens where the guest's stdout or stderr goes.
///
/// - empty: `/dev/null`;
/// - a path (the FIFO `ctr` or CRI created): opened read-write, which never blocks and keeps
///   the pipe open while nobody reads, so output waits in the pipe for `ctr task attach`
///   instead of the guest getting EPIPE;
/// - `file://<path>`: appended to, created if missing.
pub fn open_output(what: &str, uri: &str) -> Result<File> {
    if uri.is_empty() {
        return OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .map_err(Error::io("open /dev/null"));
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(Error::io(format!("open {what} log file {path}")));
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        return Err(Error::Unimplemented(format!(
            "{what} URI scheme {scheme}:// (use a FIFO or file://)"
        )));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(uri)
        .map_err(Error::io(format!("open {what} {uri}")))
}

/// The stdin FIFO, if any. The guest opens it itself when a writer appears.
pub fn stdin_path(uri: &str) -> Result<Option<PathBuf>> {
    if uri.is_empty() {
        return Ok(None);
    }
    if uri.contains("://") {
        return Err(Error::Unimplemented(format!("stdin URI {uri}")));
    }
    Ok(Some(PathBuf::from(uri)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn outputs() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // A FIFO without a reader opens at once and buffers.
        let mut out = open_output("stdout", fifo.to_str().unwrap()).unwrap();
        out.write_all(b"hi\n").unwrap();
        let mut reader = File::open(&fifo).unwrap();
        drop(out);
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hi\n");

        let log = dir.path().join("log.txt");
        let uri = format!("file://{}", log.display());
        open_output("stdout", &uri)
            .unwrap()
            .write_all(b"a")
            .unwrap();
        open_output("stdout", &uri)
            .unwrap()
            .write_all(b"b")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "ab");

        open_output("stdout", "").unwrap().write_all(b"x").unwrap();
        let err = open_output("stdout", "binary:///bin/logger").unwrap_err();
        assert!(err.to_string().contains("binary://"), "{err}");
        let err = open_output("stderr", "/nonexistent/fifo").unwrap_err();
        assert!(
            err.chain().contains("open stderr /nonexistent/fifo"),
            "{}",
            err.chain()
        );
        assert_eq!(stdin_path("").unwrap(), None);
        assert_eq!(stdin_path("/x").unwrap(), Some(PathBuf::from("/x")));
    }
}
