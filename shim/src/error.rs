//! Errors of the shim and how they reach containerd.

use containerd_shim::protos::ttrpc::{self, Code};
use wasmtime_shim_runtime::ErrorKind;

/// Everything a Task request can fail with. The message is what `ctr` and `kubectl describe`
/// show, so it says what was wrong and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0} not found")]
    NotFound(String),
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} is not supported by the wasmtime shim")]
    Unimplemented(String),
    /// The guest refused to prepare: bad entrypoint, bad module, unsupported feature.
    #[error("{message}")]
    Guest { kind: ErrorKind, message: String },
    #[error("failed to {context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Guest { kind, .. } => match kind {
                ErrorKind::NotFound => Code::NOT_FOUND,
                ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
                ErrorKind::Unimplemented => Code::UNIMPLEMENTED,
                ErrorKind::Internal => Code::INTERNAL,
            },
            Error::Io { .. } | Error::Internal(_) => Code::INTERNAL,
        }
    }

    /// The message with its causes, `a: b: c`.
    pub fn chain(&self) -> String {
        wasmtime_shim_runtime::error_chain(self)
    }
}

impl From<Error> for ttrpc::Error {
    fn from(err: Error) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), err.chain()))
    }
}

impl From<containerd_shim::Error> for Error {
    fn from(err: containerd_shim::Error) -> Error {
        Error::Internal(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_variant_to_its_code_and_keeps_the_message() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let cases = [
            (
                Error::NotFound("c1".into()),
                Code::NOT_FOUND,
                "container c1 not found",
            ),
            (
                Error::AlreadyExists("c1".into()),
                Code::ALREADY_EXISTS,
                "container c1 already exists",
            ),
            (
                Error::InvalidArgument("bad".into()),
                Code::INVALID_ARGUMENT,
                "bad",
            ),
            (
                Error::FailedPrecondition("running".into()),
                Code::FAILED_PRECONDITION,
                "running",
            ),
            (
                Error::Unimplemented("Exec".into()),
                Code::UNIMPLEMENTED,
                "Exec is not supported by the wasmtime shim",
            ),
            (
                Error::Guest {
                    kind: ErrorKind::NotFound,
                    message: "entrypoint /x.wasm not found".into(),
                },
                Code::NOT_FOUND,
                "entrypoint /x.wasm not found",
            ),
            (
                Error::Guest {
                    kind: ErrorKind::InvalidArgument,
                    message: "not wasm".into(),
                },
                Code::INVALID_ARGUMENT,
                "not wasm",
            ),
            (
                Error::Guest {
                    kind: ErrorKind::Unimplemented,
                    message: "terminal is not supported".into(),
                },
                Code::UNIMPLEMENTED,
                "terminal is not supported",
            ),
            (
                Error::io("open stdout /x")(io),
                Code::INTERNAL,
                "failed to open stdout /x: No such file or directory (os error 2)",
            ),
        ];
        for (err, code, message) in cases {
            let ttrpc::Error::RpcStatus(status) = ttrpc::Error::from(err) else {
                panic!("not an RpcStatus");
            };
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), message);
        }
    }
}
