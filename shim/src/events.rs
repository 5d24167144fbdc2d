//! Task events to containerd. The shim crate's publisher queues events and forwards them from
//! one task with a timeout, so no handler waits on containerd.

use containerd_shim::Context;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;
use std::sync::Arc;

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
    pub async fn publish(&self, topic: &str, event: impl MessageDyn + 'static) {
        if let Err(err) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, Box::new(event))
            .await
        {
            tracing::warn!(topic, "event not published: {err}");
        }
    }
}
