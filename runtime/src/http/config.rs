//! The server's settings, read from the container's environment so that a pod spec sets them
//! like any other: `env:` entries next to the image.

use crate::{Error, GuestSpec};
use std::net::SocketAddr;
use std::time::Duration;

/// The listen address. Also what existing wasi:http shims read, so their manifests work as is.
pub const ADDR_VAR: &str = "WASMTIME_HTTP_PROXY_SOCKET_ADDR";
/// How many requests run at once (one instance each). Default: as many instances as the
/// container's memory limit holds, at most [`MAX_INSTANCES`].
pub const CONCURRENCY_VAR: &str = "WASMTIME_HTTP_MAX_CONCURRENCY";
/// How many more requests may wait for an instance before new ones get 503.
pub const QUEUE_VAR: &str = "WASMTIME_HTTP_MAX_QUEUED";
/// The time a request may take from arrival (waiting included) to the end of its handler.
pub const TIMEOUT_VAR: &str = "WASMTIME_HTTP_REQUEST_TIMEOUT";
/// The largest request body accepted, in bytes.
pub const BODY_VAR: &str = "WASMTIME_HTTP_MAX_BODY_BYTES";
/// Threads serving connections and running handlers. Default: the CPUs the process may use.
pub const WORKERS_VAR: &str = "WASMTIME_HTTP_WORKERS";
/// Client connections open at once; past it, new ones wait in the listen backlog.
pub const CONNECTIONS_VAR: &str = "WASMTIME_HTTP_MAX_CONNECTIONS";

/// How many requests one instance serves before it is retired (wasmtime serve's
/// `--max-instance-reuse-count`). Default 1 for a WASIp2 component (a fresh instance per
/// request), 128 for a WASIp3 one.
pub const REUSE_VAR: &str = "WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT";
/// How many requests one instance serves at once (`--max-instance-concurrent-reuse-count`).
/// Default 16 for a WASIp3 component; a WASIp2 component takes one at a time, so only 1 is
/// accepted for it.
pub const CONCURRENT_REUSE_VAR: &str = "WASMTIME_HTTP_MAX_INSTANCE_CONCURRENT_REUSE_COUNT";
/// How long a reusable instance may idle before it is dropped (`--idle-instance-timeout`).
pub const IDLE_VAR: &str = "WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT";

pub const DEFAULT_ADDR: &str = "0.0.0.0:8080";
pub const DEFAULT_QUEUE: usize = 1024;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_BODY: u64 = 16 << 20;
/// Each open connection holds a task and its buffers (tens of KiB): a flood of idle ones must
/// not take the container's memory. Idle connections close after 30 s without a request.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
const MAX_CONNECTIONS: usize = 1 << 20;
/// wasmtime serve's default for a WASIp2 component: no reuse.
pub const DEFAULT_REUSE: u64 = 1;
/// wasmtime serve's defaults for a WASIp3 component.
pub const DEFAULT_P3_REUSE: u64 = 128;
pub const DEFAULT_P3_CONCURRENT_REUSE: usize = 16;
const MAX_CONCURRENT_REUSE: usize = 1024;
/// wasmtime serve's default idle-instance timeout.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(1);
/// The most instances the pool holds (wasmtime's own pooling default).
pub const MAX_INSTANCES: u32 = 1000;

/// Which `wasi:http` a component exports: the reuse defaults differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// `wasi:http/incoming-handler@0.2.x`: one request at a time per instance.
    P2,
    /// `wasi:http/handler@0.3.x`: async, several requests at once per instance.
    P3,
}

/// What the server does, as the container's environment asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// `None`: sized from the memory limit once the component's needs are known.
    pub concurrency: Option<u32>,
    pub queue: usize,
    pub timeout: Duration,
    pub max_body: u64,
    /// `None`: one per CPU the process may use.
    pub workers: Option<usize>,
    pub max_connections: usize,
    /// Requests one instance serves before it is retired (1: no reuse).
    pub reuse: u64,
    /// Requests one instance serves at once (always 1 for a WASIp2 component).
    pub concurrent_reuse: usize,
    /// How long an instance kept for reuse may wait for its next request.
    pub idle_timeout: Duration,
}

impl HttpConfig {
    /// Reads the settings from `spec`'s environment for a component of `generation`; a
    /// malformed value is an invalid spec.
    pub fn from_spec(spec: &GuestSpec, generation: Generation) -> Result<HttpConfig, Error> {
        let var = |name: &str| spec.env_var(name).filter(|v| !v.trim().is_empty());
        let invalid = |name: &str, value: &str, expected: &str| {
            Error::InvalidSpec(format!("{name}={value:?}: expected {expected}"))
        };
        let addr = var(ADDR_VAR).unwrap_or(DEFAULT_ADDR);
        let addr = addr
            .trim()
            .parse()
            .map_err(|_| invalid(ADDR_VAR, addr, "an IP address and port, e.g. 0.0.0.0:8080"))?;
        // A whole number from 1 to `max`.
        let counted = |name: &str, max: usize| -> Result<Option<usize>, Error> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=max).contains(n))
                        .ok_or_else(|| invalid(name, v, &format!("a number from 1 to {max}")))
                })
                .transpose()
        };
        let concurrency = counted(CONCURRENCY_VAR, MAX_INSTANCES as usize)?.map(|n| n as u32);
        let queue = match var(QUEUE_VAR) {
            None => DEFAULT_QUEUE,
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| invalid(QUEUE_VAR, v, "a number of requests (0 or more)"))?,
        };
        let timeout = match var(TIMEOUT_VAR) {
            None => DEFAULT_TIMEOUT,
            Some(v) => parse_duration(v)
                .ok_or_else(|| invalid(TIMEOUT_VAR, v, "a duration such as 30s, 500ms or 2m"))?,
        };
        let max_body = match var(BODY_VAR) {
            None => DEFAULT_MAX_BODY,
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| invalid(BODY_VAR, v, "a number of bytes"))?,
        };
        let workers = counted(WORKERS_VAR, 256)?;
        let max_connections =
            counted(CONNECTIONS_VAR, MAX_CONNECTIONS)?.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let reuse = match var(REUSE_VAR) {
            None if generation == Generation::P3 => DEFAULT_P3_REUSE,
            None => DEFAULT_REUSE,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| invalid(REUSE_VAR, v, "a number of requests (1 or more)"))?,
        };
        let concurrent_reuse = match generation {
            Generation::P3 => counted(CONCURRENT_REUSE_VAR, MAX_CONCURRENT_REUSE)?
                .unwrap_or(DEFAULT_P3_CONCURRENT_REUSE),
            Generation::P2 => match var(CONCURRENT_REUSE_VAR) {
                Some(v) if v.trim() != "1" => {
                    return Err(invalid(
                        CONCURRENT_REUSE_VAR,
                        v,
                        "1: a WASIp2 component serves one request at a time per instance \
                         (concurrent reuse needs a WASIp3 component, one exporting \
                         wasi:http/handler@0.3)",
                    ));
                }
                _ => 1,
            },
        };
        let idle_timeout = match var(IDLE_VAR) {
            None => DEFAULT_IDLE,
            Some(v) => parse_duration(v)
                .ok_or_else(|| invalid(IDLE_VAR, v, "a duration such as 1s, 500ms or 2m"))?,
        };
        Ok(HttpConfig {
            addr,
            concurrency,
            queue,
            timeout,
            max_body,
            workers,
            max_connections,
            reuse,
            concurrent_reuse,
            idle_timeout,
        })
    }
}

/// `250ms`, `30s`, `2m`, or a bare number of seconds; more than zero.
fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let number: u64 = number.parse().ok()?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.checked_mul(60)?),
        _ => return None,
    };
    (!duration.is_zero()).then_some(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(env: &[&str]) -> GuestSpec {
        GuestSpec {
            env: env.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let config = HttpConfig::from_spec(&spec(&[]), Generation::P2).unwrap();
        assert_eq!(config.addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.concurrency, None);
        assert_eq!(config.queue, DEFAULT_QUEUE);
        assert_eq!(config.timeout, DEFAULT_TIMEOUT);
        assert_eq!(config.max_body, DEFAULT_MAX_BODY);
        assert_eq!(config.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(config.reuse, 1);
        assert_eq!(config.concurrent_reuse, 1);
        assert_eq!(config.idle_timeout, Duration::from_secs(1));
    }

    #[test]
    fn a_wasip3_component_gets_wasmtime_serve_s_p3_defaults() {
        let config = HttpConfig::from_spec(&spec(&[]), Generation::P3).unwrap();
        assert_eq!((config.reuse, config.concurrent_reuse), (128, 16));
        let config = HttpConfig::from_spec(
            &spec(&[
                "WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT=1",
                "WASMTIME_HTTP_MAX_INSTANCE_CONCURRENT_REUSE_COUNT=64",
            ]),
            Generation::P3,
        )
        .unwrap();
        assert_eq!((config.reuse, config.concurrent_reuse), (1, 64));
        let err = HttpConfig::from_spec(
            &spec(&["WASMTIME_HTTP_MAX_INSTANCE_CONCURRENT_REUSE_COUNT=0"]),
            Generation::P3,
        )
        .unwrap_err();
        assert!(err.to_string().contains("from 1 to 1024"), "{err}");
    }

    #[test]
    fn everything_set() {
        let config = HttpConfig::from_spec(
            &spec(&[
                "WASMTIME_HTTP_PROXY_SOCKET_ADDR=[::1]:9000",
                "WASMTIME_HTTP_MAX_CONCURRENCY=8",
                "WASMTIME_HTTP_MAX_QUEUED=0",
                "WASMTIME_HTTP_REQUEST_TIMEOUT=250ms",
                "WASMTIME_HTTP_MAX_BODY_BYTES=1048576",
                "WASMTIME_HTTP_WORKERS=3",
                "WASMTIME_HTTP_MAX_CONNECTIONS=10",
                "WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT=128",
                "WASMTIME_HTTP_MAX_INSTANCE_CONCURRENT_REUSE_COUNT=1",
                "WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT=30s",
            ]),
            Generation::P2,
        )
        .unwrap();
        assert_eq!(config.addr, "[::1]:9000".parse().unwrap());
        assert_eq!(config.concurrency, Some(8));
        assert_eq!(config.queue, 0);
        assert_eq!(config.timeout, Duration::from_millis(250));
        assert_eq!(config.max_body, 1 << 20);
        assert_eq!(config.workers, Some(3));
        assert_eq!(config.max_connections, 10);
        assert_eq!(config.reuse, 128);
        assert_eq!(config.idle_timeout, Duration::from_secs(30));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("1h"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (env, needle) in [
            (
                "WASMTIME_HTTP_PROXY_SOCKET_ADDR=localhost:80",
                "WASMTIME_HTTP_PROXY_SOCKET_ADDR",
            ),
            ("WASMTIME_HTTP_MAX_CONCURRENCY=0", "from 1 to 1000"),
            ("WASMTIME_HTTP_MAX_CONCURRENCY=5000", "from 1 to 1000"),
            (
                "WASMTIME_HTTP_REQUEST_TIMEOUT=soon",
                "WASMTIME_HTTP_REQUEST_TIMEOUT",
            ),
            ("WASMTIME_HTTP_MAX_BODY_BYTES=1MB", "a number of bytes"),
            ("WASMTIME_HTTP_WORKERS=0", "from 1 to 256"),
            (
                "WASMTIME_HTTP_MAX_CONNECTIONS=0",
                "WASMTIME_HTTP_MAX_CONNECTIONS",
            ),
            ("WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT=0", "1 or more"),
            (
                "WASMTIME_HTTP_MAX_INSTANCE_CONCURRENT_REUSE_COUNT=16",
                "needs a WASIp3",
            ),
            ("WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT=never", "IDLE_INSTANCE"),
        ] {
            let err = HttpConfig::from_spec(&spec(&[env]), Generation::P2).unwrap_err();
            assert!(matches!(err, Error::InvalidSpec(_)), "{env}");
            assert!(err.to_string().contains(needle), "{env}: {err}");
        }
    }
}
