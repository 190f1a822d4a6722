//! The pool inside a ractor application: spawned as a linked child of the
//! application's own actor, and invalidated by another actor that holds only
//! the pool's `ActorRef` and talks to it with `SupervisorMsg` messages.
//!
//! ```text
//! cargo run --example embed_in_ractor
//! ```
//!
//! - `AppActor` spawns the pool with `PoolBuilder::spawn_linked`, so ractor
//!   tells it when the pool stops (`handle_supervisor_evt`), and it keeps
//!   the `Pool` handle, which keeps the pool alive.
//! - `RotationActor` learns that a tenant's credentials changed (in a real
//!   service: from a secret store's webhook) and retires the tenant's
//!   clients with `SupervisorMsg::InvalidateByPrefix`, without a `Pool` handle.
//! - The app shuts the pool down; as its supervisor it is notified, and stops.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use warmpool::{Pool, PoolError, SupervisorMsg, hash_credentials};

/// A stand-in for an SDK client.
#[derive(Debug)]
struct ProviderClient;

async fn connect() -> Result<ProviderClient, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(50)).await; // TLS + auth
    Ok(ProviderClient)
}

/// The application's own actor: the pool's parent in the supervision tree.
struct AppActor;

/// What the rest of the program asks the app.
enum AppMsg {
    /// A handle on the pool, for code that asks for instances.
    Pool(RpcReplyPort<Pool<ProviderClient>>),
    /// Shut the pool down and report how many instances were disposed.
    Shutdown(RpcReplyPort<u64>),
}

impl Actor for AppActor {
    type Msg = AppMsg;
    type State = Pool<ProviderClient>;
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<AppMsg>, _: ()) -> Result<Self::State, ActorProcessingErr> {
        let pool = Pool::builder()
            .name("llm-clients") // also findable with `ActorRef::where_is`
            .spawn_linked(myself.get_cell())
            .await?;
        Ok(pool)
    }

    async fn handle(
        &self,
        _myself: ActorRef<AppMsg>,
        message: AppMsg,
        pool: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AppMsg::Pool(reply) => {
                let _ = reply.send(pool.clone());
            }
            AppMsg::Shutdown(reply) => {
                let report = pool.shutdown(Duration::from_secs(5)).await?;
                let _ = reply.send(report.disposed);
            }
        }
        Ok(())
    }

    // ractor's default stops the parent whenever a child stops or fails;
    // written out here to say what the app does about it.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<AppMsg>,
        event: SupervisionEvent,
        _pool: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(child, _, reason) => {
                println!(
                    "app: the pool's supervisor {:?} stopped ({reason:?}); the app stops too",
                    child.get_name()
                );
                myself.stop(None);
            }
            SupervisionEvent::ActorFailed(child, error) => {
                println!("app: the pool's supervisor {:?} failed: {error}", child.get_name());
                myself.stop(None);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Listens for credential rotations and retires the affected clients.
struct RotationActor;

/// A tenant's credentials changed; the reply is how many keys were retired.
struct Rotated {
    tenant: String,
    reply: RpcReplyPort<usize>,
}

impl Actor for RotationActor {
    type Msg = Rotated;
    /// The pool's supervisor: all this actor needs, no `Pool` handle.
    type State = ActorRef<SupervisorMsg<ProviderClient>>;
    type Arguments = ActorRef<SupervisorMsg<ProviderClient>>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Rotated>,
        pool: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(pool)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Rotated>,
        Rotated { tenant, reply }: Rotated,
        pool: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let retired = ractor::call!(pool, |reply| SupervisorMsg::InvalidateByPrefix {
            prefix: format!("{tenant}:"),
            reply,
        })?;
        let _ = reply.send(retired);
        Ok(())
    }
}

async fn client_for(pool: &Pool<ProviderClient>, key: &str, api_key: &str) -> Result<String, PoolError> {
    let hash = hash_credentials(&serde_json::json!({ "api_key": api_key })).expect("JSON hashes");
    let lease = pool.get_or_create(key, hash, connect).await?;
    Ok(format!("client #{}", lease.instance_id()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (app, app_done) = Actor::spawn(None, AppActor, ()).await?;
    let pool = ractor::call!(app, AppMsg::Pool)?;
    let (rotation, rotation_done) = Actor::spawn(None, RotationActor, pool.actor()).await?;

    for key in ["acme:openai", "acme:anthropic", "globex:openai"] {
        println!("{key:<15} -> {}", client_for(&pool, key, "sk-1").await?);
    }

    // Another actor retires acme's clients through messages.
    let retired = ractor::call!(rotation, |reply| Rotated {
        tenant: "acme".into(),
        reply
    })?;
    let stats = ractor::call!(pool.actor(), |reply| SupervisorMsg::Stats { reply })?;
    println!(
        "rotation actor: acme rotated, {retired} keys retired; resident now {:?}",
        stats.keys
    );
    println!(
        "acme:openai     -> {} (rebuilt)",
        client_for(&pool, "acme:openai", "sk-2").await?
    );

    // The app shuts its pool down; as the pool's parent it hears of it.
    let disposed = ractor::call!(app, AppMsg::Shutdown)?;
    app_done.await?;
    println!("app: stopped; the pool's shutdown disposed {disposed} clients");
    match client_for(&pool, "acme:openai", "sk-2").await {
        Err(PoolError::ShutDown) => println!("a call after the shutdown -> PoolError::ShutDown"),
        other => println!("unexpected: {other:?}"),
    }
    rotation.stop(None);
    rotation_done.await?;
    Ok(())
}
