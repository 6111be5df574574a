//! Typed handles (`node.actor::<A>(id)`), serializable references in
//! messages (`ActorRef<A>`), and folding a call's error into its reply's
//! (`Flatten`).

use std::future::IntoFuture;

use mesh::prelude::*;
use mesh::ActorHandle;
use mesh_testkit::fixture::local;

#[derive(Actor, Default)]
#[actor(capability = "chat")]
struct Room {
    members: Vec<String>,
}

#[derive(Actor, Default)]
#[actor(capability = "chat")]
struct User {
    greetings: Vec<String>,
}

/// `user` joins the room, which greets it back through the reference.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<usize, String>)]
struct Join {
    user: ActorRef<User>,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<usize, String>)]
struct Greet(String);

#[derive(Message, Serialize, Deserialize)]
#[message(reply = Vec<String>)]
struct Greetings;

#[mesh::handlers]
impl Room {
    async fn join(&mut self, j: Join, ctx: &Ctx) -> Result<usize, String> {
        let user = j.user.on(ctx.node());
        let hello = Greet(format!("welcome to {}", ctx.id()));
        // One `?`: the call's own error and the reply's, as a String.
        user.call(hello).await.flatten_err(|e| e.to_string())?;
        self.members.push(user.id().to_owned());
        Ok(self.members.len())
    }
}

#[mesh::handlers]
impl User {
    async fn greet(&mut self, Greet(line): Greet) -> Result<usize, String> {
        if line.contains("forbidden") {
            return Err(format!("refused: {line}"));
        }
        self.greetings.push(line);
        Ok(self.greetings.len())
    }

    async fn greetings(&mut self, _: Greetings) -> Vec<String> {
        self.greetings.clone()
    }
}

async fn node() -> Node {
    local(|b| b.capabilities(["chat"]).actor::<Room>().actor::<User>()).await
}

fn assert_send_static<T: Send + 'static>(_: &T) {}

#[tokio::test(start_paused = true)]
async fn a_handle_calls_without_turbofish_and_can_be_spawned() {
    let node = node().await;
    let ada: ActorHandle<User> = node.actor::<User>("ada");
    assert_eq!(ada.id(), "ada");
    assert_eq!(ada.call(Greet("hi".into())).await, Ok(Ok(1)));
    ada.cast(Greet("cast".into())).unwrap();
    // Owned: the handle and its call futures are Send + 'static.
    assert_send_static(&ada);
    let call = ada.call(Greet("spawned".into())).into_future();
    assert_send_static(&call);
    let spawned = tokio::spawn(call).await.unwrap();
    assert_eq!(spawned, Ok(Ok(3)));
    let clone = ada.clone();
    let n = tokio::spawn(async move {
        clone
            .call(Greet("timed".into()))
            .timeout(std::time::Duration::from_secs(1))
            .await
    })
    .await
    .unwrap();
    assert_eq!(n, Ok(Ok(4)));
    let all = ada.call(Greetings).await.unwrap();
    assert_eq!(all, ["hi", "cast", "spawned", "timed"]);
    node.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_message_carries_a_reference_the_receiver_calls() {
    let node = node().await;
    let lobby = node.actor::<Room>("lobby");
    let ada = node.actor::<User>("ada");
    assert_eq!(lobby.call(Join { user: ada.to_ref() }).await, Ok(Ok(1)));
    assert_eq!(
        ada.call(Greetings).await.unwrap(),
        ["welcome to lobby".to_owned()]
    );
    // The callee's domain error comes back through the one `?`.
    let forbidden = node.actor::<Room>("forbidden");
    let r = forbidden.call(Join { user: ada.to_ref() }).await;
    assert_eq!(r, Ok(Err("refused: welcome to forbidden".into())));
    node.shutdown().await.unwrap();
}

#[test]
fn a_reference_is_the_type_name_and_id_and_checks_the_type() {
    let r: ActorRef<User> = ActorRef::new("ada");
    let bytes = mesh::wire::encode(&r).unwrap();
    assert_eq!(
        mesh::wire::decode::<(String, String)>(&bytes).unwrap(),
        ("User".to_owned(), "ada".to_owned())
    );
    assert_eq!(mesh::wire::decode::<ActorRef<User>>(&bytes).unwrap(), r);
    let err = mesh::wire::decode::<ActorRef<Room>>(&bytes).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected a reference to Room, got User"),
        "{err}"
    );
    assert_eq!(format!("{r:?}"), r#"ActorRef(User "ada")"#);
}

#[test]
fn flatten_folds_the_call_error_into_the_reply_error() {
    let ok: Result<Result<u32, String>, Error> = Ok(Ok(1));
    assert_eq!(ok.flatten_err(|e| e.to_string()), Ok(1));
    let domain: Result<Result<u32, String>, Error> = Ok(Err("no".into()));
    assert_eq!(domain.flatten_err(|e| e.to_string()), Err("no".into()));
    let call: Result<Result<u32, String>, Error> = Err(Error::ShuttingDown);
    assert_eq!(
        call.flatten_err(|e| e.to_string()),
        Err("node is shutting down".into())
    );
}

static GOODBYES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A deactivation hook may leave out the context.
#[derive(Actor, Default)]
#[actor(capability = "chat", on_deactivate = Quiet::bye)]
struct Quiet;

impl Quiet {
    async fn bye(&mut self) {
        GOODBYES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[derive(Message, Serialize, Deserialize)]
struct Ping;

#[mesh::handlers]
impl Quiet {
    async fn ping(&mut self, _: Ping) {}
}

#[tokio::test(start_paused = true)]
async fn a_deactivation_hook_without_the_context_runs() {
    let node = Node::builder()
        .default_node(false)
        .capabilities(["chat"])
        .actor::<Quiet>()
        .start()
        .await
        .unwrap();
    node.actor::<Quiet>("q").call(Ping).await.unwrap();
    node.shutdown().await.unwrap();
    assert_eq!(GOODBYES.load(std::sync::atomic::Ordering::SeqCst), 1);
}
