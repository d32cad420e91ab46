//! One open Socket Mode websocket: read frames, hand each `events_api`
//! envelope to the shared intake and acknowledge it once the intake
//! returned, ping Slack, and end when the socket closes, goes silent or is
//! told to close. What happens next is the slot's business ([`super::slot`]):
//! the session only reports `hello`, `disconnect` and its end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::frame::{self, Envelope, Frame};
use super::health::SocketHealth;
use super::settings::SocketModeSettings;
use crate::ingress::slack::{IntakeError, SlackIntake};

/// An open websocket to Slack.
pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Socket, Message>;
type Stream = SplitStream<Socket>;
/// An acknowledgement frame, with the outcome label it is counted under.
type Ack = (String, &'static str);

/// What a session tells its slot.
#[derive(Debug)]
pub(super) enum SessionEvent {
    /// Slack said `hello`: envelopes may come now.
    Hello,
    /// Slack will close this socket soon, for this reason.
    Disconnect(String),
    /// The session is over; in-flight envelopes were finished first.
    Ended(EndReason),
}

/// Why a session ended.
#[derive(Debug, Clone)]
pub(super) enum EndReason {
    /// The socket was closed (by Slack or the network) or reading failed.
    Closed(String),
    /// No frame for longer than the silence timeout.
    Silent(Duration),
    /// Writing an acknowledgement or a ping failed.
    SendFailed(String),
    /// We closed it: shutdown, or replaced after a refresh.
    Closing,
}

impl EndReason {
    /// A metric label.
    pub(super) fn label(&self) -> &'static str {
        match self {
            EndReason::Closed(_) => "closed",
            EndReason::Silent(_) => "silent",
            EndReason::SendFailed(_) => "send_failed",
            EndReason::Closing => "closing",
        }
    }
}

/// What every session of a gateway shares.
#[derive(Clone)]
pub(super) struct Shared {
    pub intake: SlackIntake,
    pub settings: Arc<SocketModeSettings>,
    pub health: SocketHealth,
    /// Sessions and their envelope handlers, awaited on shutdown.
    pub tasks: TaskTracker,
}

/// The slot's end of a running session.
pub(super) struct SessionHandle {
    pub events: mpsc::UnboundedReceiver<SessionEvent>,
    /// Cancel to close the session (after its in-flight envelopes).
    pub close: CancellationToken,
    pub started: Instant,
}

/// Run `socket` as session `id` of `slot` until it ends or `parent` fires.
pub(super) fn spawn(
    socket: Socket,
    slot: usize,
    id: u64,
    shared: &Shared,
    parent: &CancellationToken,
) -> SessionHandle {
    let close = parent.child_token();
    let (events, rx) = mpsc::unbounded_channel();
    let session = Session {
        slot,
        shared: shared.clone(),
        events,
        close: close.clone(),
    };
    let span = tracing::info_span!("slack_socket", slot, connection = id);
    shared.tasks.spawn(session.run(socket).instrument(span));
    SessionHandle {
        events: rx,
        close,
        started: Instant::now(),
    }
}

struct Session {
    slot: usize,
    shared: Shared,
    events: mpsc::UnboundedSender<SessionEvent>,
    close: CancellationToken,
}

impl Session {
    async fn run(self, socket: Socket) {
        let connections = metrics::gauge!("switchboard_ingress_slack_socket_connections");
        connections.increment(1.0);
        let (mut sink, mut stream) = socket.split();
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Ack>();
        let reason = self
            .serve(&mut sink, &mut stream, &ack_tx, &mut ack_rx)
            .await;
        drop(ack_tx);
        match &reason {
            EndReason::Closing => tracing::debug!("closing the Socket Mode connection"),
            EndReason::Silent(age) => tracing::warn!(
                silent_for = ?age,
                "Socket Mode connection went silent; replacing it"
            ),
            EndReason::Closed(why) | EndReason::SendFailed(why) => {
                tracing::warn!(reason = %why, "Socket Mode connection lost")
            }
        }
        self.wind_down(&mut sink, &mut ack_rx).await;
        connections.decrement(1.0);
        self.notify(SessionEvent::Ended(reason));
    }

    fn notify(&self, event: SessionEvent) {
        // The slot drops its receiver once it moved on to a new connection;
        // nothing is waiting for this session's news then.
        if self.events.send(event).is_err() {
            tracing::trace!("slot no longer listens to this session");
        }
    }

    async fn serve(
        &self,
        sink: &mut Sink,
        stream: &mut Stream,
        ack_tx: &mpsc::UnboundedSender<Ack>,
        ack_rx: &mut mpsc::UnboundedReceiver<Ack>,
    ) -> EndReason {
        let settings = &self.shared.settings;
        let tick = settings
            .ping_interval
            .min(settings.silence_timeout / 4)
            .min(Duration::from_secs(1));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_frame = Instant::now();
        let mut last_ping = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = self.close.cancelled() => return EndReason::Closing,
                Some(ack) = ack_rx.recv() => {
                    if let Err(e) = send_ack(sink, ack).await {
                        return EndReason::SendFailed(e);
                    }
                }
                frame = stream.next() => {
                    let message = match frame {
                        None => return EndReason::Closed("socket closed".into()),
                        Some(Err(e)) => return EndReason::Closed(e.to_string()),
                        Some(Ok(message)) => message,
                    };
                    last_frame = Instant::now();
                    self.shared.health.saw_frame(self.slot);
                    match message {
                        Message::Text(text) => self.on_text(text.as_str(), ack_tx),
                        Message::Close(close) => {
                            let why = close.map_or_else(
                                || "Slack closed the socket".to_string(),
                                |c| format!("Slack closed the socket ({} {})", c.code, c.reason),
                            );
                            return EndReason::Closed(why);
                        }
                        // Pings are answered by tungstenite as it reads; a
                        // pong or a binary frame only proves the link lives.
                        _ => {}
                    }
                }
                _ = ticker.tick() => {
                    let silent = last_frame.elapsed();
                    if silent >= settings.silence_timeout {
                        return EndReason::Silent(silent);
                    }
                    if last_ping.elapsed() >= settings.ping_interval {
                        last_ping = Instant::now();
                        if let Err(e) = sink.send(Message::Ping(Bytes::new())).await {
                            return EndReason::SendFailed(format!("ping: {e}"));
                        }
                    }
                }
            }
        }
    }

    fn on_text(&self, text: &str, acks: &mpsc::UnboundedSender<Ack>) {
        match frame::parse(text) {
            Ok(Frame::Hello) => {
                tracing::info!("Socket Mode connection ready");
                self.notify(SessionEvent::Hello);
            }
            Ok(Frame::Disconnect { reason }) => {
                tracing::info!(%reason, "Slack asked this connection to disconnect");
                self.notify(SessionEvent::Disconnect(reason));
            }
            Ok(Frame::EventsApi(envelope)) => {
                let intake = self.shared.intake.clone();
                let acks = acks.clone();
                self.shared
                    .tasks
                    .spawn(take(intake, envelope, acks).in_current_span());
            }
            Ok(Frame::OtherEnvelope { kind, envelope_id }) => {
                tracing::debug!(%kind, %envelope_id, "acknowledging an envelope we do not handle");
                queue_ack(acks, frame::ack(&envelope_id), "unsupported");
            }
            Ok(Frame::Unknown { kind }) => tracing::debug!(%kind, "ignoring a Socket Mode frame"),
            Err(e) => {
                metrics::counter!("switchboard_ingress_slack_rejected_total", "reason" => "malformed_frame")
                    .increment(1);
                tracing::warn!(error = %e, "unreadable Socket Mode frame");
                // It never reads better on a redelivery: acknowledge it.
                if let Some(id) = frame::envelope_id_of(text) {
                    queue_ack(acks, frame::ack(&id), "malformed");
                }
            }
        }
    }

    /// Send the acknowledgements of envelopes still being taken, then close
    /// the socket. Bounded: a Redis stall cannot hold a replacement back.
    async fn wind_down(&self, sink: &mut Sink, acks: &mut mpsc::UnboundedReceiver<Ack>) {
        let grace = self.shared.intake.settings().enqueue_deadline + Duration::from_secs(1);
        let flush = async {
            // Ends once every handler of this session dropped its sender.
            while let Some(ack) = acks.recv().await {
                if let Err(e) = send_ack(sink, ack).await {
                    tracing::debug!(error = %e, "acknowledgement lost with the socket; Slack redelivers");
                }
            }
        };
        if tokio::time::timeout(grace, flush).await.is_err() {
            tracing::warn!("envelopes still being queued at close; Slack redelivers them");
        }
        match tokio::time::timeout(Duration::from_secs(1), sink.close()).await {
            Ok(Ok(())) => {}
            // Already closed by Slack or broken: either way it is gone.
            Ok(Err(e)) => tracing::debug!(error = %e, "closing the socket"),
            Err(_) => tracing::debug!("socket close timed out"),
        }
    }
}

async fn send_ack(sink: &mut Sink, (text, outcome): Ack) -> Result<(), String> {
    sink.send(Message::text(text))
        .await
        .map_err(|e| format!("acknowledgement: {e}"))?;
    metrics::counter!("switchboard_ingress_slack_socket_acks_total", "outcome" => outcome)
        .increment(1);
    Ok(())
}

fn queue_ack(acks: &mpsc::UnboundedSender<Ack>, text: String, outcome: &'static str) {
    // The receiver lives until every sender is gone, so this cannot fail
    // before the session's wind-down gave up waiting; then Slack redelivers.
    if acks.send((text, outcome)).is_err() {
        tracing::debug!("session closed before the acknowledgement could be sent");
    }
}

/// Take one envelope through the shared intake; acknowledge it unless the
/// queue could not take it (then Slack redelivers it, to any connection).
async fn take(intake: SlackIntake, envelope: Envelope, acks: mpsc::UnboundedSender<Ack>) {
    let Envelope {
        envelope_id,
        payload,
        retry_attempt,
        retry_reason,
    } = envelope;
    match intake.accept_value(payload).await {
        Ok(outcome) => {
            tracing::debug!(%envelope_id, retry_attempt, %retry_reason, outcome = outcome.label(), "envelope taken");
            queue_ack(&acks, frame::ack(&envelope_id), outcome.label());
        }
        Err(IntakeError::Malformed(e)) => {
            metrics::counter!("switchboard_ingress_slack_rejected_total", "reason" => e.reason())
                .increment(1);
            tracing::warn!(%envelope_id, error = %e, "acknowledging a malformed Slack event");
            queue_ack(&acks, frame::ack(&envelope_id), "malformed");
        }
        Err(e @ IntakeError::Unavailable(_)) => {
            metrics::counter!("switchboard_ingress_slack_socket_unacked_total").increment(1);
            tracing::error!(
                %envelope_id,
                retry_attempt,
                error = %e,
                "not acknowledging the envelope so Slack redelivers it"
            );
        }
    }
}
