//! AIOS's RabbitMQ client, shared by the operator and the agents: the topology (declared
//! idempotently by whoever connects first), publishing with confirms (dispatches, cancels,
//! events), and consumers with manual acks.

use std::{collections::BTreeSet, time::Duration};

use aios_crds::{
    bus::{MemoryNote, Message, TaskCancel, TaskDispatch, TaskEvent},
    names::bus as names,
};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind,
    options::{
        BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub mod tls;

pub use tls::CaBundle;

/// How many times RabbitMQ delivers a dispatch before dead-lettering it.
pub const DELIVERY_LIMIT: i64 = 5;

/// How many times a consume is asked for when the broker fails it with a recoverable
/// error.
const CONSUME_ATTEMPTS: u32 = 4;

/// How long a publish the broker refuses (a negative confirm) waits before each time it
/// is sent again: a quorum queue refuses messages for a moment while it elects its
/// leader (a broker just started, or a member lost), and a queue at its length limit
/// refuses until it is drained. The receivers tell a message sent twice by its id.
const REPUBLISH_DELAYS: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(400),
    std::time::Duration::from_millis(1600),
];

/// What went wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A connection, channel or declaration failed.
    #[error("{action} failed: {source}")]
    Amqp {
        /// What was being done.
        action: String,
        /// The client's error.
        #[source]
        source: lapin::Error,
    },
    /// The TLS handshake with an `amqps://` endpoint failed (see [`tls::check_amqps`]).
    #[error("connecting to RabbitMQ at {endpoint} failed: TLS: {detail}")]
    Tls {
        /// The URL, without its password.
        endpoint: String,
        /// Why.
        detail: String,
    },
    /// The broker did not confirm a publish.
    #[error("the broker refused {what}")]
    NotConfirmed {
        /// What was published.
        what: String,
    },
    /// A message could not be encoded.
    #[error("encoding {kind}")]
    Encode {
        /// The message kind.
        kind: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The broker did not answer a publish in time.
    #[error("the broker did not confirm {what} within {seconds}s")]
    TimedOut {
        /// What was published.
        what: String,
        /// How long was waited.
        seconds: u64,
    },
    /// Shutdown began while connecting.
    #[error("shutting down")]
    ShuttingDown,
}

impl BusError {
    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Amqp { .. } => "amqp",
            Self::Tls { .. } => "tls",
            Self::NotConfirmed { .. } => "not_confirmed",
            Self::TimedOut { .. } => "timed_out",
            Self::Encode { .. } => "encode",
            Self::ShuttingDown => "shutdown",
        }
    }
}

/// The longest a publish may take, confirm included: a broker that never answers fails
/// the publish (its caller retries; message ids make a republish safe) rather than
/// holding the caller — a reconcile, an agent's report — forever.
pub const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn bounded<T>(
    what: &str,
    work: impl std::future::Future<Output = Result<T, BusError>>,
) -> Result<T, BusError> {
    tokio::time::timeout(PUBLISH_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(BusError::TimedOut {
                what: what.to_owned(),
                seconds: PUBLISH_TIMEOUT.as_secs(),
            })
        })
}

fn amqp(action: impl Into<String>) -> impl FnOnce(lapin::Error) -> BusError {
    let action = action.into();
    move |source| BusError::Amqp { action, source }
}

/// A connection to RabbitMQ with a confirming publisher channel.
#[derive(Debug)]
pub struct Bus {
    connection: Connection,
    /// The confirming channel publishes and declarations go through; replaced when the
    /// broker closes it (a channel error closes the channel, not the connection).
    publisher: Mutex<Channel>,
    declared_queues: Mutex<BTreeSet<String>>,
}

impl Bus {
    /// Connects, retrying with exponential backoff (1 s doubling to 30 s) until it
    /// succeeds or `shutdown` is cancelled, and declares the base topology. An
    /// `amqps://` URL is verified against the system's roots and `ca`.
    pub async fn connect(
        url: &str,
        ca: Option<&CaBundle>,
        shutdown: &CancellationToken,
    ) -> Result<Self, BusError> {
        let mut delay = Duration::from_secs(1);
        loop {
            match Self::connect_once(url, ca).await {
                Ok(bus) => return Ok(bus),
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?delay, "cannot reach RabbitMQ");
                    tokio::select! {
                        () = shutdown.cancelled() => return Err(BusError::ShuttingDown),
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Connects once (see [`Bus::connect`]); the error names the endpoint, without its
    /// password.
    pub async fn connect_once(url: &str, ca: Option<&CaBundle>) -> Result<Self, BusError> {
        let endpoint = aios_crds::text::without_userinfo(url);
        if url.starts_with("amqps://") {
            tls::check_amqps(url, ca)
                .await
                .map_err(|detail| BusError::Tls {
                    endpoint: endpoint.clone(),
                    detail,
                })?;
        }
        let connection = lapin::DefaultConnectionBuilder::new()
            .map_err(amqp("starting the AMQP client"))?
            .with_uri_str(url.to_owned())
            .with_properties(ConnectionProperties::default().enable_auto_recover())
            .with_tls_config(tls::amqp_tls(ca))
            .connect()
            .await
            .map_err(amqp(format!("connecting to RabbitMQ at {endpoint}")))?;
        let publisher = open_publisher(&connection).await?;
        let bus = Self {
            connection,
            publisher: Mutex::new(publisher),
            declared_queues: Mutex::new(BTreeSet::new()),
        };
        bus.declare_topology().await?;
        Ok(bus)
    }

    /// The publishing channel, reopened if the broker closed it.
    async fn channel(&self) -> Result<Channel, BusError> {
        let mut channel = self.publisher.lock().await;
        if !channel.status().connected() && self.connection.status().connected() {
            tracing::warn!("the publishing channel was closed; opening a new one");
            *channel = open_publisher(&self.connection).await?;
        }
        Ok(channel.clone())
    }

    /// Closes the connection; unacknowledged deliveries go back to their queues.
    pub async fn close(&self) {
        if let Err(err) = self.connection.close(200, "shutting down".into()).await {
            tracing::debug!(error = %err, "closing the RabbitMQ connection");
        }
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Declares, idempotently, the exchanges and the operator's queues.
    async fn declare_topology(&self) -> Result<(), BusError> {
        let ch = &self.channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for (name, kind) in [
            (names::TASKS_EXCHANGE, ExchangeKind::Direct),
            (names::EVENTS_EXCHANGE, ExchangeKind::Topic),
            (names::CONTROL_EXCHANGE, ExchangeKind::Fanout),
            (names::DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout),
            (names::MEMORY_EXCHANGE, ExchangeKind::Direct),
        ] {
            ch.exchange_declare(name.into(), kind, durable, FieldTable::default())
                .await
                .map_err(amqp(format!("declaring exchange {name}")))?;
        }
        declare_quorum_queue(ch, names::DEAD_LETTER_QUEUE, FieldTable::default()).await?;
        bind(
            ch,
            names::DEAD_LETTER_QUEUE,
            names::DEAD_LETTER_EXCHANGE,
            "",
        )
        .await?;
        declare_quorum_queue(ch, names::OPERATOR_EVENTS_QUEUE, FieldTable::default()).await?;
        bind(
            ch,
            names::OPERATOR_EVENTS_QUEUE,
            names::EVENTS_EXCHANGE,
            names::EVENT_BINDING_ALL,
        )
        .await
    }

    /// Declares the queue of `role` (once per process; declaring is idempotent anyway):
    /// a quorum queue bound to the dispatch exchange, dead-lettering after
    /// [`DELIVERY_LIMIT`] deliveries.
    pub async fn ensure_role_queue(&self, namespace: &str, role: &str) -> Result<(), BusError> {
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(names::DEAD_LETTER_EXCHANGE)),
        );
        self.ensure_queue(
            &names::role_queue(namespace, role),
            names::TASKS_EXCHANGE,
            &names::routing_key(namespace, role),
            args,
        )
        .await
    }

    /// The messages ready in `queue` and its consumers, by a passive declare on a
    /// channel of its own (a missing queue closes the channel it is asked on).
    pub async fn queue_depth(&self, queue: &str) -> Result<(u32, u32), BusError> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(amqp("opening a channel"))?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp("reading a queue's depth"));
        let _ = channel.close(200, "done".into()).await;
        let declared = declared?;
        Ok((declared.message_count(), declared.consumer_count()))
    }

    /// Declares the memory-note queue of `role`: a quorum queue bound to the memory
    /// exchange. A note its agents cannot store after [`DELIVERY_LIMIT`] deliveries is
    /// dropped (memory is context, not state), not dead-lettered with the dispatches.
    pub async fn ensure_memory_queue(&self, namespace: &str, role: &str) -> Result<(), BusError> {
        self.ensure_queue(
            &names::memory_queue(namespace, role),
            names::MEMORY_EXCHANGE,
            &names::routing_key(namespace, role),
            FieldTable::default(),
        )
        .await
    }

    /// Declares `queue` (once per process) with a delivery limit and binds it to
    /// `exchange` with `key`.
    async fn ensure_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        mut args: FieldTable,
    ) -> Result<(), BusError> {
        let mut declared = self.declared_queues.lock().await;
        if declared.contains(queue) {
            return Ok(());
        }
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        let channel = self.channel().await?;
        declare_quorum_queue(&channel, queue, args).await?;
        bind(&channel, queue, exchange, key).await?;
        declared.insert(queue.to_owned());
        Ok(())
    }

    /// Publishes a dispatch to its role's queue and waits for the broker's confirm. The
    /// message id is `<task uid>-<attempt>`, so a republish is recognised downstream.
    pub async fn publish_dispatch(&self, dispatch: &TaskDispatch) -> Result<(), BusError> {
        let id = dispatch.attempt_id();
        let what = format!("dispatch {}", id.message_id());
        bounded(&what, async {
            self.ensure_role_queue(&dispatch.task.namespace, &dispatch.spec.role)
                .await?;
            self.publish_dispatch_now(dispatch).await
        })
        .await
    }

    async fn publish_dispatch_now(&self, dispatch: &TaskDispatch) -> Result<(), BusError> {
        let id = dispatch.attempt_id();
        let mut headers = FieldTable::default();
        headers.insert(
            names::HEADER_TASK_UID.into(),
            AMQPValue::LongString(id.task_uid.as_str().into()),
        );
        headers.insert(
            names::HEADER_ATTEMPT.into(),
            AMQPValue::LongLongInt(i64::from(id.attempt)),
        );
        headers.insert(
            names::HEADER_PROJECT.into(),
            AMQPValue::LongString(
                format!("{}/{}", dispatch.project.namespace, dispatch.project.name).into(),
            ),
        );
        let what = format!("dispatch {}", id.message_id());
        self.publish(
            names::TASKS_EXCHANGE,
            &names::routing_key(&dispatch.task.namespace, &dispatch.spec.role),
            dispatch,
            &id.message_id(),
            headers,
            &what,
        )
        .await
    }

    /// Tells every agent to stop an attempt.
    pub async fn publish_cancel(&self, cancel: &TaskCancel) -> Result<(), BusError> {
        let id = cancel.attempt_id().message_id();
        let what = format!("cancel {id}");
        bounded(
            &what,
            self.publish(
                names::CONTROL_EXCHANGE,
                "",
                cancel,
                &format!("cancel-{id}"),
                FieldTable::default(),
                &what,
            ),
        )
        .await
    }

    /// Publishes a note for the agents of `role` in the note's Project's namespace to
    /// remember; it waits in their queue while none runs.
    pub async fn publish_note(&self, role: &str, note: &MemoryNote) -> Result<(), BusError> {
        let id = format!(
            "note-{}-{}-{}",
            note.project.uid,
            note.task.as_deref().unwrap_or("-"),
            note.kind
        );
        let what = format!("memory note {id}");
        bounded(&what, async {
            let namespace = &note.project.namespace;
            self.ensure_memory_queue(namespace, role).await?;
            self.publish(
                names::MEMORY_EXCHANGE,
                &names::routing_key(namespace, role),
                note,
                &id,
                FieldTable::default(),
                &what,
            )
            .await
        })
        .await
    }

    /// Publishes an agent's event about a task (agents use this; so do tests that play
    /// the agents).
    pub async fn publish_event(&self, event: &TaskEvent) -> Result<(), BusError> {
        let id = format!(
            "{}-{}-{}",
            event.attempt_id().message_id(),
            event.routing_key(),
            event.at
        );
        let what = format!("event {id}");
        bounded(
            &what,
            self.publish(
                names::EVENTS_EXCHANGE,
                event.routing_key(),
                event,
                &id,
                FieldTable::default(),
                &what,
            ),
        )
        .await
    }

    /// A consumer of cancel messages: a private queue, deleted with the connection,
    /// bound to the control exchange. The queue is named here rather than by the broker:
    /// after a reconnect (a broker restart deletes exclusive queues) the client declares
    /// it and its binding again by name, which the broker refuses for its own `amq.gen-*`
    /// names — the agent would no longer hear cancels.
    pub async fn consume_control(&self, tag: &str) -> Result<Consumer, BusError> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(amqp("opening a channel"))?;
        let queue = channel
            .queue_declare(
                control_queue_name(tag).as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp("declaring a control queue"))?;
        let name = queue.name().as_str().to_owned();
        bind(&channel, &name, names::CONTROL_EXCHANGE, "").await?;
        channel
            .basic_consume(
                name.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp("consuming the control queue"))
    }

    async fn publish<M: Message>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &M,
        message_id: &str,
        mut headers: FieldTable,
        what: &str,
    ) -> Result<(), BusError> {
        let body = message.encode().map_err(|source| BusError::Encode {
            kind: M::KIND,
            source,
        })?;
        headers.insert(
            names::HEADER_SCHEMA_VERSION.into(),
            AMQPValue::LongLongInt(i64::from(message.schema_version())),
        );
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from(names::CONTENT_TYPE_JSON))
            .with_message_id(ShortString::from(message_id))
            .with_headers(headers);
        // Mandatory: a message no queue takes comes back instead of vanishing.
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let mut delays = REPUBLISH_DELAYS.iter();
        loop {
            let confirmation = self
                .channel()
                .await?
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    &body,
                    properties.clone(),
                )
                .await
                .map_err(amqp(format!("publishing {what}")))?
                .await
                .map_err(amqp(format!("waiting for the confirm of {what}")))?;
            let refused = !confirmation.is_ack();
            // A message that came back found no queue: sending it again will not help.
            let returned = confirmation.take_message().is_some();
            match delays.next() {
                Some(delay) if refused && !returned => {
                    tracing::warn!(what, retry_in = ?delay, "the broker refused a publish; sending it again");
                    tokio::time::sleep(*delay).await;
                }
                _ if refused || returned => {
                    return Err(BusError::NotConfirmed {
                        what: what.to_owned(),
                    });
                }
                _ => return Ok(()),
            }
        }
    }

    /// A consumer of `queue` on a channel of its own, with manual acks and `prefetch`
    /// unacknowledged messages at most. A consume the broker refuses, or one asked while
    /// the connection is being recovered, is asked again on a new channel once the
    /// connection is back, up to [`CONSUME_ATTEMPTS`] times in all.
    pub async fn consume(
        &self,
        queue: &str,
        tag: &str,
        prefetch: u16,
    ) -> Result<Consumer, BusError> {
        let mut attempt = 1;
        loop {
            let (err, channel) = match self.consume_once(queue, tag, prefetch).await {
                Ok(consumer) => return Ok(consumer),
                Err(failed) => failed,
            };
            if attempt >= CONSUME_ATTEMPTS {
                return Err(amqp(format!("consuming {queue}"))(err));
            }
            // A broker under load may refuse a consume of a quorum queue whose members
            // have not settled (INTERNAL_ERROR, which closes the connection; the client
            // reconnects) or close the channel; and the connection may be recovering
            // from such a close when a channel is asked for. The consume is asked again
            // on a new channel once the connection is back.
            tracing::warn!(queue, attempt, error = %err, "consuming failed; asking again");
            match channel {
                Some(channel) => {
                    if let Ok(Ok(())) =
                        tokio::time::timeout(PUBLISH_TIMEOUT, channel.wait_for_recovery(err)).await
                    {
                        let _ = channel.close(200, "asking again".into()).await;
                    }
                }
                None => self.wait_for_connection(PUBLISH_TIMEOUT).await,
            }
            tokio::time::sleep(Duration::from_millis(250) * attempt).await;
            attempt += 1;
        }
    }

    /// One consume: the error and, when one was opened, the channel it came on.
    async fn consume_once(
        &self,
        queue: &str,
        tag: &str,
        prefetch: u16,
    ) -> Result<Consumer, (lapin::Error, Option<Channel>)> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|err| (err, None))?;
        let asked = async {
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            channel
                .basic_consume(
                    queue.into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        };
        asked.await.map_err(|err| (err, Some(channel.clone())))
    }

    /// Waits, at most `limit`, while the connection is being recovered (reconnecting, or
    /// connecting again).
    async fn wait_for_connection(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let recovering =
            |status: &lapin::ConnectionStatus| status.reconnecting() || status.connecting();
        while recovering(self.connection.status()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A control queue's name: the exchange's, the consumer's tag and what makes it unique
/// to this process and call; never the broker's reserved `amq.` prefix.
fn control_queue_name(tag: &str) -> String {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{}.{tag}.{}-{nanos:x}-{n}",
        names::CONTROL_EXCHANGE,
        std::process::id()
    )
}

async fn open_publisher(connection: &Connection) -> Result<Channel, BusError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp("opening a channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp("enabling publisher confirms"))?;
    Ok(channel)
}

async fn declare_quorum_queue(
    ch: &Channel,
    name: &str,
    mut args: FieldTable,
) -> Result<(), BusError> {
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .map_err(amqp(format!("declaring queue {name}")))?;
    Ok(())
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), BusError> {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(amqp(format!("binding {queue} to {exchange}")))
}
