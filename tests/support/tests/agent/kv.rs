//! The Consul test agent's sessions, KV and `/v1/txn` (`consul_kv.rs`),
//! pinned to Consul's documentation and code as summed up in
//! `shared/reference/chaos-and-leases.md` section 2: each test names the
//! documented behaviour it checks. The timing rules are checked exactly
//! on the sans-IO state (time passed in); the HTTP tests run against a
//! real `TestConsul` over TCP, on a paused clock where time matters.

use std::time::Duration;

use mesh_testkit::consul_agent::TestConsul;
use mesh_testkit::consul_catalog::{Catalog, TimeScale};
use mesh_testkit::consul_kv::{base64_decode, base64_encode, Kv, PutMode, TxnOp, TxnOutcome};
use serde_json::{json, Value};
use tokio::time::Instant;

// ---- The state, with time passed in -----------------------------------

fn catalog() -> Catalog {
    let mut c = Catalog::new(TimeScale::default());
    c.add_node("agent-0", "127.0.0.1");
    c
}

fn create(kv: &mut Kv, c: &mut Catalog, body: Value, now: Instant) -> String {
    let idx = c.next_index();
    kv.session_create(c, "agent-0", body.to_string().as_bytes(), idx, now)
        .expect("session created")
}

/// session.mdx: the TTL "is a lower bound"; `session_ttl.go`: the
/// leader's timer runs TTL x `SessionTTLMultiplier` (2), from create and
/// from every renew.
#[test]
fn the_ttl_is_a_lower_bound_and_the_timer_runs_twice_the_ttl_from_the_last_renew() {
    let t0 = Instant::now();
    let (mut kv, mut c) = (Kv::new(1.0), catalog());
    let id = create(&mut kv, &mut c, json!({"TTL": "10s"}), t0);
    let ms = Duration::from_millis;
    assert!(
        kv.due(&c, t0 + ms(19_999)).is_empty(),
        "valid up to 2 x TTL"
    );
    assert_eq!(kv.due(&c, t0 + ms(20_000)), vec![id.clone()]);
    // A renew at 15 s restarts the timer: due at 35 s, not at 20 s.
    assert!(kv.session_renew(&id, t0 + ms(15_000)).is_some());
    assert!(kv.due(&c, t0 + ms(34_999)).is_empty());
    assert_eq!(kv.due(&c, t0 + ms(35_000)), vec![id.clone()]);
    // A renew does not move any index (no Raft write, [18d]).
    let before = kv.session_index();
    kv.session_renew(&id, t0 + ms(16_000));
    assert_eq!(kv.session_index(), before);
    // Invalidated: a renew finds nothing (the endpoint's 404).
    let idx = c.next_index();
    assert!(kv.invalidate(&id, idx, t0 + ms(35_000)));
    assert!(kv.session_renew(&id, t0 + ms(35_001)).is_none());
    // No TTL: never due on time.
    let forever = create(&mut kv, &mut c, json!({}), t0);
    assert!(!kv
        .due(&c, t0 + Duration::from_secs(1_000_000))
        .contains(&forever));
}

/// The TimeScale's `ttl` factor scales session TTLs and lock-delays as it
/// scales check TTLs, so process tests can use the 10 s floor quickly.
#[test]
fn scaled_time_keeps_the_session_rules() {
    let t0 = Instant::now();
    let (mut kv, mut c) = (Kv::new(0.01), catalog());
    let id = create(
        &mut kv,
        &mut c,
        json!({"TTL": "10s", "LockDelay": "5s", "NodeChecks": []}),
        t0,
    );
    // The JSON shows the values as given.
    let (info, _) = kv.session_info(&id);
    assert_eq!(
        (&info[0]["TTL"], &info[0]["LockDelay"]),
        (&json!("10s"), &json!(5_000_000_000u64))
    );
    let ms = Duration::from_millis;
    assert!(kv.due(&c, t0 + ms(199)).is_empty());
    assert_eq!(kv.due(&c, t0 + ms(200)), vec![id.clone()]);
    let idx = c.next_index();
    kv.put("k", b"v", 0, PutMode::Acquire(id.clone()), idx, t0)
        .unwrap();
    let idx = c.next_index();
    kv.invalidate(&id, idx, t0 + ms(200));
    assert!(kv.lock_delayed("k", t0 + ms(249)));
    assert!(!kv.lock_delayed("k", t0 + ms(250)));
}

/// `state/session.go`: the lock-delay is capped at `MaxLockDelay` (60 s)
/// and starts when the session is invalidated; `kvs_endpoint.go`: a
/// voluntary release sets none.
#[test]
fn lock_delay_starts_at_invalidation_is_capped_at_60s_and_a_release_sets_none() {
    let t0 = Instant::now();
    let (mut kv, mut c) = (Kv::new(1.0), catalog());
    let s1 = create(&mut kv, &mut c, json!({"LockDelay": "90s"}), t0);
    let s2 = create(&mut kv, &mut c, json!({}), t0);
    let idx = c.next_index();
    assert!(kv
        .put("a", b"", 0, PutMode::Acquire(s1.clone()), idx, t0)
        .unwrap());
    let idx = c.next_index();
    assert!(kv
        .put("b", b"", 0, PutMode::Acquire(s1.clone()), idx, t0)
        .unwrap());
    let idx = c.next_index();
    assert!(kv
        .put("b", b"", 0, PutMode::Release(s1.clone()), idx, t0)
        .unwrap());
    let at = t0 + Duration::from_secs(100);
    let idx = c.next_index();
    kv.invalidate(&s1, idx, at);
    assert!(kv.lock_delayed("a", at + Duration::from_secs(59)));
    assert!(
        !kv.lock_delayed("a", at + Duration::from_secs(60)),
        "capped"
    );
    assert!(!kv.lock_delayed("b", at), "released before: no delay");
    let idx = c.next_index();
    assert!(kv
        .put("b", b"", 0, PutMode::Acquire(s2.clone()), idx, at)
        .unwrap());
    let idx = c.next_index();
    assert!(!kv
        .put(
            "a",
            b"",
            0,
            PutMode::Acquire(s2),
            idx,
            at + Duration::from_secs(59)
        )
        .unwrap());
}

/// `state/txn.go`: a failed transaction returns every failing op and
/// leaves the store as it was, tombstones and table index included.
#[test]
fn a_failed_txn_restores_the_store_exactly() {
    let t0 = Instant::now();
    let (mut kv, mut c) = (Kv::new(1.0), catalog());
    let idx = c.next_index();
    kv.put("x/a", b"1", 0, PutMode::Set, idx, t0).unwrap();
    let idx = c.next_index();
    kv.put("x/b", b"2", 0, PutMode::Set, idx, t0).unwrap();
    let before = (kv.entries.clone(), kv.list("x/"), kv.get("gone"));
    let op = |verb: &str, key: &str| TxnOp {
        verb: verb.into(),
        key: key.into(),
        value: b"new".to_vec(),
        flags: 0,
        index: 0,
        session: String::new(),
    };
    let out = kv.txn(
        &[
            op("delete-tree", "x/"),
            op("set", "x/c"),
            op("check-not-exists", "x/c"),
        ],
        || c.next_index(),
        t0,
    );
    let TxnOutcome::Failed(errors) = out else {
        panic!("must fail")
    };
    assert_eq!(errors, vec![(2, "key \"x/c\" exists".to_owned())]);
    assert_eq!((kv.entries.clone(), kv.list("x/"), kv.get("gone")), before);
}

#[test]
fn base64_is_the_standard_padded_alphabet() {
    for (raw, enc) in [
        (&b""[..], ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"\xff\xfe\xfd\x00", "//79AA=="),
    ] {
        assert_eq!(base64_encode(raw), enc);
        assert_eq!(base64_decode(enc).unwrap(), raw);
    }
    assert!(base64_decode("Zm9").is_err());
    assert!(base64_decode("Z=9v").is_err());
}

// ---- Over HTTP ------------------------------------------------------------

struct Http {
    client: reqwest::Client,
    base: String,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn index(&self) -> u64 {
        self.header("X-Consul-Index").parse().expect("an index")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("json body ({e}): {:?}", self.body))
    }
}

impl Http {
    fn new(base: String) -> Http {
        Http {
            client: mesh_testkit::http(),
            base,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.expect("the agent answers");
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().await.expect("body"),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(format!("{}/v1/{path}", self.base)))
            .await
    }

    async fn put(&self, path: &str, body: impl Into<reqwest::Body>) -> Answer {
        self.send(
            self.client
                .put(format!("{}/v1/{path}", self.base))
                .body(body),
        )
        .await
    }

    async fn put_json(&self, path: &str, body: Value) -> Answer {
        self.put(path, body.to_string()).await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.send(self.client.delete(format!("{}/v1/{path}", self.base)))
            .await
    }

    async fn session(&self, body: Value) -> String {
        let a = self.put_json("session/create", body).await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.json()["ID"].as_str().expect("an ID").to_owned()
    }

    /// The one entry of `GET kv/<key>`, or `None` on 404.
    async fn entry(&self, key: &str) -> Option<Value> {
        let a = self.get(&format!("kv/{key}")).await;
        match a.status {
            404 => None,
            200 => Some(a.json()[0].clone()),
            s => panic!("GET kv/{key}: {s} {}", a.body),
        }
    }

    async fn txn(&self, ops: Value) -> Answer {
        self.put_json("txn", ops).await
    }
}

fn b64(s: &str) -> String {
    base64_encode(s.as_bytes())
}

/// session.mdx "Create Session": the defaults, and the validation texts
/// of `agent/consul/session_endpoint.go` and `state/session.go` (plain
/// errors over RPC, so the HTTP layer answers 500 with the text).
#[tokio::test]
async fn session_create_defaults_and_refusals_follow_the_reference() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let http = Http::new(consul.url(0));
    let a = http.put("session/create", "").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("Content-Type"), "application/json");
    let id = a.json()["ID"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let info = http.get(&format!("session/info/{id}")).await;
    let s = &info.json()[0];
    assert_eq!(s["Node"], "agent-0", "the agent's own node");
    assert_eq!(s["LockDelay"], 15_000_000_000u64, "15 s, in ns");
    assert_eq!(s["Behavior"], "release");
    assert_eq!(s["TTL"], "");
    assert_eq!(s["NodeChecks"], json!(["serfHealth"]));
    assert_eq!(s["ServiceChecks"], Value::Null);
    assert_eq!(s["CreateIndex"], s["ModifyIndex"]);
    assert_eq!(info.index(), s["CreateIndex"].as_u64().unwrap());

    // The design's session: TTL only, no checks.
    let id = http
        .session(
            json!({"Name": "mesh/c/n/1", "TTL": "10s", "LockDelay": "5s",
                        "NodeChecks": [], "Behavior": "release"}),
        )
        .await;
    let s = &http.get(&format!("session/info/{id}")).await.json()[0];
    assert_eq!(
        (&s["Name"], &s["TTL"], &s["LockDelay"], &s["NodeChecks"]),
        (
            &json!("mesh/c/n/1"),
            &json!("10s"),
            &json!(5_000_000_000u64),
            &json!([])
        )
    );
    // `Checks: []` (the pre-1.7 field) also drops serfHealth; a small
    // number is seconds (FixupLockDelay).
    let id = http.session(json!({"Checks": [], "LockDelay": 7})).await;
    let s = &http.get(&format!("session/info/{id}")).await.json()[0];
    assert_eq!(
        (&s["NodeChecks"], &s["LockDelay"]),
        (&json!([]), &json!(7_000_000_000u64))
    );

    for (body, text) in [
        (
            json!({"TTL": "5s"}),
            "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]",
        ),
        (
            json!({"TTL": "86401s"}),
            "Invalid Session TTL '86401000000000', must be between [10s=24h0m0s]",
        ),
        (
            json!({"Behavior": "keep"}),
            "Invalid Behavior setting 'keep'",
        ),
        (json!({"Node": "elsewhere"}), "Missing node registration"),
        (
            json!({"ServiceChecks": [{"ID": "service:nope"}]}),
            "Missing check 'service:nope' registration",
        ),
    ] {
        let a = http.put_json("session/create", body.clone()).await;
        assert_eq!((a.status, a.body.as_str()), (500, text), "{body}");
        assert!(a.header("Content-Type").starts_with("text/plain"));
    }
    // The bounds themselves are allowed; "0s" means no TTL.
    for ttl in ["10s", "24h", "0s"] {
        http.session(json!({ "TTL": ttl })).await;
    }
    let a = http.put("session/create", "{").await;
    assert_eq!(a.status, 400);
    assert!(a.body.starts_with("Request decode failed"), "{}", a.body);
    // A critical check cannot back a new session.
    http.put_json(
        "agent/service/register",
        json!({"ID": "db-1", "Name": "db", "Check": {"TTL": "30s"}}),
    )
    .await;
    let a = http
        .put_json(
            "session/create",
            json!({"ServiceChecks": [{"ID": "service:db-1"}]}),
        )
        .await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (500, "Check 'service:db-1' is in critical state")
    );
    let a = http.get("session/create").await;
    assert_eq!((a.status, a.body.as_str()), (405, "method GET not allowed"));
}

/// session.mdx: renew answers the session array, 404 `Session id '…' not
/// found` once it is gone (`agent/session_endpoint.go`); destroy answers
/// `true`, also for an unknown session; info answers `[]` for an unknown
/// one; list and node list the live ones.
#[tokio::test]
async fn renew_destroy_info_list_and_node_follow_the_reference() {
    let consul = TestConsul::start(2, TimeScale::default()).await;
    let (h0, h1) = (Http::new(consul.url(0)), Http::new(consul.url(1)));
    let a = h0.session(json!({"Name": "a", "TTL": "10s"})).await;
    let b = h1.session(json!({"Name": "b"})).await;
    let r = h0.put(&format!("session/renew/{a}"), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()[0]["ID"], a.as_str());
    assert_eq!(r.json()[0]["TTL"], "10s");
    let list = h0.get("session/list").await;
    let mut ids: Vec<String> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ID"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(ids, want);
    let node = h0.get("session/node/agent-1").await.json();
    assert_eq!(node.as_array().unwrap().len(), 1);
    assert_eq!(node[0]["ID"], b.as_str());
    let before = list.index();

    let d = h0.put(&format!("session/destroy/{a}"), "").await;
    assert_eq!((d.status, d.body.as_str()), (200, "true"));
    let r = h0.put(&format!("session/renew/{a}"), "").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (404, format!("Session id '{a}' not found").as_str())
    );
    let i = h0.get(&format!("session/info/{a}")).await;
    assert_eq!((i.status, i.body.as_str()), (200, "[]"));
    assert!(i.index() > before, "a destroy moves the sessions' index");
    let d = h0.put(&format!("session/destroy/{a}"), "").await;
    assert_eq!((d.status, d.body.as_str()), (200, "true"), "idempotent");
    let live: Vec<String> = consul.with_kv(|kv| kv.sessions.keys().cloned().collect());
    assert_eq!(live, vec![b.clone()]);
    let d = h0.put("session/destroy/", "").await;
    assert_eq!((d.status, d.body.as_str()), (400, "Missing session"));
    assert_eq!(h0.get("session/node/agent-0").await.body, "[]");
}

/// The TTL over HTTP, on a paused clock: still valid before 2 x TTL after
/// the last renew the server saw, invalidated at 2 x TTL; a blocking read
/// of the lock key wakes when `release` clears its `Session`, and the key
/// then stays lock-delayed for `LockDelay` from the invalidation.
#[tokio::test(start_paused = true)]
async fn an_unrenewed_session_expires_at_twice_its_ttl_and_its_keys_stay_lock_delayed() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let http = Http::new(consul.url(0));
    let s1 = http
        .session(json!({"TTL": "10s", "LockDelay": "5s", "NodeChecks": []}))
        .await;
    let s2 = http.session(json!({"NodeChecks": []})).await;
    let a = http.put(&format!("kv/own/0001?acquire={s1}"), "n1").await;
    assert_eq!(a.body, "true");
    let held = http.get("kv/own/0001").await;
    let held_index = held.index();
    assert_eq!(held.json()[0]["Session"], s1.as_str());

    http.put(&format!("session/renew/{s1}"), "").await;
    // When the server saw the renew (logged before it answered).
    let renewed = *consul.requests(0, "session/renew").last().unwrap();
    // 15 s on: past the TTL but inside 2 x TTL, still valid.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let info = http.get(&format!("session/info/{s1}")).await;
    let asked = *consul.requests(0, "session/info").last().unwrap();
    assert!(asked < renewed + Duration::from_secs(20));
    assert_eq!(
        info.json()[0]["ID"],
        s1.as_str(),
        "a lower bound: still valid"
    );

    // Block on the key until its ModifyIndex moves.
    let woke = http
        .get(&format!("kv/own/0001?index={held_index}&wait=5m"))
        .await;
    let invalidated_seen = Instant::now();
    assert!(woke.index() > held_index);
    let e = &woke.json()[0];
    assert!(e.get("Session").is_none(), "released: {e}");
    assert_eq!(e["LockIndex"], 1, "a release keeps LockIndex");
    assert_eq!(e["Value"], b64("n1"), "release keeps the value");
    assert!(
        invalidated_seen >= renewed + Duration::from_secs(20),
        "the timer is 2 x TTL: {:?}",
        invalidated_seen - renewed
    );
    assert!(invalidated_seen < renewed + Duration::from_secs(21));
    let r = http.put(&format!("session/renew/{s1}"), "").await;
    assert_eq!(r.status, 404);

    // Lock-delay: ?acquire answers false, a txn lock names it.
    let a = http.put(&format!("kv/own/0001?acquire={s2}"), "n2").await;
    assert_eq!(a.body, "false");
    let t = http
        .txn(json!([{"KV": {"Verb": "lock", "Key": "own/0001", "Session": s2}}]))
        .await;
    assert_eq!(t.status, 409);
    assert_eq!(
        t.json(),
        json!({"Results": null, "Errors": [{"OpIndex": 0,
               "What": "failed to lock key \"own/0001\" due to lock delay"}]})
    );
    tokio::time::sleep_until(invalidated_seen + Duration::from_secs(5)).await;
    let a = http.put(&format!("kv/own/0001?acquire={s2}"), "n2").await;
    assert_eq!(a.body, "true", "the delay is over");
    assert_eq!(http.entry("own/0001").await.unwrap()["LockIndex"], 2);
}

/// sessions/index.mdx: a session is invalidated when one of its checks
/// goes critical or is deregistered, or its node's agent fails
/// (`serfHealth`); `release` clears the keys' `Session`, `delete`
/// deletes them.
#[tokio::test]
async fn critical_or_deregistered_checks_and_a_failed_agent_invalidate_sessions() {
    let consul = TestConsul::start(2, TimeScale::default()).await;
    let (h0, h1) = (Http::new(consul.url(0)), Http::new(consul.url(1)));
    for id in ["db-1", "db-2"] {
        h0.put_json(
            "agent/service/register",
            json!({"ID": id, "Name": "db", "Check": {"TTL": "30s", "Status": "passing"}}),
        )
        .await;
    }
    let on_check = |check: &str| json!({"NodeChecks": [], "ServiceChecks": [{"ID": check}]});
    let s1 = h0.session(on_check("service:db-1")).await;
    let s2 = h0.session(on_check("service:db-2")).await;
    let s3 = h1
        .session(json!({"Behavior": "delete", "LockDelay": "0s"}))
        .await;
    for (key, s) in [("k1", &s1), ("k2", &s2), ("k3", &s3)] {
        let a = h0.put(&format!("kv/{key}?acquire={s}"), "v").await;
        assert_eq!(a.body, "true");
    }
    let k1 = h0.entry("k1").await.unwrap();

    // Critical: released, ModifyIndex moved, session gone.
    let a = h0.put("agent/check/fail/service:db-1", "").await;
    assert_eq!(a.status, 200);
    let after = h0.entry("k1").await.unwrap();
    assert!(after.get("Session").is_none(), "{after}");
    assert!(after["ModifyIndex"].as_u64() > k1["ModifyIndex"].as_u64());
    assert_eq!(h0.get(&format!("session/info/{s1}")).await.body, "[]");
    // A warning does not invalidate.
    h0.put("agent/check/warn/service:db-2", "").await;
    assert_eq!(h0.entry("k2").await.unwrap()["Session"], s2.as_str());
    // Deregistered: released.
    h0.put("agent/service/deregister/db-2", "").await;
    assert!(h0.entry("k2").await.unwrap().get("Session").is_none());

    // Agent 1 fails: its serfHealth-backed session goes; `delete` deletes.
    assert_eq!(h0.entry("k3").await.unwrap()["Session"], s3.as_str());
    consul.stop_agent(1);
    assert_eq!(h0.entry("k3").await, None, "deleted with the session");
    assert_eq!(h0.get(&format!("session/info/{s3}")).await.body, "[]");
    consul.start_agent(1).await;
    // A session without serfHealth survives its agent.
    let s4 = h1.session(json!({"NodeChecks": []})).await;
    consul.stop_agent(1);
    let i = h0.get(&format!("session/info/{s4}")).await;
    assert_eq!(i.json()[0]["ID"], s4.as_str());
}

/// kv.mdx: reads, writes, deletes, flags, cas, keys with a separator,
/// raw, 404 for a missing key, base64 values, and the index rules
/// (`X-Consul-Index` is the key's `ModifyIndex`, comparable with the
/// catalog's since they share one Raft index).
#[tokio::test]
async fn kv_reads_writes_and_cas_follow_the_reference() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let http = Http::new(consul.url(0));
    let a = http.get("kv/app/a").await;
    assert_eq!((a.status, a.body.as_str()), (404, ""));
    assert!(a.index() >= 1);
    let a = http.put("kv/app/a?flags=42", "hello").await;
    assert_eq!((a.status, a.body.as_str()), (200, "true"));
    let r = http.get("kv/app/a").await;
    let e = &r.json()[0];
    assert_eq!(e["Value"], b64("hello"));
    assert_eq!((&e["Flags"], &e["LockIndex"]), (&json!(42), &json!(0)));
    assert_eq!(e["CreateIndex"], e["ModifyIndex"]);
    assert_eq!(r.index(), e["ModifyIndex"].as_u64().unwrap());
    let first = r.index();
    let raw = http.get("kv/app/a?raw").await;
    assert_eq!(raw.body, "hello");
    // An unchanged write keeps ModifyIndex (state/kvs.go kvsSetTxn).
    http.put("kv/app/a?flags=42", "hello").await;
    assert_eq!(http.get("kv/app/a").await.index(), first);
    // A changed one moves it and keeps CreateIndex.
    http.put("kv/app/a?flags=42", "world").await;
    let e = http.entry("app/a").await.unwrap();
    assert!(e["ModifyIndex"].as_u64().unwrap() > first);
    assert_eq!(e["CreateIndex"], first);
    // One index space: a catalog write that follows gets a higher index.
    http.put_json("agent/service/register", json!({"Name": "web"}))
        .await;
    let h = http.get("health/service/web").await;
    assert!(h.index() > e["ModifyIndex"].as_u64().unwrap());

    // cas: 0 creates only; a stale index fails; the current one wins.
    assert_eq!(http.put("kv/app/a?cas=0", "x").await.body, "false");
    assert_eq!(http.put("kv/app/b?cas=0", "b").await.body, "true");
    let b = http.entry("app/b").await.unwrap()["ModifyIndex"]
        .as_u64()
        .unwrap();
    assert_eq!(
        http.put(&format!("kv/app/b?cas={}", b - 1), "y").await.body,
        "false"
    );
    assert_eq!(
        http.put(&format!("kv/app/b?cas={b}"), "y").await.body,
        "true"
    );
    assert_eq!(
        http.put("kv/app/zzz?cas=5", "z").await.body,
        "false",
        "absent"
    );

    http.put("kv/app/dir/c", "").await;
    http.put("kv/other", "o").await;
    let rec = http.get("kv/app/?recurse").await.json();
    let keys: Vec<&str> = rec
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["app/a", "app/b", "app/dir/c"]);
    assert_eq!(rec[2]["Value"], Value::Null, "an empty value is null");
    let k = http.get("kv/app/?keys&separator=/").await.json();
    assert_eq!(k, json!(["app/a", "app/b", "app/dir/"]));
    assert_eq!(
        http.get("kv/?keys").await.json(),
        json!(["app/a", "app/b", "app/dir/c", "other"])
    );
    assert_eq!(http.get("kv/nothing/?keys").await.status, 404);
    assert_eq!(http.get("kv/?keys&index=0").await.status, 200);

    // Deletes: cas, recurse; the tombstone keeps the prefix's index up.
    let c = http.entry("app/dir/c").await.unwrap()["ModifyIndex"]
        .as_u64()
        .unwrap();
    assert_eq!(
        http.delete(&format!("kv/app/dir/c?cas={}", c + 1))
            .await
            .body,
        "false"
    );
    assert_eq!(
        http.delete(&format!("kv/app/dir/c?cas={c}")).await.body,
        "true"
    );
    let list = http.get("kv/app/?recurse").await;
    assert!(list.index() > c, "the delete's tombstone counts");
    assert_eq!(http.delete("kv/app?recurse").await.body, "true");
    assert_eq!(http.get("kv/app/?recurse").await.status, 404);
    assert!(http.entry("other").await.is_some());

    // Refusals.
    let a = http.put("kv/x?cas=0&acquire=s", "").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (400, "Conflicting flags: acquire=s&cas=0\n")
    );
    let a = http.delete("kv/x?recurse&cas=1").await;
    assert_eq!(a.status, 400);
    let a = http.get("kv/").await;
    assert_eq!((a.status, a.body.as_str()), (400, "Missing key name"));
    let a = http.put("kv/x?flags=no", "").await;
    assert_eq!(a.status, 500);
    let a = http
        .send(http.client.post(format!("{}/v1/kv/x", http.base)))
        .await;
    assert_eq!((a.status, a.header("Allow")), (405, "GET,PUT,DELETE"));
    let big = vec![b'x'; 512 * 1024 + 1];
    assert_eq!(http.put("kv/big", big).await.status, 413);
}

/// kv.mdx "Read Key": a blocking read returns at once when the index has
/// passed, waits for a write otherwise, and on timeout returns the same
/// index.
#[tokio::test(start_paused = true)]
async fn kv_blocking_reads_wait_for_a_change_or_the_wait() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let http = Http::new(consul.url(0));
    http.put("kv/k", "1").await;
    let i = http.get("kv/k").await.index();
    let t = Instant::now();
    let same = http.get(&format!("kv/k?index={i}&wait=2s")).await;
    assert_eq!(same.index(), i, "a timeout returns the same index");
    assert!(Instant::now() - t >= Duration::from_secs(2));
    let writer = {
        let url = consul.url(0);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Http::new(url).put("kv/k", "2").await
        })
    };
    let woke = http.get(&format!("kv/k?index={i}&wait=1m")).await;
    assert!(woke.index() > i);
    assert_eq!(woke.json()[0]["Value"], b64("2"));
    assert_eq!(writer.await.unwrap().body, "true");
    // A write elsewhere does not change this key's index.
    http.put("kv/elsewhere", "x").await;
    let again = http.get("kv/k").await;
    assert_eq!(again.index(), woke.index());
}

/// kv.mdx `?acquire`/`?release` and sessions/index.mdx: `LockIndex`
/// moves for each new holder only; the holder may re-acquire; another
/// session is refused; plain writes succeed despite a holder (advisory)
/// and keep it; a voluntary release leaves no lock-delay.
#[tokio::test]
async fn acquire_and_release_follow_the_reference() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let http = Http::new(consul.url(0));
    let s1 = http.session(json!({"NodeChecks": []})).await;
    let s2 = http.session(json!({"NodeChecks": []})).await;
    assert_eq!(
        http.put(&format!("kv/l?acquire={s1}"), "a").await.body,
        "true"
    );
    let e = http.entry("l").await.unwrap();
    assert_eq!((&e["LockIndex"], &e["Session"]), (&json!(1), &json!(s1)));
    let m1 = e["ModifyIndex"].clone();
    // Re-acquire by the holder: no new LockIndex; the same value keeps
    // even ModifyIndex (an unchanged entry is not rewritten).
    assert_eq!(
        http.put(&format!("kv/l?acquire={s1}"), "a").await.body,
        "true"
    );
    let e = http.entry("l").await.unwrap();
    assert_eq!((&e["LockIndex"], &e["ModifyIndex"]), (&json!(1), &m1));
    assert_eq!(
        http.put(&format!("kv/l?acquire={s1}"), "b").await.body,
        "true"
    );
    let e = http.entry("l").await.unwrap();
    assert_eq!(e["LockIndex"], 1);
    assert_ne!(e["ModifyIndex"], m1);
    // Another session: refused.
    assert_eq!(
        http.put(&format!("kv/l?acquire={s2}"), "x").await.body,
        "false"
    );
    // Advisory: a plain write succeeds and keeps the holder.
    assert_eq!(http.put("kv/l", "plain").await.body, "true");
    let e = http.entry("l").await.unwrap();
    assert_eq!(
        (&e["Session"], &e["Value"]),
        (&json!(s1), &json!(b64("plain")))
    );
    // Release: only by the holder.
    assert_eq!(
        http.put(&format!("kv/l?release={s2}"), "").await.body,
        "false"
    );
    assert_eq!(
        http.put(&format!("kv/l?release={s1}"), "r").await.body,
        "true"
    );
    let e = http.entry("l").await.unwrap();
    assert!(e.get("Session").is_none());
    assert_eq!(e["LockIndex"], 1);
    // No lock-delay after a voluntary release: s2 gets it at once.
    assert_eq!(
        http.put(&format!("kv/l?acquire={s2}"), "c").await.body,
        "true"
    );
    assert_eq!(http.entry("l").await.unwrap()["LockIndex"], 2);
    // An unknown session is an error from the state store (500).
    let a = http.put("kv/m?acquire=nope", "").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (500, "invalid session \"nope\"")
    );
    let a = http.put("kv/m?acquire=", "").await;
    assert_eq!((a.status, a.body.as_str()), (500, "missing session"));
}

/// txn.mdx: all ops applied at one index with results carrying
/// `LockIndex` and `ModifyIndex` (`Value` null for non-get verbs), or
/// none applied: 409, `Results` null and every failing op in `Errors`
/// with `state/txn.go`'s texts.
#[tokio::test]
async fn txn_applies_all_at_one_index_or_rolls_back_with_409() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let http = Http::new(consul.url(0));
    let s = http.session(json!({"NodeChecks": []})).await;
    let other = http.session(json!({"NodeChecks": []})).await;
    let t = http
        .txn(json!([
            {"KV": {"Verb": "lock", "Key": "own/0", "Value": b64("n1"), "Session": s}},
            {"KV": {"Verb": "lock", "Key": "own/1", "Value": b64("n1"), "Session": s}},
            {"KV": {"Verb": "set", "Key": "state/a", "Value": b64("1"), "Flags": 3}},
        ]))
        .await;
    assert_eq!(t.status, 200, "{}", t.body);
    let v = t.json();
    assert_eq!(v["Errors"], Value::Null);
    let results = v["Results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let idx = &results[0]["KV"]["ModifyIndex"];
    for r in results {
        assert_eq!(&r["KV"]["ModifyIndex"], idx, "one index for all");
        assert_eq!(r["KV"]["Value"], Value::Null);
    }
    assert_eq!(results[0]["KV"]["LockIndex"], 1);
    assert_eq!(results[0]["KV"]["Session"], s.as_str());
    assert_eq!(results[2]["KV"]["Flags"], 3);

    // Three failing ops among good ones: 409, all named, nothing applied.
    let t = http
        .txn(json!([
            {"KV": {"Verb": "set", "Key": "state/b", "Value": b64("2")}},
            {"KV": {"Verb": "cas", "Key": "state/a", "Value": b64("x"), "Index": 1}},
            {"KV": {"Verb": "unlock", "Key": "own/1", "Session": other}},
            {"KV": {"Verb": "lock", "Key": "own/0", "Session": other}},
            {"KV": {"Verb": "delete", "Key": "state/a"}},
        ]))
        .await;
    assert_eq!(t.status, 409);
    assert_eq!(t.header("Content-Type"), "application/json");
    assert_eq!(
        t.json(),
        json!({"Results": null, "Errors": [
            {"OpIndex": 1, "What": "failed to set key \"state/a\", index is stale"},
            {"OpIndex": 2, "What": "failed to unlock key \"own/1\", lock isn't held, or is held by another session"},
            {"OpIndex": 3, "What": "failed to lock key \"own/0\", lock is already held"},
        ]})
    );
    assert!(http.entry("state/b").await.is_none(), "rolled back");
    assert!(http.entry("state/a").await.is_some(), "rolled back");
    assert_eq!(http.entry("own/1").await.unwrap()["Session"], s.as_str());

    // The other verbs' texts.
    let a = http.entry("state/a").await.unwrap();
    let a_index = a["ModifyIndex"].as_u64().unwrap();
    let t = http
        .txn(json!([
            {"KV": {"Verb": "get", "Key": "nope"}},
            {"KV": {"Verb": "check-index", "Key": "state/a", "Index": a_index + 7}},
            {"KV": {"Verb": "check-session", "Key": "own/0", "Session": other}},
            {"KV": {"Verb": "check-not-exists", "Key": "state/a"}},
            {"KV": {"Verb": "delete-cas", "Key": "state/a", "Index": a_index + 7}},
            {"KV": {"Verb": "frob", "Key": "x"}},
            {"KV": {"Verb": "lock", "Key": "own/9", "Session": "nope"}},
            {"KV": {"Verb": "set", "Key": ""}},
        ]))
        .await;
    // "Must provide key" is a pre-check: it alone is reported.
    assert_eq!(
        t.json(),
        json!({"Results": null, "Errors": [{"OpIndex": 7, "What": "Must provide key"}]})
    );
    let t = http
        .txn(json!([
            {"KV": {"Verb": "get", "Key": "nope"}},
            {"KV": {"Verb": "check-index", "Key": "state/a", "Index": a_index + 7}},
            {"KV": {"Verb": "check-session", "Key": "own/0", "Session": other}},
            {"KV": {"Verb": "check-not-exists", "Key": "state/a"}},
            {"KV": {"Verb": "delete-cas", "Key": "state/a", "Index": a_index + 7}},
            {"KV": {"Verb": "frob", "Key": "x"}},
            {"KV": {"Verb": "lock", "Key": "own/9", "Session": "nope"}},
            {"KV": {"Verb": "lock", "Key": "own/9"}},
        ]))
        .await;
    let what: Vec<String> = t.json()["Errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["What"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        what,
        [
            "key \"nope\" doesn't exist".to_owned(),
            format!(
                "failed index check for key \"state/a\", current modify index {a_index} != {}",
                a_index + 7
            ),
            format!(
                "failed session check for key \"own/0\", current session \"{s}\" != \"{other}\""
            ),
            "key \"state/a\" exists".to_owned(),
            "failed to delete key \"state/a\", index is stale".to_owned(),
            "unknown KV verb \"frob\"".to_owned(),
            "invalid session \"nope\"".to_owned(),
            "missing session".to_owned(),
        ]
    );

    // delete-cas of an absent key succeeds (kvsDeleteCASTxn); unlock
    // keeps LockIndex; delete-tree.
    let t = http
        .txn(json!([
            {"KV": {"Verb": "delete-cas", "Key": "absent", "Index": 3}},
            {"KV": {"Verb": "unlock", "Key": "own/1", "Session": s}},
            {"KV": {"Verb": "delete-tree", "Key": "state/"}},
        ]))
        .await;
    assert_eq!(t.status, 200, "{}", t.body);
    let r = &t.json()["Results"];
    assert_eq!(r.as_array().unwrap().len(), 1);
    assert_eq!(r[0]["KV"]["LockIndex"], 1);
    assert!(r[0]["KV"].get("Session").is_none());
    assert!(http.entry("state/a").await.is_none());
}

/// txn.mdx: a transaction without writes is served like a read (no
/// index allocated; `X-Consul-KnownLeader` and `X-Consul-LastContact`),
/// `get` and `get-tree` return values.
#[tokio::test]
async fn a_read_only_txn_is_a_read() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let http = Http::new(consul.url(0));
    http.put("kv/t/a", "A").await;
    http.put("kv/t/b", "B").await;
    let before = http.entry("t/b").await.unwrap()["ModifyIndex"]
        .as_u64()
        .unwrap();
    let t = http
        .txn(json!([
            {"KV": {"Verb": "get", "Key": "t/a"}},
            {"KV": {"Verb": "get-tree", "Key": "t/"}},
            {"KV": {"Verb": "check-index", "Key": "t/b", "Index": before}},
            {"KV": {"Verb": "check-not-exists", "Key": "t/c"}},
        ]))
        .await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.header("X-Consul-KnownLeader"), "true");
    assert_eq!(t.header("X-Consul-LastContact"), "0");
    let r = t.json()["Results"].clone();
    let values: Vec<&Value> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|x| &x["KV"]["Value"])
        .collect();
    assert_eq!(
        values,
        [
            &json!(b64("A")),
            &json!(b64("A")),
            &json!(b64("B")),
            &Value::Null
        ]
    );
    // No index was taken: the next write gets the one after `before`.
    http.put("kv/t/d", "D").await;
    let d = http.entry("t/d").await.unwrap()["ModifyIndex"]
        .as_u64()
        .unwrap();
    assert_eq!(d, before + 1);
    let t = http.put("txn?stale&consistent", "[]").await;
    assert_eq!(t.status, 400);
}

/// `agent/txn_endpoint.go`: `maxTxnOps` is 128 (64 in older agents); a
/// larger transaction is refused with 413 and Consul's text; a bad body
/// is a 400.
#[tokio::test]
async fn txn_op_limit_is_128_with_413_above() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let http = Http::new(consul.url(0));
    let ops = |n: usize| {
        Value::Array(
            (0..n)
                .map(|i| json!({"KV": {"Verb": "set", "Key": format!("b/{i:03}"), "Value": b64("v")}}))
                .collect(),
        )
    };
    let t = http.txn(ops(128)).await;
    assert_eq!(t.status, 200);
    assert_eq!(t.json()["Results"].as_array().unwrap().len(), 128);
    let t = http.txn(ops(129)).await;
    assert_eq!(
        (t.status, t.body.as_str()),
        (413, "Transaction contains too many operations (129 > 128)")
    );
    assert!(http.entry("b/000").await.is_some());
    let t = http.put("txn", "{").await;
    assert_eq!(t.status, 400);
    assert!(t.body.starts_with("Failed to parse body"), "{}", t.body);
    let t = http
        .txn(json!([{"KV": {"Verb": "set", "Key": "x", "Value": "not base64!"}}]))
        .await;
    assert_eq!(t.status, 400);
    let t = http.get("txn").await;
    assert_eq!(t.status, 405);
}

/// The design's fenced write (chaos-and-leases.md 3.2): `check-session`
/// on the shard's lock key plus the state write in one txn succeeds while
/// the session holds the key and is rejected, atomically, once the
/// session is gone, so a resumed stale owner cannot write.
#[tokio::test]
async fn a_write_fenced_by_check_session_is_refused_after_the_session_is_lost() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let http = Http::new(consul.url(0));
    let s = http
        .session(json!({"TTL": "10s", "LockDelay": "0s", "NodeChecks": []}))
        .await;
    let lock = http
        .txn(json!([{"KV": {"Verb": "lock", "Key": "own/0007", "Value": b64("n1"), "Session": s}}]))
        .await;
    let token = lock.json()["Results"][0]["KV"]["ModifyIndex"].clone();
    assert!(token.as_u64().unwrap() > 0, "the fencing token");
    let fenced = |v: &str| {
        json!([
            {"KV": {"Verb": "check-session", "Key": "own/0007", "Session": s}},
            {"KV": {"Verb": "set", "Key": "state/wallet-7", "Value": b64(v)}},
        ])
    };
    assert_eq!(http.txn(fenced("100")).await.status, 200);
    http.put(&format!("session/destroy/{s}"), "").await;
    let t = http.txn(fenced("200")).await;
    assert_eq!(t.status, 409);
    assert_eq!(
        t.json()["Errors"],
        json!([{"OpIndex": 0, "What": format!(
            "failed session check for key \"own/0007\", current session \"\" != \"{s}\"")}])
    );
    assert_eq!(
        http.entry("state/wallet-7").await.unwrap()["Value"],
        b64("100")
    );
}
