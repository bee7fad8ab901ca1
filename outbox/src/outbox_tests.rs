//! Tests of the on-disk outbox.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::{
    Counts, Envelope, Folder, Ingested, MessageState, Outbox, OutboxError, RecipientStatus,
};

fn env(from: &str, rcpts: &[&str]) -> Envelope {
    Envelope {
        from: from.to_owned(),
        recipients: rcpts.iter().map(|s| s.to_string()).collect(),
        dsn: None,
    }
}

fn message(n: usize) -> Vec<u8> {
    format!("From: alice@example.net\r\nTo: bob@example.org\r\nSubject: {n}\r\n\r\nbody {n}\r\n")
        .into_bytes()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn outbox() -> (tempfile::TempDir, Outbox) {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(&dir.path().join("data/linkrelay/alice")).unwrap();
    (dir, ob)
}

#[test]
fn open_creates_private_layout_and_files_are_private_even_with_umask_0() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("deep/er/alice");
    // The umask is per process; no other test checks modes, and every file and directory
    // this crate makes gets its mode set explicitly anyway.
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let result = (|| {
        let ob = Outbox::open(&root)?;
        let id = ob.enqueue(&env("alice@example.net", &["bob@example.org"]), &message(1))?;
        let mut st = ob.state(Folder::Queue, &id)?;
        st.attempts = 1;
        ob.update(&st)?;
        let failed = ob.store_failed_for_test(b"junk", "test")?;
        Ok::<_, OutboxError>((ob, id, failed))
    })();
    rustix::process::umask(old);
    let (ob, id, failed) = result.unwrap();
    assert_eq!(ob.root(), root);
    assert_eq!(mode(&root), 0o700);
    for sub in ["tmp", "new", "queue", "sent", "failed"] {
        assert_eq!(mode(&root.join(sub)), 0o700, "{sub}");
    }
    let qdir = root.join("queue").join(&id);
    assert_eq!(mode(&qdir), 0o700);
    assert_eq!(mode(&qdir.join("message.eml")), 0o600);
    assert_eq!(mode(&qdir.join("state.json")), 0o600);
    let fdir = root.join("failed").join(&failed);
    assert_eq!(mode(&fdir), 0o700);
    assert_eq!(mode(&fdir.join("message.eml")), 0o600);
    assert_eq!(mode(&fdir.join("state.json")), 0o600);
    assert_eq!(names(&qdir), ["message.eml", "state.json"]);

    // Re-opening resets modes that were widened.
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(root.join("queue"), fs::Permissions::from_mode(0o777)).unwrap();
    Outbox::open(&root).unwrap();
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join("queue")), 0o700);
}

/// The umask is per process and a restrictive one would break the tempdirs of tests running
/// beside this one, so this check runs in a child process of its own.
#[test]
fn files_and_dirs_are_private_with_a_restrictive_umask_too() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "outbox_tests::restrictive_umask_child",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(UMASK_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}

const UMASK_CHILD: &str = "LINKRELAY_OUTBOX_TEST_UMASK_CHILD";

#[test]
#[ignore = "run in its own process by files_and_dirs_are_private_with_a_restrictive_umask_too"]
fn restrictive_umask_child() {
    if std::env::var_os(UMASK_CHILD).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // No write bit for the owner, no access for anyone else.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o277));
    let root = dir.path().join("new/parents/alice");
    let ob = Outbox::open(&root).unwrap();
    let id = ob
        .enqueue(&env("alice@example.net", &["bob@example.org"]), &message(1))
        .unwrap();
    let mut st = ob.state(Folder::Queue, &id).unwrap();
    st.attempts = 1;
    ob.update(&st).unwrap();
    let failed = ob.store_failed_for_test(b"junk", "test").unwrap();
    for d in [
        dir.path().join("new"),
        dir.path().join("new/parents"),
        root.clone(),
        root.join("tmp"),
        root.join("new"),
        root.join("queue"),
        root.join("sent"),
        root.join("failed"),
        root.join("queue").join(&id),
        root.join("failed").join(&failed),
    ] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    for f in [
        root.join("queue").join(&id).join("message.eml"),
        root.join("queue").join(&id).join("state.json"),
        root.join("failed").join(&failed).join("message.eml"),
        root.join("failed").join(&failed).join("state.json"),
    ] {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    ob.finish_sent(&st).unwrap();
    assert_eq!(mode(&root.join("sent").join(&id).join("state.json")), 0o600);
}

impl Outbox {
    fn store_failed_for_test(&self, bytes: &[u8], reason: &str) -> Result<String, OutboxError> {
        // Through ingest_new, the only public way into failed/ for unparseable bytes.
        let new = self.root().join("new").join(format!("junk-{reason}"));
        fs::write(&new, bytes).map_err(|e| OutboxError::io("test", e))?;
        match self.ingest_new().pop() {
            Some(Ingested::Failed { id, .. }) => Ok(id),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn enqueue_list_update_finish_retry_remove_round_trip() {
    let (_dir, ob) = outbox();
    let root = ob.root().to_path_buf();
    let e = env(
        "alice@example.net",
        &["bob@example.org", "carol@example.org"],
    );
    let ids: Vec<String> = (0..4)
        .map(|n| ob.enqueue(&e, &message(n)).unwrap())
        .collect();
    assert!(names(&root.join("tmp")).is_empty());

    let queued = ob.list(Folder::Queue).unwrap();
    assert_eq!(
        queued.iter().map(|s| &s.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>()
    );
    let first = &queued[0];
    assert_eq!(first.version, MessageState::VERSION);
    assert_eq!(first.from, "alice@example.net");
    assert_eq!(first.size, message(0).len() as u64);
    assert_eq!(first.attempts, 0);
    assert_eq!(first.next_attempt, 0);
    assert!(first.queued_at > 1_700_000_000);
    assert_eq!(first.recipients.len(), 2);
    assert!(
        first
            .recipients
            .iter()
            .all(|r| r.status == RecipientStatus::Pending)
    );
    assert_eq!(first.pending().count(), 2);
    assert!(!first.is_done());
    assert_eq!(first.envelope(), e);
    assert_eq!(ob.read_message(Folder::Queue, &ids[0]).unwrap(), message(0));
    assert_eq!(ob.locate(&ids[0]).unwrap(), Some(Folder::Queue));
    assert_eq!(ob.state(Folder::Queue, &ids[1]).unwrap(), queued[1]);

    // update: an attempt that delivered to bob, deferred carol.
    let mut st = queued[0].clone();
    st.attempts = 1;
    st.next_attempt = 4_000_000_000;
    st.last_attempt = Some(1_800_000_000);
    st.last_relay = Some("relay-a".into());
    st.last_error = Some("451 4.3.0 try later".into());
    st.recipients[0].status = RecipientStatus::Sent;
    st.recipients[0].reply = Some("250 ok".into());
    ob.update(&st).unwrap();
    // Every write bumps the revision (see the outcome journal).
    st.revision += 1;
    assert_eq!(ob.state(Folder::Queue, &ids[0]).unwrap(), st);
    assert_eq!(ob.pending_names(&ids[0]), ["message.eml", "state.json"]);
    assert_eq!(
        st.pending().map(|r| r.addr.as_str()).collect::<Vec<_>>(),
        ["carol@example.org"]
    );

    // finish_sent
    st.recipients[1].status = RecipientStatus::Sent;
    st.sent_at = Some(1_800_000_100);
    st.sent_via = Some("relay-a".into());
    assert!(st.is_done());
    ob.finish_sent(&st).unwrap();
    st.revision += 1;
    assert_eq!(ob.locate(&ids[0]).unwrap(), Some(Folder::Sent));
    assert_eq!(ob.list(Folder::Sent).unwrap(), [st.clone()]);
    assert_eq!(ob.read_message(Folder::Sent, &ids[0]).unwrap(), message(0));
    assert!(matches!(
        ob.state(Folder::Queue, &ids[0]),
        Err(OutboxError::NotFound(_))
    ));
    assert!(matches!(ob.update(&st), Err(OutboxError::NotFound(_))));

    // finish_failed: one recipient rejected for good, the other delivered.
    let mut f = ob.state(Folder::Queue, &ids[1]).unwrap();
    f.attempts = 7;
    f.recipients[0].status = RecipientStatus::Failed;
    f.recipients[0].reply = Some("550 5.1.1 no such user".into());
    f.recipients[1].status = RecipientStatus::Sent;
    f.failure = Some("lifetime ran out".into());
    f.next_attempt = 123;
    f.backoff_step = 5;
    f.backoff_route = Some("home: relay-a".into());
    f.queued_at = 1_000;
    ob.finish_failed(&f).unwrap();
    f.revision += 1;
    assert_eq!(ob.locate(&ids[1]).unwrap(), Some(Folder::Failed));
    assert_eq!(ob.list(Folder::Failed).unwrap(), [f.clone()]);
    assert_eq!(
        ob.counts().unwrap(),
        Counts {
            queued: 2,
            failed: 1,
            sent: 1
        }
    );

    // retry a failed message: back to the queue, failure cleared, lifetime restarted.
    ob.retry(&ids[1]).unwrap();
    assert_eq!(ob.locate(&ids[1]).unwrap(), Some(Folder::Queue));
    let r = ob.state(Folder::Queue, &ids[1]).unwrap();
    assert_eq!(r.failure, None);
    assert_eq!(r.next_attempt, 0);
    assert_eq!(
        r.backoff_step, 0,
        "a retried message starts from the shortest delay"
    );
    assert_eq!(r.attempts, 7);
    assert!(r.queued_at > 1_000);
    assert_eq!(r.recipients[0].status, RecipientStatus::Pending);
    assert_eq!(
        r.recipients[0].reply.as_deref(),
        Some("550 5.1.1 no such user")
    );
    assert_eq!(r.recipients[1].status, RecipientStatus::Sent);
    // The queue is still in enqueue order.
    let order: Vec<String> = ob
        .list(Folder::Queue)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(order, &ids[1..]);

    // retry a queued message: next_attempt 0, attempts kept.
    let mut q = ob.state(Folder::Queue, &ids[2]).unwrap();
    q.attempts = 3;
    q.next_attempt = 4_000_000_000;
    q.backoff_step = 4;
    ob.update(&q).unwrap();
    assert_eq!(ob.state(Folder::Queue, &ids[2]).unwrap().backoff_step, 4);
    ob.retry(&ids[2]).unwrap();
    let q2 = ob.state(Folder::Queue, &ids[2]).unwrap();
    assert_eq!((q2.attempts, q2.next_attempt, q2.backoff_step), (3, 0, 0));

    // retry a sent message or an unknown one.
    assert!(matches!(
        ob.retry(&ids[0]),
        Err(OutboxError::WrongFolder {
            folder: Folder::Sent,
            ..
        })
    ));
    assert!(matches!(ob.retry("1.2.3.4"), Err(OutboxError::NotFound(_))));

    // remove
    assert_eq!(ob.remove(&ids[2]).unwrap(), Folder::Queue);
    assert_eq!(ob.locate(&ids[2]).unwrap(), None);
    let mut g = ob.state(Folder::Queue, &ids[3]).unwrap();
    g.failure = Some("bad".into());
    ob.finish_failed(&g).unwrap();
    assert_eq!(ob.remove(&ids[3]).unwrap(), Folder::Failed);
    assert_eq!(ob.locate(&ids[3]).unwrap(), None);
    // Sent mail may be dropped too (`linkrelay drop` of a sent id).
    let sent_copy = ob.root().join("sent").join(&ids[0]);
    assert!(sent_copy.exists());
    assert_eq!(ob.remove(&ids[0]).unwrap(), Folder::Sent);
    assert!(!sent_copy.exists());
    assert!(ob.remove(&ids[2]).unwrap_err().is_not_found());
    assert_eq!(
        ob.counts().unwrap(),
        Counts {
            queued: 1,
            failed: 0,
            sent: 0
        }
    );
    // Removal went through tmp/ and left nothing there.
    assert!(names(&root.join("tmp")).is_empty());
}

impl Outbox {
    fn pending_names(&self, id: &str) -> Vec<String> {
        names(&self.root().join("queue").join(id))
    }
}

#[test]
fn many_enqueues_list_in_order() {
    let (_dir, ob) = outbox();
    let e = env("", &["bob@example.org"]);
    let ids: Vec<String> = (0..50)
        .map(|n| ob.enqueue(&e, &message(n)).unwrap())
        .collect();
    let listed: Vec<String> = ob
        .list(Folder::Queue)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, ids);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids);
    assert_eq!(ob.state(Folder::Queue, &ids[0]).unwrap().from, "");
}

#[test]
fn enqueue_rejects_bad_envelopes_and_leaves_nothing() {
    let (_dir, ob) = outbox();
    for bad in [
        env("alice@example.net", &[]),
        env("alice@example.net", &["bob"]),
        env("alice@example.net", &["bob@example.org\r\nRCPT TO:<x@y>"]),
        env("alice example.net", &["bob@example.org"]),
        env("<alice@example.net>", &["bob@example.org"]),
    ] {
        assert!(
            matches!(ob.enqueue(&bad, b"x\r\n"), Err(OutboxError::BadEnvelope(_))),
            "{bad:?}"
        );
    }
    assert_eq!(ob.counts().unwrap(), Counts::default());
    assert!(names(&ob.root().join("tmp")).is_empty());
}

#[test]
fn ids_from_outside_are_validated() {
    let (_dir, ob) = outbox();
    for bad in [
        "../etc",
        "a/b",
        "..",
        "",
        "../queue",
        "/etc/passwd",
        "a\0b",
        ".x",
    ] {
        let is_bad = |r: Result<(), OutboxError>| matches!(r, Err(OutboxError::BadId(_)));
        assert!(is_bad(ob.locate(bad).map(|_| ())), "locate {bad:?}");
        assert!(
            is_bad(ob.state(Folder::Queue, bad).map(|_| ())),
            "state {bad:?}"
        );
        assert!(
            is_bad(ob.read_message(Folder::Failed, bad).map(|_| ())),
            "read {bad:?}"
        );
        assert!(is_bad(ob.retry(bad)), "retry {bad:?}");
        assert!(is_bad(ob.remove(bad).map(|_| ())), "remove {bad:?}");
        let mut st = MessageState::new(bad, &env("", &["a@b"]), 1, 1);
        st.id = bad.to_owned();
        assert!(is_bad(ob.update(&st)), "update {bad:?}");
        assert!(is_bad(ob.finish_sent(&st)), "finish_sent {bad:?}");
        assert!(is_bad(ob.finish_failed(&st)), "finish_failed {bad:?}");
    }
    assert!(matches!(ob.locate("1.2.3"), Ok(None)));
    assert!(matches!(
        ob.state(Folder::Sent, "1.2.3"),
        Err(OutboxError::NotFound(_))
    ));
}

#[test]
fn ingest_new_queues_good_files_and_fails_garbage() {
    let (_dir, ob) = outbox();
    let new = ob.root().join("new");
    fs::write(
        new.join("a-garbage"),
        b"this is not a mail message\n\x00\xff\n",
    )
    .unwrap();
    fs::write(
        new.join("b-no-recipients"),
        b"From: alice@example.net\nSubject: x\n\nhi\n",
    )
    .unwrap();
    fs::write(
        new.join("c-good"),
        b"From: Alice <alice@example.net>\nTo: bob@example.org\nCc: carol@example.org\n\
          Bcc: dave@example.org,\n eve@example.org\nSubject: dropped\n\nbody\n.\nmore\n",
    )
    .unwrap();
    fs::write(new.join(".d-in-progress"), b"From: a@b.c\nTo: d@e.f\n\n").unwrap();
    let outside = ob.root().parent().unwrap().join("outside.eml");
    fs::write(&outside, b"From: a@b.c\nTo: d@e.f\n\n").unwrap();
    symlink(&outside, new.join("e-link")).unwrap();
    fs::create_dir(new.join("f-dir")).unwrap();

    let results = ob.ingest_new();
    assert_eq!(results.len(), 3, "{results:?}");
    let (garbage_id, reason) = match &results[0] {
        Ingested::Failed { file, id, reason } if file == "a-garbage" => {
            (id.clone(), reason.clone())
        }
        other => panic!("{other:?}"),
    };
    assert!(reason.contains("header section"), "{reason}");
    let no_rcpt_id = match &results[1] {
        Ingested::Failed { file, id, reason } if file == "b-no-recipients" => {
            assert_eq!(reason, "no recipients");
            id.clone()
        }
        other => panic!("{other:?}"),
    };
    let good_id = match &results[2] {
        Ingested::Queued { file, id } if file == "c-good" => id.clone(),
        other => panic!("{other:?}"),
    };
    // Skipped: the dotfile, the link, the directory; the others are gone.
    assert_eq!(names(&new), [".d-in-progress", "e-link", "f-dir"]);
    assert!(names(&ob.root().join("tmp")).is_empty());

    let st = ob.state(Folder::Queue, &good_id).unwrap();
    assert_eq!(st.from, "alice@example.net");
    assert_eq!(
        st.envelope().recipients,
        [
            "bob@example.org",
            "carol@example.org",
            "dave@example.org",
            "eve@example.org"
        ]
    );
    let msg = ob.read_message(Folder::Queue, &good_id).unwrap();
    let text = String::from_utf8(msg.clone()).unwrap();
    assert!(!text.contains("dave") && !text.contains("eve@"), "{text}");
    assert!(text.ends_with("\r\n\r\nbody\r\n.\r\nmore\r\n"), "{text}");
    assert_eq!(st.size, msg.len() as u64);

    let failed = ob.state(Folder::Failed, &garbage_id).unwrap();
    assert_eq!(failed.failure.as_deref(), Some(reason.as_str()));
    assert!(failed.recipients.is_empty());
    assert_eq!(
        ob.read_message(Folder::Failed, &garbage_id).unwrap(),
        b"this is not a mail message\n\x00\xff\n"
    );
    assert_eq!(ob.list(Folder::Failed).unwrap().len(), 2);
    // A failed file has no envelope to retry with.
    assert!(matches!(
        ob.retry(&no_rcpt_id),
        Err(OutboxError::BadEnvelope(_))
    ));
    // Nothing left to do.
    assert!(ob.ingest_new().is_empty());
}

#[test]
fn corrupt_state_moves_to_failed_and_does_not_block_the_rest() {
    let (_dir, ob) = outbox();
    let e = env("alice@example.net", &["bob@example.org"]);
    let ids: Vec<String> = (0..5)
        .map(|n| ob.enqueue(&e, &message(n)).unwrap())
        .collect();
    let q = ob.root().join("queue");
    fs::write(q.join(&ids[1]).join("state.json"), b"{ not json").unwrap();
    fs::remove_file(q.join(&ids[2]).join("state.json")).unwrap();
    // A state about another message.
    let other = fs::read(q.join(&ids[0]).join("state.json")).unwrap();
    fs::write(q.join(&ids[3]).join("state.json"), other).unwrap();
    // Stray entries that are not messages are ignored.
    fs::write(q.join("not-a-dir"), b"x").unwrap();
    fs::create_dir(q.join("not an id")).unwrap();

    let listed: Vec<String> = ob
        .list(Folder::Queue)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, [ids[0].clone(), ids[4].clone()]);
    for (id, needle) in [
        (&ids[1], "state.json"),
        (&ids[2], "missing"),
        (&ids[3], "about message"),
    ] {
        assert_eq!(ob.locate(id).unwrap(), Some(Folder::Failed), "{id}");
        let st = ob.state(Folder::Failed, id).unwrap();
        let failure = st.failure.unwrap();
        assert!(failure.contains(needle), "{failure}");
        assert_eq!(st.size, message(0).len() as u64);
        assert_eq!(
            ob.read_message(Folder::Failed, id).unwrap().len() as u64,
            st.size
        );
    }
    assert!(
        ob.root()
            .join("failed")
            .join(&ids[1])
            .join("state.json.corrupt")
            .exists()
    );
    assert_eq!(
        ob.counts().unwrap(),
        Counts {
            queued: 2,
            failed: 3,
            sent: 0
        }
    );
    // A corrupt state in failed/ is shown, not hidden.
    fs::write(
        ob.root().join("failed").join(&ids[1]).join("state.json"),
        b"[]",
    )
    .unwrap();
    let failed = ob.list(Folder::Failed).unwrap();
    assert_eq!(failed.len(), 3);
    assert!(failed[0].failure.as_deref().unwrap().contains("state.json"));
    assert!(matches!(
        ob.state(Folder::Failed, &ids[1]),
        Err(OutboxError::Corrupt { .. })
    ));
}

#[test]
fn state_json_tolerates_unknown_fields_and_missing_optionals() {
    let json = r#"{"version": 9, "id": "1.2.3.4", "from": "", "size": 10, "queued_at": 5,
        "recipients": [{"addr": "a@b.c", "status": "failed", "new_field": 1}],
        "something_new": {"x": [1, 2]}}"#;
    let st: MessageState = serde_json::from_str(json).unwrap();
    assert_eq!(st.version, 9);
    assert_eq!(st.attempts, 0);
    assert_eq!(st.next_attempt, 0);
    assert_eq!(st.last_attempt, None);
    assert_eq!(st.failure, None);
    // Written before the backoff was persisted: it starts from the shortest delay.
    assert_eq!(st.backoff_step, 0);
    assert_eq!(st.backoff_route, None);
    assert_eq!(st.recipients[0].status, RecipientStatus::Failed);
    assert_eq!(st.recipients[0].reply, None);
    assert!(st.is_done());
    let v = serde_json::to_value(&st).unwrap();
    assert_eq!(v["recipients"][0]["status"], "failed");
    assert_eq!(
        serde_json::to_value(RecipientStatus::Pending).unwrap(),
        "pending"
    );
    assert_eq!(serde_json::to_value(Folder::Failed).unwrap(), "failed");
    assert_eq!(Folder::Queue.to_string(), "queue");
    assert_eq!(Folder::Sent.to_string(), "sent");
    assert_eq!(Folder::Failed.to_string(), "failed");
}

#[test]
fn symlinks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    fs::create_dir(&real).unwrap();

    // The root itself.
    let root = dir.path().join("alice");
    symlink(&real, &root).unwrap();
    assert!(matches!(
        Outbox::open(&root),
        Err(OutboxError::Unsafe { .. })
    ));

    // A subdirectory.
    let root = dir.path().join("bob");
    Outbox::open(&root).unwrap();
    fs::remove_dir(root.join("queue")).unwrap();
    symlink(&real, root.join("queue")).unwrap();
    match Outbox::open(&root) {
        Err(OutboxError::Unsafe { path, reason }) => {
            assert_eq!(path, root.join("queue"));
            assert!(reason.contains("symbolic link"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(names(&real).is_empty());

    // A regular file where a directory should be.
    let root = dir.path().join("carol");
    fs::write(&root, b"").unwrap();
    assert!(matches!(
        Outbox::open(&root),
        Err(OutboxError::Unsafe { .. })
    ));

    // A message directory that is a link to a real message elsewhere.
    let (_d, ob) = outbox();
    let id = ob.enqueue(&env("a@b.c", &["d@e.f"]), &message(0)).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    fs::rename(ob.root().join("queue").join(&id), &elsewhere).unwrap();
    symlink(&elsewhere, ob.root().join("queue").join(&id)).unwrap();
    assert!(matches!(ob.locate(&id), Err(OutboxError::Unsafe { .. })));
    assert!(matches!(
        ob.state(Folder::Queue, &id),
        Err(OutboxError::Unsafe { .. })
    ));
    assert!(matches!(
        ob.read_message(Folder::Queue, &id),
        Err(OutboxError::Unsafe { .. })
    ));
    let st = MessageState::new(&id, &env("a@b.c", &["d@e.f"]), 1, 1);
    assert!(matches!(ob.update(&st), Err(OutboxError::Unsafe { .. })));
    assert!(ob.list(Folder::Queue).unwrap().is_empty());
    assert_eq!(ob.counts().unwrap().queued, 0);
    // The link was not followed: the real message is untouched.
    assert_eq!(names(&elsewhere), ["message.eml", "state.json"]);

    // A state.json that is a link.
    let id2 = ob.enqueue(&env("a@b.c", &["d@e.f"]), &message(1)).unwrap();
    let state = ob.root().join("queue").join(&id2).join("state.json");
    fs::rename(&state, dir.path().join("state-elsewhere.json")).unwrap();
    symlink(dir.path().join("state-elsewhere.json"), &state).unwrap();
    assert!(matches!(
        ob.state(Folder::Queue, &id2),
        Err(OutboxError::Unsafe { .. })
    ));
    let mut st2 = MessageState::new(&id2, &env("a@b.c", &["d@e.f"]), 1, 1);
    st2.attempts = 5;
    // update replaces the link, never writes through it.
    ob.update(&st2).unwrap();
    st2.revision += 1;
    assert_eq!(ob.state(Folder::Queue, &id2).unwrap(), st2);
    let outside: MessageState =
        serde_json::from_slice(&fs::read(dir.path().join("state-elsewhere.json")).unwrap())
            .unwrap();
    assert_eq!(outside.attempts, 0);
}

#[test]
fn directories_of_another_uid_are_refused() {
    if !is_root() {
        // Only root can give a directory away; nothing to check as a normal user.
        return;
    }
    let (_d, ob) = outbox();
    let root = ob.root().to_path_buf();
    let nobody = rustix::process::Uid::from_raw(65534);
    rustix::fs::chown(root.join("failed"), Some(nobody), None).unwrap();
    match Outbox::open(&root) {
        Err(OutboxError::Unsafe { path, reason }) => {
            assert_eq!(path, root.join("failed"));
            assert!(reason.contains("65534"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    rustix::fs::chown(root.join("failed"), Some(rustix::process::getuid()), None).unwrap();
    rustix::fs::chown(&root, Some(nobody), None).unwrap();
    assert!(matches!(
        Outbox::open(&root),
        Err(OutboxError::Unsafe { .. })
    ));
}

#[test]
fn failed_enqueue_leaves_nothing_behind() {
    let (_d, ob) = outbox();
    let root = ob.root().to_path_buf();
    let e = env("alice@example.net", &["bob@example.org"]);

    // queue/ replaced by a file: the final rename fails, even for root.
    fs::remove_dir(root.join("queue")).unwrap();
    fs::write(root.join("queue"), b"").unwrap();
    let err = ob.enqueue(&e, &message(0)).unwrap_err();
    assert!(matches!(err, OutboxError::Io { .. }), "{err}");
    assert!(!err.is_no_space());
    assert!(names(&root.join("tmp")).is_empty());
    fs::remove_file(root.join("queue")).unwrap();
    fs::create_dir(root.join("queue")).unwrap();

    // tmp/ gone: nothing can be built.
    fs::remove_dir(root.join("tmp")).unwrap();
    assert!(matches!(
        ob.enqueue(&e, &message(0)),
        Err(OutboxError::Io { .. })
    ));
    assert!(names(&root.join("queue")).is_empty());
    let ob = Outbox::open(&root).unwrap();

    if !is_root() {
        // A read-only queue/ (as root that would not fail).
        fs::set_permissions(root.join("queue"), fs::Permissions::from_mode(0o500)).unwrap();
        let err = ob.enqueue(&e, &message(0)).unwrap_err();
        fs::set_permissions(root.join("queue"), fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(err, OutboxError::Io { .. }), "{err}");
        assert!(names(&root.join("tmp")).is_empty());
        assert!(names(&root.join("queue")).is_empty());
    }

    // And it works again afterwards.
    let id = ob.enqueue(&e, &message(0)).unwrap();
    assert_eq!(names(&root.join("queue")), [id]);
}

#[test]
fn no_space_is_recognised() {
    for (code, expected) in [
        (rustix::io::Errno::NOSPC, true),
        (rustix::io::Errno::DQUOT, true),
        (rustix::io::Errno::IO, false),
    ] {
        let e = OutboxError::io("writing", io::Error::from(code));
        assert_eq!(e.is_no_space(), expected, "{code:?}");
    }
    assert!(!OutboxError::NotFound("x".into()).is_no_space());
}

#[test]
fn recover_clears_old_tmp_leftovers_only() {
    let (_d, ob) = outbox();
    let tmp = ob.root().join("tmp");
    let id = ob.enqueue(&env("a@b.c", &["d@e.f"]), &message(0)).unwrap();
    let old = SystemTime::now() - Duration::from_secs(120);
    let set_old = |p: &PathBuf| {
        fs::File::open(p).unwrap().set_modified(old).unwrap();
    };
    // An old half-built message.
    let half = tmp.join("1.2.3.old");
    fs::create_dir(&half).unwrap();
    fs::write(half.join("message.eml"), b"x").unwrap();
    set_old(&half.join("message.eml"));
    set_old(&half);
    // An old stray file.
    fs::write(tmp.join("stray"), b"x").unwrap();
    set_old(&tmp.join("stray"));
    // A directory being written right now (old dir, fresh file in it), and a fresh one.
    let busy = tmp.join("1.2.3.busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("message.eml"), b"x").unwrap();
    set_old(&busy);
    fs::create_dir(tmp.join("1.2.3.fresh")).unwrap();
    // A link: removed without being followed.
    let target = ob.root().parent().unwrap().join("target");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("keep"), b"x").unwrap();
    symlink(&target, tmp.join("link")).unwrap();
    rustix::fs::utimensat(
        rustix::fs::CWD,
        tmp.join("link"),
        &rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            },
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();

    ob.recover().unwrap();
    assert_eq!(names(&tmp), ["1.2.3.busy", "1.2.3.fresh"]);
    assert_eq!(names(&target), ["keep"]);
    assert_eq!(ob.locate(&id).unwrap(), Some(Folder::Queue));
}

#[test]
fn no_state_tmp_left_after_update() {
    let (_d, ob) = outbox();
    let id = ob.enqueue(&env("a@b.c", &["d@e.f"]), &message(0)).unwrap();
    let dir = ob.root().join("queue").join(&id);
    // A stale state.json.tmp from a crash is replaced, not an obstacle.
    fs::write(dir.join("state.json.tmp"), b"stale").unwrap();
    let mut st = ob.state(Folder::Queue, &id).unwrap();
    st.attempts = 2;
    ob.update(&st).unwrap();
    assert_eq!(names(&dir), ["message.eml", "state.json"]);
    assert_eq!(ob.state(Folder::Queue, &id).unwrap().attempts, 2);
}

#[test]
fn a_listing_skips_what_it_cannot_read_in_the_queue_and_moves_nothing() {
    let (_dir, ob) = outbox();
    let e = env("alice@example.net", &["bob@example.org"]);
    let whole = ob.enqueue(&e, &message(0)).unwrap();
    let half = ob.enqueue(&e, &message(1)).unwrap();
    // A message a writer is still filling in: its state file is there but empty.
    let q = ob.root().join("queue");
    fs::write(q.join(&half).join("state.json"), b"").unwrap();

    let reader = ob.reader(Folder::Queue).unwrap();
    assert_eq!(reader.entry(&whole).map(|s| s.id), Some(whole.clone()));
    assert!(reader.entry(&half).is_none());
    // Still queued, untouched: the flusher, not a listing, decides what is unusable.
    assert_eq!(ob.locate(&half).unwrap(), Some(Folder::Queue));
    assert!(q.join(&half).join("state.json").exists());
    // Once written, it is listed.
    let state = fs::read(q.join(&whole).join("state.json")).unwrap();
    let state = String::from_utf8(state).unwrap().replace(&whole, &half);
    fs::write(q.join(&half).join("state.json"), state).unwrap();
    assert_eq!(reader.entry(&half).map(|s| s.id), Some(half));
}

/// Makes `path` a sparse file claiming 64 GiB (nothing written).
fn sparse_64_gib(path: &Path) {
    let f = fs::File::create(path).unwrap();
    f.set_len(64 << 30).unwrap();
}

#[test]
fn a_sparse_64_gib_file_in_new_goes_to_failed_unread_and_the_others_are_queued() {
    let (_d, ob) = outbox();
    sparse_64_gib(&ob.root().join("new/a-huge"));
    fs::write(ob.root().join("new/b-fine"), message(1)).unwrap();
    let done = ob.ingest_new();
    assert_eq!(done.len(), 2, "{done:?}");
    let Ingested::Failed { file, id, reason } = &done[0] else {
        panic!("{done:?}");
    };
    assert_eq!(file, "a-huge");
    assert!(
        reason.contains("larger than the 52428800 bytes of [outbox] max_message_size"),
        "{reason}"
    );
    assert!(matches!(&done[1], Ingested::Queued { file, .. } if file == "b-fine"));
    assert!(names(&ob.root().join("new")).is_empty());
    // Moved, not copied: still sparse, with the reason beside it.
    let moved = ob.root().join("failed").join(id).join("message.eml");
    assert_eq!(fs::metadata(&moved).unwrap().len(), 64 << 30);
    let state = ob.state(Folder::Failed, id).unwrap();
    assert_eq!(state.failure.as_deref(), Some(reason.as_str()));
    assert_eq!(state.size, 64 << 30);
}

#[test]
fn the_message_size_limit_is_the_outboxs_to_set() {
    let (_d, ob) = outbox();
    let ob = ob.with_limits(crate::Limits {
        max_message_size: 100,
    });
    fs::write(ob.root().join("new/big"), vec![b'x'; 101]).unwrap();
    let done = ob.ingest_new();
    assert!(
        matches!(&done[..], [Ingested::Failed { reason, .. }] if reason.contains("101 bytes, larger than the 100 bytes")),
        "{done:?}"
    );
    // A queued message that has grown past the limit (a lower limit since) cannot be read.
    let big = Outbox::open(ob.root()).unwrap();
    let id = big
        .enqueue(&env("a@example.net", &["b@example.org"]), &[b'y'; 200])
        .unwrap();
    match ob.read_message(Folder::Queue, &id) {
        Err(OutboxError::Corrupt { reason, .. }) => {
            assert!(reason.contains("too large to read"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sparse_64_gib_state_or_message_is_refused_unread_and_the_queue_goes_on() {
    let (_d, ob) = outbox();
    let e = env("a@example.net", &["b@example.org"]);
    let bad_state = ob.enqueue(&e, &message(1)).unwrap();
    let bad_message = ob.enqueue(&e, &message(2)).unwrap();
    let fine = ob.enqueue(&e, &message(3)).unwrap();
    sparse_64_gib(&ob.root().join("queue").join(&bad_state).join("state.json"));
    sparse_64_gib(
        &ob.root()
            .join("queue")
            .join(&bad_message)
            .join("message.eml"),
    );
    // The listing sets the state aside (moved to failed/ with the reason) and goes on.
    let listed: Vec<String> = ob
        .list(Folder::Queue)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, [bad_message.clone(), fine.clone()]);
    let failed = ob.state(Folder::Failed, &bad_state).unwrap();
    assert!(
        failed
            .failure
            .as_deref()
            .unwrap()
            .contains("too large to read"),
        "{failed:?}"
    );
    assert!(
        ob.root()
            .join("failed")
            .join(&bad_state)
            .join("state.json.corrupt")
            .exists()
    );
    assert!(matches!(
        ob.read_message(Folder::Queue, &bad_message),
        Err(OutboxError::Corrupt { .. })
    ));
    assert_eq!(ob.read_message(Folder::Queue, &fine).unwrap(), message(3));
    // The reader that listings use skips it without reading it.
    let reader = ob.reader(Folder::Queue).unwrap();
    assert!(reader.entry(&fine).is_some());
}

#[test]
fn prune_removes_what_was_sent_longer_ago_than_kept_and_keeps_the_rest() {
    let (_d, ob) = outbox();
    let e = env("a@example.net", &["b@example.org"]);
    let now = crate::id::now_secs();
    let mut ids = Vec::new();
    for (n, sent_ago) in [(1, 10 * 86_400), (2, 86_400), (3, 60)] {
        // Queued a minute before it was sent (the id says when).
        let id = format!("{:010}.000000.1.abc{n}", now - sent_ago - 60);
        let make_state = |id: &str, size| {
            let mut st = MessageState::new(id, &e, size, now - sent_ago - 60);
            st.sent_at = Some(now - sent_ago);
            st.recipients[0].status = RecipientStatus::Sent;
            st
        };
        let content = crate::outbox::Content::Bytes(&message(n));
        ob.build_and_move(Some(&id), Folder::Sent, content, make_state, true)
            .unwrap();
        ids.push(id);
    }
    let queued = ob.enqueue(&e, &message(4)).unwrap();
    let keep = Duration::from_secs(3 * 86_400);
    let pruned = ob.prune_sent(now, keep, u64::MAX).unwrap();
    assert_eq!(pruned.removed, 1);
    assert_eq!(pruned.kept, 2);
    assert_eq!(pruned.freed, message(1).len() as u64);
    // Mail queued since the cutoff is not read: its expiry counts from its queueing, a
    // little early (the next prune then finds it due, or not yet).
    assert_eq!(pruned.next_expiry, Some(now - 86_400 - 60 + 3 * 86_400));
    assert_eq!(names(&ob.root().join("sent")), ids[1..].to_vec());
    assert_eq!(ob.locate(&queued).unwrap(), Some(Folder::Queue));
    // Over the size kept: the oldest goes first.
    let pruned = ob.prune_sent(now, keep, message(3).len() as u64).unwrap();
    assert_eq!((pruned.removed, pruned.kept), (1, 1));
    assert_eq!(names(&ob.root().join("sent")), [ids[2].clone()]);
    assert!(names(&ob.root().join("tmp")).is_empty());
}

#[test]
fn a_message_opened_to_be_read_in_pieces_is_its_file_and_never_a_link() {
    use std::io::Read;
    let (dir, ob) = outbox();
    let id = ob.enqueue(&env("a@b.c", &["d@e.f"]), &message(0)).unwrap();
    let mut got = Vec::new();
    ob.open_message(Folder::Queue, &id)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, message(0));

    let eml = ob.root().join("queue").join(&id).join("message.eml");
    let outside = dir.path().join("outside.eml");
    fs::write(&outside, b"not in the outbox").unwrap();
    fs::remove_file(&eml).unwrap();
    symlink(&outside, &eml).unwrap();
    assert!(matches!(
        ob.open_message(Folder::Queue, &id),
        Err(OutboxError::Unsafe { .. })
    ));
    fs::remove_file(&eml).unwrap();
    fs::create_dir(&eml).unwrap();
    assert!(ob.open_message(Folder::Queue, &id).is_err());
    assert!(matches!(
        ob.open_message(Folder::Queue, "../x"),
        Err(OutboxError::BadId(_))
    ));
}
