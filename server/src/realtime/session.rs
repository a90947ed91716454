//! One live connection's life, written once for both framings: it ends when the hub evicts it
//! (revoked tokens, overflow, shutdown), when its token expires, or when the transport says so
//! (the client left, stopped answering pings, broke the protocol); until then it writes pushes
//! and whatever the transport itself must write. Each framing implements [`Sink`].

use std::future::Future;

use super::hub::{Eviction, Push, Subscription};
use crate::auth::Caller;

/// Why a session ended, for the transport to tell the client its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Evicted(Eviction),
    /// The token ran out: log in again.
    Expired,
    /// No pong within the idle timeout.
    Idle,
    /// A frame over the size limit.
    TooBig,
    /// The client left or the connection broke: there is nobody to tell.
    Gone,
}

/// A framing's write side.
pub trait Sink: Send {
    /// Something the transport must write on its own account (a reply to a client frame, a
    /// ping).
    type Duty: Send;

    /// Waits for the transport's next duty, or for a reason to end.
    fn next_duty(&mut self) -> impl Future<Output = Result<Self::Duty, Ending>> + Send;
    fn perform(&mut self, duty: Self::Duty) -> impl Future<Output = Result<(), Ending>> + Send;
    /// Hands a push to the client; an error ends the session (gone, or too slow to keep up).
    fn push(&mut self, push: &Push) -> impl Future<Output = Result<(), Ending>> + Send;
    /// Tells the client why the session ended, where there is someone to tell.
    fn close(&mut self, ending: Ending) -> impl Future<Output = ()> + Send;
}

enum Work<D> {
    Push(std::sync::Arc<Push>),
    Duty(D),
}

/// Runs a connection until it ends, then closes it. `transport` names it in the metrics.
pub async fn run<S: Sink>(
    transport: &'static str,
    mut sink: S,
    mut subscription: Subscription,
    caller: Caller,
) {
    let _live = crate::metrics::LiveConnection::open(transport);
    let expired = tokio::time::sleep(caller.time_left());
    tokio::pin!(expired);
    let ending = loop {
        let work = tokio::select! {
            biased;
            reason = subscription.signal.evicted() => break Ending::Evicted(reason),
            () = &mut expired => break Ending::Expired,
            push = subscription.queue.recv() => match push {
                Some(push) => Work::Push(push),
                None => break Ending::Gone,
            },
            duty = sink.next_duty() => match duty {
                Ok(duty) => Work::Duty(duty),
                Err(ending) => break ending,
            },
        };
        // A client that stops reading blocks this write; eviction must still get through.
        let written = tokio::select! {
            biased;
            reason = subscription.signal.evicted() => break Ending::Evicted(reason),
            written = async {
                match work {
                    Work::Push(push) => sink.push(&push).await,
                    Work::Duty(duty) => sink.perform(duty).await,
                }
            } => written,
        };
        if let Err(ending) = written {
            break ending;
        }
    };
    sink.close(ending).await;
}
