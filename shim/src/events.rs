//! Task events to containerd. The shim crate's publisher queues events and forwards them from
//! one task with a timeout, so no handler waits on containerd.
//!
//! The envelope is built here rather than by the publisher's `publish`, which names each event
//! through protobuf reflection: the first event would parse the descriptors of containerd's
//! protos and of `descriptor.proto` (with its comments) into about 400 KiB of heap that every
//! shim on the node then keeps for its whole life.

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::Events as _;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::publisher::RemotePublisher;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A task event, with the protobuf name containerd decodes it by.
pub trait Event: Message {
    const TYPE_URL: &'static str;
}

macro_rules! events {
    ($($ty:ident),* $(,)?) => {
        $(impl Event for $ty {
            const TYPE_URL: &'static str = concat!("containerd.events.", stringify!($ty));
        })*
    };
}

events!(
    TaskCreate,
    TaskStart,
    TaskExit,
    TaskOOM,
    TaskPaused,
    TaskResumed,
    TaskDelete,
    TaskExecAdded,
    TaskExecStarted
);

#[derive(Clone)]
pub struct Events {
    publisher: Arc<RemotePublisher>,
    namespace: String,
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        Events {
            publisher: Arc::new(publisher),
            namespace: namespace.to_string(),
        }
    }

    /// Queues `event` under `topic`. A full queue is logged, not returned: an event that cannot
    /// be delivered must not fail the request that caused it.
    pub async fn publish<E: Event>(&self, topic: &str, event: E) {
        let request = match envelope(topic, &self.namespace, &event) {
            Ok(envelope) => ForwardRequest {
                envelope: Some(envelope).into(),
                ..Default::default()
            },
            Err(err) => {
                tracing::warn!(topic, "event not published: {err}");
                return;
            }
        };
        let ctx = TtrpcContext {
            mh: Default::default(),
            metadata: Default::default(),
            timeout_nano: 0,
        };
        // `forward` is the publisher's queue entry point (the one containerd's own event
        // forwarding uses); it returns once the event is queued.
        if let Err(err) = self.publisher.forward(&ctx, request).await {
            tracing::warn!(topic, "event not published: {err}");
        }
    }
}

/// The envelope containerd expects: topic, namespace, time, and the event as an `Any`.
fn envelope<E: Event>(topic: &str, namespace: &str, event: &E) -> Result<Envelope, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    let value = event.write_to_bytes().map_err(|e| e.to_string())?;
    Ok(Envelope {
        timestamp: Some(Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
            ..Default::default()
        })
        .into(),
        namespace: namespace.to_string(),
        topic: topic.to_string(),
        event: Some(Any {
            type_url: E::TYPE_URL.to_string(),
            value,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::MessageFull;

    /// The hand-written names are the ones protobuf reflection gives (what containerd's
    /// publisher used, and what containerd decodes by).
    #[test]
    fn type_urls_match_the_protobuf_names() {
        fn check<E: Event + MessageFull>() {
            assert_eq!(E::TYPE_URL, E::descriptor().full_name());
        }
        check::<TaskCreate>();
        check::<TaskStart>();
        check::<TaskExit>();
        check::<TaskOOM>();
        check::<TaskPaused>();
        check::<TaskResumed>();
        check::<TaskDelete>();
    }

    #[test]
    fn the_envelope_carries_the_event() {
        let exit = TaskExit {
            container_id: "c1".into(),
            exit_status: 3,
            ..Default::default()
        };
        let env = envelope("/tasks/exit", "k8s.io", &exit).unwrap();
        assert_eq!(env.topic, "/tasks/exit");
        assert_eq!(env.namespace, "k8s.io");
        let any = env.event.as_ref().unwrap();
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        let back = TaskExit::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.exit_status, 3);
        assert!(env.timestamp.seconds > 0);
    }
}
