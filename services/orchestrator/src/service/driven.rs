//! A response stream that drives its producer itself.
//!
//! A follower ([`crate::engine::Engine::follow`]) sends a run's events into
//! a channel. Spawned as a task of its own, every live event crossed two
//! task hand-offs: the run's task wakes the follower's, which wakes the
//! response stream's (hyper's task for the HTTP/2 stream). [`Driven`]
//! instead polls the follower from the response stream's `poll_next`, so an
//! event goes from the run's task straight to the task that writes it.
//!
//! The follower still runs only as fast as the client reads, within the
//! channel's capacity, and it is dropped with the stream when the client
//! goes away (a spawned follower noticed that at its next send).
//!
//! Items cross the channel boxed: tokio's channel takes its buffer 32 slots
//! at a time, and a run's event inline is about 200 bytes, so every open
//! stream held 6 KiB of slots for a few events.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

/// The items `producer` sends into the channel whose receiver is given,
/// produced as the stream is polled. Ends when the producer has ended and
/// its items are read: the channel's own end, since the producer held its
/// senders.
pub(crate) struct Driven<T> {
    producer: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    receiver: mpsc::Receiver<Box<T>>,
}

impl<T> Driven<T> {
    /// `producer` must hold the only senders of `receiver`'s channel.
    pub(crate) fn new(
        producer: impl Future<Output = ()> + Send + 'static,
        receiver: mpsc::Receiver<Box<T>>,
    ) -> Self {
        Self {
            producer: Some(Box::pin(producer)),
            receiver,
        }
    }
}

impl<T> std::fmt::Debug for Driven<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driven")
            .field("producing", &self.producer.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> Stream for Driven<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // What was produced already goes first.
        if let Poll::Ready(item) = self.receiver.poll_recv(cx) {
            return Poll::Ready(item.map(|item| *item));
        }
        let Some(producer) = self.producer.as_mut() else {
            // The producer ended and its senders with it, so `poll_recv`
            // itself says when all is read (`Ready(None)`). Pending here is
            // tokio's cooperative budget, spent with items still queued: it
            // has arranged the next poll, and the items are not lost.
            return Poll::Pending;
        };
        if producer.as_mut().poll(cx).is_ready() {
            self.producer = None;
        }
        // What this poll produced, or the end once all is read.
        self.receiver
            .poll_recv(cx)
            .map(|item| item.map(|item| *item))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn items_come_in_order_then_the_end() {
        let (sender, receiver) = mpsc::channel(2);
        let producer = async move {
            for n in 0..10 {
                if n % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                // More items than the channel holds: the producer waits
                // for the stream to be read, inside the stream's own poll.
                if sender.send(Box::new(n)).await.is_err() {
                    return;
                }
            }
        };
        let items: Vec<i32> = Driven::new(producer, receiver).collect().await;
        assert_eq!(items, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn every_item_of_an_ended_producer_comes_out() {
        // More items than tokio's cooperative budget lets one poll of the
        // task receive: past it, `poll_recv` answers Pending with items
        // still queued, which is not the end.
        let (sender, receiver) = mpsc::channel(1_000);
        let producer = async move {
            for n in 0..600 {
                sender.send(Box::new(n)).await.unwrap();
            }
        };
        let items: Vec<i32> = Driven::new(producer, receiver).collect().await;
        assert_eq!(items, (0..600).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn dropping_the_stream_drops_the_producer() {
        let (sender, receiver) = mpsc::channel(4);
        let (dropped_sender, dropped) = tokio::sync::oneshot::channel::<()>();
        let producer = async move {
            let _gone = dropped_sender;
            for n in 0.. {
                if sender.send(Box::new(n)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let mut stream = Driven::new(producer, receiver);
        assert_eq!(stream.next().await, Some(0));
        assert_eq!(stream.next().await, Some(1));
        drop(stream);
        // The producer (and what it holds) went with the stream.
        assert!(dropped.await.is_err());
    }

    #[tokio::test]
    async fn an_empty_producer_is_an_empty_stream() {
        let (_, receiver) = mpsc::channel::<Box<u8>>(1);
        let stream = Driven::new(async {}, receiver);
        assert_eq!(stream.collect::<Vec<_>>().await, Vec::<u8>::new());
    }
}
