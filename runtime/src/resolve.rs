//! Finding the program: `process.args[0]` resolved inside the container's root filesystem.
//!
//! Resolution follows what a container runtime does for a native binary, with the root
//! filesystem as `/`: an absolute path is taken from the root, a path with a `/` is relative to
//! `process.cwd`, and a bare name is looked up in the directories of `PATH` from `process.env`
//! (then in `process.cwd`). Every lookup is done by the kernel with `RESOLVE_IN_ROOT`, so `..` and
//! symlinks (absolute or relative) can never leave the root filesystem: a link to `/etc/passwd`
//! means the image's `/etc/passwd`, exactly as inside a runc container.

use crate::{Error, GuestSpec};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

/// The resolved program.
#[derive(Debug)]
pub struct Entrypoint {
    /// Absolute path inside the root filesystem, for messages.
    pub path: String,
    /// The export named by a `#name` suffix of `args[0]`, if any.
    pub export: Option<String>,
    /// The file's contents.
    pub bytes: Vec<u8>,
}

/// What kind of program an entrypoint is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    /// A Wasm module or component (`\0asm`).
    Wasm,
    /// A native executable (`\x7fELF`).
    Elf,
    /// An interpreter script (`#!`).
    Script,
    /// Anything else.
    Other,
}

impl ProgramKind {
    pub fn of(head: &[u8]) -> ProgramKind {
        if head.starts_with(b"\0asm") {
            ProgramKind::Wasm
        } else if head.starts_with(b"\x7fELF") {
            ProgramKind::Elf
        } else if head.starts_with(b"#!") {
            ProgramKind::Script
        } else {
            ProgramKind::Other
        }
    }

    /// A program a native container runtime runs.
    pub fn is_native(self) -> bool {
        matches!(self, ProgramKind::Elf | ProgramKind::Script)
    }
}

impl Entrypoint {
    /// Resolves `spec.args[0]` inside `spec.rootfs` and reads it.
    pub fn resolve(spec: &GuestSpec) -> Result<Entrypoint, Error> {
        let (path, export, mut file, len) = find(spec)?;
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes)
            .map_err(Error::io(format!("read entrypoint {path}")))?;
        Ok(Entrypoint {
            path,
            export,
            bytes,
        })
    }

    /// Resolves `spec.args[0]` as [`Entrypoint::resolve`] does, also inside the spec's
    /// volumes (a bind mount at a prefix of the path; they are not mounted yet when the shim
    /// asks), and reads only enough of it to tell what kind of program it is.
    pub fn probe(spec: &GuestSpec) -> Result<(String, ProgramKind), Error> {
        let (path, _, file, _) = find(spec)?;
        let mut head = [0u8; 4];
        let mut n = 0;
        let mut reader = file.take(4);
        while n < head.len() {
            match reader.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(read) => n += read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("read entrypoint {path}"))(e)),
            }
        }
        Ok((path, ProgramKind::of(&head[..n])))
    }
}

/// The entrypoint's guest path, `#export`, open file and length.
fn find(spec: &GuestSpec) -> Result<(String, Option<String>, File, u64), Error> {
    let arg0 = spec.args.first().filter(|a| !a.is_empty()).ok_or_else(|| {
        Error::InvalidSpec("process.args is empty; args[0] must name the .wasm file".into())
    })?;
    let (file, export) = split_export(arg0);
    let root = open_root(&spec.rootfs)?;

    let candidates = candidates(file, spec);
    for candidate in &candidates {
        let opened = match volume_of(spec, candidate) {
            Some((dir, rest)) => open_root(dir)
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|volume| open_in_root(&volume, &rest)),
            None => open_in_root(&root, candidate),
        };
        match opened {
            Ok(fd) => {
                let file = File::from(fd);
                let meta = file
                    .metadata()
                    .map_err(Error::io(format!("stat entrypoint {candidate}")))?;
                if !meta.is_file() {
                    return Err(Error::EntrypointNotFile {
                        path: candidate.clone(),
                    });
                }
                return Ok((candidate.clone(), export, file, meta.len()));
            }
            Err(e) if is_missing(&e) => continue,
            Err(e) => {
                return Err(Error::Io {
                    context: format!("open entrypoint {candidate}"),
                    source: e,
                });
            }
        }
    }
    let hint = if file.contains('/') {
        String::new()
    } else {
        format!(
            " (searched PATH and the working directory: {})",
            candidates.join(", ")
        )
    };
    Err(Error::EntrypointNotFound {
        path: file.to_string(),
        hint,
    })
}

fn open_root(dir: &Path) -> Result<OwnedFd, Error> {
    rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Io {
        context: format!("open root filesystem {}", dir.display()),
        source: e.into(),
    })
}

/// The host directory of the last volume mounted at a prefix of `path` (later mounts shadow
/// earlier ones) and the rest of the path inside it.
fn volume_of<'a>(spec: &'a GuestSpec, path: &str) -> Option<(&'a Path, String)> {
    spec.mounts.iter().rev().find_map(|m| {
        let dest = m.guest.trim_end_matches('/');
        let rest = path.strip_prefix(dest)?;
        (rest.starts_with('/') && !dest.is_empty()).then(|| (m.host.as_path(), rest.to_string()))
    })
}

/// `app.wasm#name` → (`app.wasm`, `Some("name")`). A `#` followed by nothing, or by a path
/// separator, is part of the file name.
pub(crate) fn split_export(arg0: &str) -> (&str, Option<String>) {
    match arg0.rsplit_once('#') {
        Some((file, name)) if !file.is_empty() && !name.is_empty() && !name.contains('/') => {
            (file, Some(name.to_string()))
        }
        _ => (arg0, None),
    }
}

/// The guest paths to try, in order.
fn candidates(file: &str, spec: &GuestSpec) -> Vec<String> {
    if file.starts_with('/') {
        return vec![file.to_string()];
    }
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    if file.contains('/') {
        return vec![join(cwd, file)];
    }
    let mut out: Vec<String> = spec
        .env_var("PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| join(dir, file))
        .collect();
    let in_cwd = join(cwd, file);
    if !out.contains(&in_cwd) {
        out.push(in_cwd);
    }
    out
}

fn join(dir: &str, file: &str) -> String {
    let dir = if dir.starts_with('/') {
        dir.to_string()
    } else {
        format!("/{dir}")
    };
    format!("{}/{}", dir.trim_end_matches('/'), file)
}

fn open_in_root(root: &OwnedFd, path: &str) -> std::io::Result<OwnedFd> {
    let path = Path::new(path);
    loop {
        match rustix::fs::openat2(
            root,
            path,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(Into::into),
        }
    }
}

fn is_missing(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rootfs: &Path, args: &[&str], env: &[&str], cwd: &str) -> GuestSpec {
        GuestSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            cwd: cwd.into(),
            rootfs: rootfs.into(),
            ..Default::default()
        }
    }

    #[test]
    fn export_suffix() {
        assert_eq!(split_export("a.wasm#run"), ("a.wasm", Some("run".into())));
        assert_eq!(split_export("a.wasm#"), ("a.wasm#", None));
        assert_eq!(split_export("#x"), ("#x", None));
        assert_eq!(split_export("dir#1/a.wasm"), ("dir#1/a.wasm", None));
    }

    #[test]
    fn candidate_order() {
        let s = spec(Path::new("/"), &["x"], &["PATH=/bin:rel:/usr/bin/"], "/app");
        assert_eq!(candidates("x", &s), ["/bin/x", "/usr/bin/x", "/app/x"]);
        assert_eq!(candidates("./x", &s), ["/app/./x"]);
        assert_eq!(candidates("/x", &s), ["/x"]);
        let s = spec(Path::new("/"), &["x"], &[], "");
        assert_eq!(candidates("x", &s), ["/x"]);
    }

    #[test]
    fn resolution_stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("app/prog.wasm"), b"inside").unwrap();
        std::fs::write(dir.path().join("outside.wasm"), b"outside").unwrap();
        std::os::unix::fs::symlink("/app/prog.wasm", root.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../../outside.wasm", root.join("app/rel-link")).unwrap();

        let read = |args: &[&str], env: &[&str], cwd: &str| {
            Entrypoint::resolve(&spec(&root, args, env, cwd)).map(|e| (e.path, e.bytes))
        };
        // Absolute, cwd-relative and PATH lookups.
        assert_eq!(read(&["/app/prog.wasm"], &[], "/").unwrap().1, b"inside");
        assert_eq!(read(&["prog.wasm"], &[], "/app").unwrap().1, b"inside");
        let (path, _) = read(&["prog.wasm"], &["PATH=/bin:/app"], "/").unwrap();
        assert_eq!(path, "/app/prog.wasm");
        // An absolute symlink is followed inside the root, as in a container.
        assert_eq!(read(&["/abs-link"], &[], "/").unwrap().1, b"inside");
        // `..` and relative symlinks are clamped at the root: the host file is never reached.
        assert!(matches!(
            read(&["/app/rel-link"], &[], "/"),
            Err(Error::EntrypointNotFound { .. })
        ));
        assert!(matches!(
            read(&["../outside.wasm"], &[], "/"),
            Err(Error::EntrypointNotFound { .. })
        ));
        assert!(matches!(
            read(&["/app"], &[], "/"),
            Err(Error::EntrypointNotFile { .. })
        ));
        let err = read(&["missing.wasm"], &["PATH=/bin"], "/").unwrap_err();
        assert_eq!(
            err.to_string(),
            "entrypoint missing.wasm not found in the container's root filesystem \
             (searched PATH and the working directory: /bin/missing.wasm, /missing.wasm)"
        );
        assert!(matches!(read(&[], &[], "/"), Err(Error::InvalidSpec(_))));
    }
}
