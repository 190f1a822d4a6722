//! The pool's public messages: [`SupervisorMsg`], which an application's
//! own actors may send to [`Pool::actor`](crate::Pool::actor). Each actor's
//! protocol lives in its folder (`actors/supervisor/protocol.rs`,
//! `actors/key/protocol.rs`, `disposal.rs`); this module only names the
//! public one, which `lib.rs` re-exports once.

pub use crate::actors::supervisor::SupervisorMsg;
