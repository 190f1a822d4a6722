//! The floor of warmpool's design, shared by the benches: caller -> actor A
//! -> A forwards the reply port to actor B -> B replies. The same two hops
//! and three wake-ups as a pool hit, with nothing else: no key lookup, no
//! checks, no counters. Also a bare idle actor, the unit of "spawn an actor".
#![allow(dead_code)]

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

/// What B hands back: an `Arc` clone, like a lease.
pub type Payload = Arc<u64>;

pub enum RouterMsg {
    Get(usize, RpcReplyPort<Payload>),
}

pub enum HolderMsg {
    Get(RpcReplyPort<Payload>),
}

pub struct Router;
pub struct Holder;

impl Actor for Router {
    type Msg = RouterMsg;
    type State = Vec<ActorRef<HolderMsg>>;
    type Arguments = Vec<ActorRef<HolderMsg>>;

    async fn pre_start(
        &self,
        _: ActorRef<RouterMsg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<RouterMsg>,
        msg: RouterMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let RouterMsg::Get(i, reply) = msg;
        let _ = state[i].send_message(HolderMsg::Get(reply));
        Ok(())
    }
}

impl Actor for Holder {
    type Msg = HolderMsg;
    type State = Payload;
    type Arguments = Payload;

    async fn pre_start(&self, _: ActorRef<HolderMsg>, args: Payload) -> Result<Payload, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<HolderMsg>,
        msg: HolderMsg,
        state: &mut Payload,
    ) -> Result<(), ActorProcessingErr> {
        let HolderMsg::Get(reply) = msg;
        let _ = reply.send(state.clone());
        Ok(())
    }
}

/// An actor with no state that does nothing: the unit of "spawn an actor".
pub struct Idle;

impl Actor for Idle {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

pub async fn floor_call(router: &ActorRef<RouterMsg>, i: usize) -> Payload {
    match router.call(|reply| RouterMsg::Get(i, reply), None).await {
        Ok(ractor::rpc::CallResult::Success(v)) => v,
        _ => panic!("floor call failed"),
    }
}

/// A router over `keys` holders (one per key, each holding its own payload);
/// also returns the holders, which live as long as they are referenced.
pub async fn spawn_floor(keys: usize) -> (ActorRef<RouterMsg>, Vec<ActorRef<HolderMsg>>) {
    let mut holders = Vec::with_capacity(keys);
    for i in 0..keys {
        let (b, _) = Actor::spawn(None, Holder, Arc::new(i as u64)).await.unwrap();
        holders.push(b);
    }
    let (a, _) = Actor::spawn(None, Router, holders.clone()).await.unwrap();
    (a, holders)
}
