//! The conformance suite of [`mesh::state::StateStore`]: the contract of
//! `mesh::state`'s module docs, checked against any store. Every store mesh
//! ships runs it (`tests/core/state.rs`, and the PostgreSQL suite); a
//! user's own store can too.
//!
//! [`check`] runs every check on one store, each on rows of its own
//! (`conformance-<check>-<n>/...` kinds), so a store that already holds
//! rows works.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mesh::state::{ReminderRow, StateKey, StateStore, StoreError, Stored};

/// Runs every check against `store`, whose rows may hold up to `limit`
/// bytes. Panics, naming the check, on the first broken promise.
pub async fn check(store: Arc<dyn StateStore>, limit: usize) {
    a_row_never_written_is_empty(&*store).await;
    saves_are_a_compare_and_set_on_the_version(&*store).await;
    a_cleared_row_keeps_its_version(&*store).await;
    a_claim_fences_lower_tokens_before_the_new_owner_writes(&*store).await;
    a_claim_creates_the_row_it_fences(&*store).await;
    eventual_writes_neither_check_nor_move_the_fence(&*store).await;
    a_fenced_write_is_reported_before_a_conflict(&*store).await;
    rows_over_the_limit_are_refused_and_write_nothing(&*store, limit).await;
    rows_are_independent_and_keys_are_taken_as_they_are(&*store).await;
    of_racing_writers_on_one_version_exactly_one_wins(store.clone()).await;
    many_writers_on_many_rows_all_land(store.clone()).await;
}

/// A fresh kind for one check.
fn kind(check: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    format!("conformance-{check}-{pid}-{n}/Actor")
}

async fn load(store: &dyn StateStore, key: &StateKey, claim: Option<u64>) -> Stored {
    store
        .load(key, claim)
        .await
        .unwrap_or_else(|e| panic!("load {key:?} (claim {claim:?}): {e}"))
}

async fn save(
    store: &dyn StateStore,
    key: &StateKey,
    expected: u64,
    token: Option<u64>,
    bytes: Option<&[u8]>,
) -> Result<u64, StoreError> {
    store.save(key, expected, token, bytes).await
}

async fn a_row_never_written_is_empty(store: &dyn StateStore) {
    let key = StateKey::new(kind("empty"), "nobody");
    assert_eq!(
        load(store, &key, None).await,
        Stored::default(),
        "a row never written"
    );
}

async fn saves_are_a_compare_and_set_on_the_version(store: &dyn StateStore) {
    let key = StateKey::new(kind("cas"), "p1");
    assert_eq!(save(store, &key, 0, None, Some(b"one")).await, Ok(1));
    let got = load(store, &key, None).await;
    assert_eq!((got.version, got.bytes.as_deref()), (1, Some(&b"one"[..])));
    // The same version again: a second writer that loaded before the first.
    assert_eq!(
        save(store, &key, 0, None, Some(b"lost")).await,
        Err(StoreError::Conflict {
            expected: 0,
            stored: 1
        }),
        "a stale version must be refused (never last-writer-wins)"
    );
    assert_eq!(save(store, &key, 1, None, Some(b"two")).await, Ok(2));
    assert_eq!(
        save(store, &key, 5, None, Some(b"ahead")).await,
        Err(StoreError::Conflict {
            expected: 5,
            stored: 2
        }),
        "a version ahead of the store's is refused too"
    );
    let got = load(store, &key, None).await;
    assert_eq!((got.version, got.bytes.as_deref()), (2, Some(&b"two"[..])));
}

async fn a_cleared_row_keeps_its_version(store: &dyn StateStore) {
    let key = StateKey::new(kind("clear"), "p1");
    assert_eq!(save(store, &key, 0, None, Some(b"x")).await, Ok(1));
    assert_eq!(
        save(store, &key, 1, None, None).await,
        Ok(2),
        "a clear is a write"
    );
    assert_eq!(
        load(store, &key, None).await,
        Stored {
            version: 2,
            bytes: None
        }
    );
    // A writer that loaded before the clear (version 1), or never (0).
    for stale in [0, 1] {
        assert!(
            matches!(
                save(store, &key, stale, None, Some(b"zombie")).await,
                Err(StoreError::Conflict { stored: 2, .. })
            ),
            "a cleared row is a tombstone: version {stale} must conflict"
        );
    }
    assert_eq!(save(store, &key, 2, None, Some(b"again")).await, Ok(3));
}

async fn a_claim_fences_lower_tokens_before_the_new_owner_writes(store: &dyn StateStore) {
    let key = StateKey::new(kind("fence"), "acct");
    // The old owner (token 5) loads, claims and writes.
    assert_eq!(load(store, &key, Some(5)).await.version, 0);
    assert_eq!(save(store, &key, 0, Some(5), Some(b"a")).await, Ok(1));
    // The new owner (token 7) loads and claims, and has not written yet.
    let got = load(store, &key, Some(7)).await;
    assert_eq!((got.version, got.bytes.as_deref()), (1, Some(&b"a"[..])));
    // The paused old owner wakes up and writes on top of what it knew.
    assert_eq!(
        save(store, &key, 1, Some(5), Some(b"zombie")).await,
        Err(StoreError::Fenced {
            token: 5,
            stored: 7
        }),
        "the store itself must refuse a token below the claim"
    );
    // A claim with a lower token is refused too.
    assert_eq!(
        store.load(&key, Some(6)).await,
        Err(StoreError::Fenced {
            token: 6,
            stored: 7
        })
    );
    // The new owner writes; an equal token passes.
    assert_eq!(save(store, &key, 1, Some(7), Some(b"b")).await, Ok(2));
    assert_eq!(save(store, &key, 2, Some(7), Some(b"c")).await, Ok(3));
    // A later owner's write with a higher token passes and raises it.
    assert_eq!(save(store, &key, 3, Some(9), Some(b"d")).await, Ok(4));
    assert!(matches!(
        save(store, &key, 4, Some(7), Some(b"e")).await,
        Err(StoreError::Fenced { stored: 9, .. })
    ));
    let got = load(store, &key, None).await;
    assert_eq!((got.version, got.bytes.as_deref()), (4, Some(&b"d"[..])));
}

async fn a_claim_creates_the_row_it_fences(store: &dyn StateStore) {
    let key = StateKey::new(kind("claim-new"), "fresh");
    assert_eq!(load(store, &key, Some(10)).await, Stored::default());
    // A zombie that never loaded this row creates it: refused.
    assert!(matches!(
        save(store, &key, 0, Some(4), Some(b"zombie")).await,
        Err(StoreError::Fenced {
            token: 4,
            stored: 10
        })
    ));
    assert_eq!(save(store, &key, 0, Some(10), Some(b"mine")).await, Ok(1));
}

async fn eventual_writes_neither_check_nor_move_the_fence(store: &dyn StateStore) {
    let key = StateKey::new(kind("eventual"), "e1");
    assert_eq!(load(store, &key, Some(8)).await.version, 0);
    assert_eq!(save(store, &key, 0, None, Some(b"e")).await, Ok(1));
    // The fence is still 8.
    assert!(matches!(
        save(store, &key, 1, Some(3), Some(b"low")).await,
        Err(StoreError::Fenced { stored: 8, .. })
    ));
    assert_eq!(save(store, &key, 1, Some(8), Some(b"ok")).await, Ok(2));
}

async fn a_fenced_write_is_reported_before_a_conflict(store: &dyn StateStore) {
    let key = StateKey::new(kind("order"), "o1");
    assert_eq!(load(store, &key, Some(20)).await.version, 0);
    assert_eq!(save(store, &key, 0, Some(20), Some(b"x")).await, Ok(1));
    // Stale on both counts: a zombie, and told so.
    assert!(matches!(
        save(store, &key, 0, Some(19), Some(b"z")).await,
        Err(StoreError::Fenced {
            token: 19,
            stored: 20
        })
    ));
}

async fn rows_over_the_limit_are_refused_and_write_nothing(store: &dyn StateStore, limit: usize) {
    let key = StateKey::new(kind("limit"), "big");
    let at = vec![7u8; limit];
    assert_eq!(
        save(store, &key, 0, None, Some(&at)).await,
        Ok(1),
        "exactly the limit"
    );
    let over = vec![7u8; limit + 1];
    assert_eq!(
        save(store, &key, 1, None, Some(&over)).await,
        Err(StoreError::TooLarge {
            size: limit + 1,
            limit
        })
    );
    let got = load(store, &key, None).await;
    assert_eq!(got.version, 1, "a refused write wrote nothing");
    assert_eq!(got.bytes.map(|b| b.len()), Some(limit));
}

async fn rows_are_independent_and_keys_are_taken_as_they_are(store: &dyn StateStore) {
    let (k1, k2) = (kind("independent"), kind("independent"));
    let long = "x".repeat(1000);
    let ids = ["", "a/b", "naïve ☃", "a\0b", &long];
    for (i, id) in ids.iter().enumerate() {
        let a = StateKey::new(k1.as_str(), *id);
        let b = StateKey::new(k2.as_str(), *id);
        assert_eq!(
            save(store, &a, 0, None, Some(&[i as u8])).await,
            Ok(1),
            "id {id:?}"
        );
        assert_eq!(
            load(store, &b, None).await.version,
            0,
            "another kind, same id {id:?}"
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let got = load(store, &StateKey::new(k1.as_str(), *id), None).await;
        assert_eq!(got.bytes.as_deref(), Some(&[i as u8][..]), "id {id:?}");
    }
}

async fn of_racing_writers_on_one_version_exactly_one_wins(store: Arc<dyn StateStore>) {
    let key = StateKey::new(kind("race"), "hot");
    assert_eq!(save(&*store, &key, 0, None, Some(b"0")).await, Ok(1));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64u8 {
        let (store, key) = (store.clone(), key.clone());
        tasks.spawn(async move { store.save(&key, 1, None, Some(&[i])).await });
    }
    let (mut won, mut conflicts) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.expect("a writer task") {
            Ok(2) => won += 1,
            Err(StoreError::Conflict {
                expected: 1,
                stored: 2,
            }) => conflicts += 1,
            other => panic!("a racing writer got {other:?}"),
        }
    }
    assert_eq!(
        (won, conflicts),
        (1, 63),
        "exactly one write on top of version 1"
    );
}

async fn many_writers_on_many_rows_all_land(store: Arc<dyn StateStore>) {
    let k = kind("many");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let (store, key) = (store.clone(), StateKey::new(k.as_str(), format!("id-{i}")));
        tasks.spawn(async move {
            for v in 0..5u64 {
                let bytes = i.to_be_bytes();
                assert_eq!(store.save(&key, v, None, Some(&bytes)).await, Ok(v + 1));
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("a writer");
    }
    for i in 0..200u32 {
        let got = load(&*store, &StateKey::new(k.as_str(), format!("id-{i}")), None).await;
        assert_eq!(got.version, 5);
        assert_eq!(got.bytes.as_deref(), Some(&i.to_be_bytes()[..]));
    }
}

/// The reminder half of the contract (`StateStore::put_reminder` and the
/// rest): run it against a store that keeps reminders. Panics, naming the
/// check, on the first broken promise.
pub async fn check_reminders(store: Arc<dyn StateStore>, limit: usize) {
    reminder_writes_are_a_compare_and_set(&*store).await;
    reminders_are_listed_per_actor_by_name(&*store).await;
    due_reminders_are_the_owned_shards_earliest_first(&*store).await;
    reminder_writes_are_fenced(&*store).await;
    reminders_over_the_limit_are_refused(&*store, limit).await;
}

fn reminder(key: &StateKey, name: &str, due_ms: u64) -> ReminderRow {
    ReminderRow {
        key: key.clone(),
        name: name.into(),
        due_ms,
        period_ms: 1000,
        payload: format!("{name}@{due_ms}").into_bytes(),
        version: 0,
    }
}

async fn reminder_writes_are_a_compare_and_set(store: &dyn StateStore) {
    let key = StateKey::new(kind("rcas"), "a");
    let r = reminder(&key, "daily", 10);
    assert_eq!(store.put_reminder(&r, 0, None).await, Ok(1));
    assert_eq!(
        store.put_reminder(&r, 0, None).await,
        Err(StoreError::Conflict {
            expected: 0,
            stored: 1
        }),
        "a second registration on version 0 must be refused"
    );
    let later = reminder(&key, "daily", 20);
    assert_eq!(store.put_reminder(&later, 1, None).await, Ok(2));
    let got = store.reminders_of(&key).await.expect("list");
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].version, got[0].due_ms), (2, 20));
    assert_eq!(got[0].payload, later.payload);
    assert_eq!(
        store.delete_reminder(&key, "daily", 1, None).await,
        Err(StoreError::Conflict {
            expected: 1,
            stored: 2
        }),
        "a delete on a stale version must be refused"
    );
    assert_eq!(store.delete_reminder(&key, "daily", 2, None).await, Ok(()));
    assert_eq!(store.reminders_of(&key).await, Ok(Vec::new()));
    assert_eq!(
        store
            .reminders_due(&key.kind, &[key.shard], u64::MAX, 10)
            .await,
        Ok(Vec::new()),
        "a deleted reminder is not due"
    );
    // Deleting what is gone, expecting it gone: nothing to do.
    assert_eq!(store.delete_reminder(&key, "daily", 0, None).await, Ok(()));
    // Gone: registered anew from version 0, and its versions only grow
    // (the delete left a tombstone at 3): a writer that read the deleted
    // one (version 2) cannot write over the new one, nor delete it.
    assert_eq!(store.put_reminder(&r, 0, None).await, Ok(4));
    assert_eq!(
        store.put_reminder(&later, 2, None).await,
        Err(StoreError::Conflict {
            expected: 2,
            stored: 4
        }),
        "a write from before the delete must not land on the new registration"
    );
    assert!(matches!(
        store.delete_reminder(&key, "daily", 2, None).await,
        Err(StoreError::Conflict { .. })
    ));
    let got = store.reminders_of(&key).await.expect("list");
    assert_eq!((got.len(), got[0].version, got[0].due_ms), (1, 4, r.due_ms));
}

async fn reminders_are_listed_per_actor_by_name(store: &dyn StateStore) {
    let k = kind("rlist");
    let (a, b) = (
        StateKey::new(k.as_str(), "a"),
        StateKey::new(k.as_str(), "b"),
    );
    for name in ["z", "m", "a"] {
        assert_eq!(
            store.put_reminder(&reminder(&a, name, 5), 0, None).await,
            Ok(1)
        );
    }
    assert_eq!(
        store.put_reminder(&reminder(&b, "x", 5), 0, None).await,
        Ok(1)
    );
    let names: Vec<String> = store
        .reminders_of(&a)
        .await
        .expect("list")
        .iter()
        .map(|r| r.name.to_string())
        .collect();
    assert_eq!(names, ["a", "m", "z"], "one actor's reminders, by name");
}

async fn due_reminders_are_the_owned_shards_earliest_first(store: &dyn StateStore) {
    let k = kind("rdue");
    let ids: Vec<String> = (0..40).map(|i| format!("id-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let key = StateKey::new(k.as_str(), id.as_str());
        let r = reminder(&key, "tick", 1000 - i as u64 * 10);
        assert_eq!(store.put_reminder(&r, 0, None).await, Ok(1));
    }
    let key = |id: &str| StateKey::new(k.as_str(), id);
    let owned: Vec<u16> = ids.iter().take(20).map(|id| key(id).shard).collect();
    let due = store
        .reminders_due(&k, &owned, 900, 100)
        .await
        .expect("due");
    // Owned (the first 20 ids' shards) and before 900: due 1000 - 10 i
    // < 900, so i in 11..20 (and any other id sharing an owned shard).
    assert!(!due.is_empty());
    for r in &due {
        assert!(
            owned.contains(&r.key.shard),
            "{r:?} is not in an owned shard"
        );
        assert!(r.due_ms < 900, "{r:?} is not due before 900");
    }
    assert!(
        due.windows(2).all(|w| w[0].due_ms <= w[1].due_ms),
        "earliest first"
    );
    for (i, id) in ids.iter().enumerate().take(20).skip(11) {
        assert!(
            due.iter().any(|r| *r.key.id == **id),
            "{id} (due {}) is missing",
            1000 - i * 10
        );
    }
    let two = store.reminders_due(&k, &owned, 900, 2).await.expect("due");
    assert_eq!(two, due[..2].to_vec(), "the limit keeps the earliest");
    let other = store
        .reminders_due(&kind("rdue-other"), &owned, u64::MAX, 100)
        .await
        .expect("due");
    assert!(other.is_empty(), "another kind's reminders: {other:?}");
}

async fn reminder_writes_are_fenced(store: &dyn StateStore) {
    let key = StateKey::new(kind("rfence"), "a");
    let r = reminder(&key, "tick", 1);
    assert_eq!(store.put_reminder(&r, 0, Some(5)).await, Ok(1));
    assert_eq!(
        store.put_reminder(&r, 1, Some(3)).await,
        Err(StoreError::Fenced {
            token: 3,
            stored: 5
        }),
        "an older owner's advance must be refused"
    );
    assert_eq!(
        store.delete_reminder(&key, "tick", 1, Some(3)).await,
        Err(StoreError::Fenced {
            token: 3,
            stored: 5
        }),
        "an older owner's delete must be refused"
    );
    assert_eq!(store.put_reminder(&r, 1, Some(7)).await, Ok(2));
    assert_eq!(
        store.put_reminder(&r, 2, Some(5)).await,
        Err(StoreError::Fenced {
            token: 5,
            stored: 7
        })
    );
    // Eventual mode: no token, the fence neither checked nor moved.
    assert_eq!(store.put_reminder(&r, 2, None).await, Ok(3));
    assert_eq!(
        store.put_reminder(&r, 3, Some(6)).await,
        Err(StoreError::Fenced {
            token: 6,
            stored: 7
        })
    );
}

async fn reminders_over_the_limit_are_refused(store: &dyn StateStore, limit: usize) {
    let key = StateKey::new(kind("rlimit"), "a");
    let mut r = reminder(&key, "big", 1);
    r.payload = vec![7; limit + 1];
    assert!(
        matches!(
            store.put_reminder(&r, 0, None).await,
            Err(StoreError::TooLarge { .. })
        ),
        "a reminder over the row limit must be refused"
    );
    assert_eq!(store.reminders_of(&key).await, Ok(Vec::new()));
}
