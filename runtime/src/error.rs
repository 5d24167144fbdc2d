//! Errors of preparing and running a guest.

use std::path::PathBuf;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a program could not be prepared or run. A guest's own exit (including a trap) is not an
/// error: see [`crate::exit`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("entrypoint {path} not found in the container's root filesystem{hint}")]
    EntrypointNotFound { path: String, hint: String },
    #[error("entrypoint {path} is not a regular file")]
    EntrypointNotFile { path: String },
    #[error(
        "entrypoint {path} is not a WebAssembly module or component (no \\0asm header), nor \
         a native program (ELF or #! script), which would run through runc"
    )]
    NotWasm { path: String },
    #[error(
        "entrypoint {path} is a native (ELF) program, but the container is to run as \
         WebAssembly (annotation wasmtime.containerd.io/executor=wasm; without it, native \
         programs run through runc)"
    )]
    NativeProgram { path: String },
    #[error("entrypoint {path} is not valid WebAssembly")]
    InvalidWasm {
        path: String,
        #[source]
        source: Source,
    },
    #[error("entrypoint {path} cannot be linked against WASI")]
    Link {
        path: String,
        #[source]
        source: Source,
    },
    #[error("entrypoint {path} exports no function {name:?}{hint}")]
    MissingExport {
        path: String,
        name: String,
        hint: String,
    },
    #[error("{0} is not supported")]
    Unsupported(String),
    #[error("invalid process spec: {0}")]
    InvalidSpec(String),
    #[error("failed to {context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to set up the wasm engine")]
    Engine(#[source] Source),
    /// The program's image is unusable (a layer missing from containerd, or not matching its
    /// digest).
    #[error("image: {0}")]
    Image(String),
    #[error("compile cache at {dir}: {message}")]
    Cache { dir: PathBuf, message: String },
    /// The compiler process (see `Compiler::Child`) failed for another reason than the Wasm.
    #[error("compile: {0}")]
    Compiler(String),
}

/// The class of an [`Error`], for callers that map errors to protocol status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The entrypoint does not exist.
    NotFound,
    /// The spec or the program is wrong; retrying the same input fails again.
    InvalidArgument,
    /// A feature this runtime does not have yet.
    Unimplemented,
    /// The host failed (I/O, engine setup).
    Internal,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::EntrypointNotFound { .. } => ErrorKind::NotFound,
            Error::EntrypointNotFile { .. }
            | Error::NotWasm { .. }
            | Error::NativeProgram { .. }
            | Error::InvalidWasm { .. }
            | Error::Link { .. }
            | Error::MissingExport { .. }
            | Error::InvalidSpec(_)
            | Error::Image(_) => ErrorKind::InvalidArgument,
            Error::Unsupported(_) => ErrorKind::Unimplemented,
            Error::Io { .. } | Error::Engine(_) | Error::Cache { .. } | Error::Compiler(_) => {
                ErrorKind::Internal
            }
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// The message with every cause appended (`a: b: c`), as a user should see it.
    pub fn chain(&self) -> String {
        error_chain(self)
    }
}

/// `err` with every cause appended (`a: b: c`).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Turns a wasmtime error into a boxed source that keeps its whole chain in its message.
pub(crate) fn wasmtime_source(err: wasmtime::Error) -> Source {
    format!("{err:#}").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let cases = [
            (
                Error::EntrypointNotFound {
                    path: "/app.wasm".into(),
                    hint: String::new(),
                },
                ErrorKind::NotFound,
                "entrypoint /app.wasm not found in the container's root filesystem",
            ),
            (
                Error::NotWasm {
                    path: "/bin/sh".into(),
                },
                ErrorKind::InvalidArgument,
                "entrypoint /bin/sh is not a WebAssembly module or component",
            ),
            (
                Error::InvalidWasm {
                    path: "/bad.wasm".into(),
                    source: "unexpected end".into(),
                },
                ErrorKind::InvalidArgument,
                "entrypoint /bad.wasm is not valid WebAssembly: unexpected end",
            ),
            (
                Error::Unsupported("terminal".into()),
                ErrorKind::Unimplemented,
                "terminal is not supported",
            ),
        ];
        for (err, kind, message) in cases {
            assert_eq!(err.kind(), kind, "{err}");
            assert!(err.chain().starts_with(message), "{}", err.chain());
        }
    }
}
