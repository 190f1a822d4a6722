#![cfg(any(feature = "redis", feature = "nats"))]
//! One event-bus suite, run against every transport on real servers on
//! loopback (Redis 127.0.0.1:6379; NATS with JetStream 127.0.0.1:4222): the
//! scenarios are written once in `tests/common/bus.rs`. Each test uses its
//! own channel, subject or stream, so they run in parallel and again. Real
//! clock, every wait bounded.

mod common;

#[cfg(feature = "redis")]
mod redis_pubsub {
    crate::common::bus::transport_suite!(crate::common::bus::redis_fixtures::PubSub);
}

#[cfg(feature = "redis")]
mod redis_streams {
    crate::common::bus::transport_suite!(crate::common::bus::redis_fixtures::Streams, durable);
}

#[cfg(feature = "nats")]
mod nats_core {
    crate::common::bus::transport_suite!(crate::common::bus::nats_fixtures::Core);
}

#[cfg(feature = "nats")]
mod nats_jetstream {
    crate::common::bus::transport_suite!(crate::common::bus::nats_fixtures::JetStream, durable);
}
