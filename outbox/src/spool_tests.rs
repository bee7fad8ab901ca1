//! Tests of `incoming/.spool`: what a running agent's outbox gets from `submit`, torn records
//! and crashes included.
#![allow(clippy::unwrap_used)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use crate::spool::{Item, encode};
use crate::{Envelope, Folder, Ingested, Outbox, RecipientStatus};

/// An outbox as a running agent holds it: journal open, spool made.
fn held() -> (tempfile::TempDir, Outbox, crate::Journal) {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(&dir.path().join("alice")).unwrap();
    let (journal, _) = ob.open_journal().unwrap();
    (dir, ob, journal)
}

fn env(rcpt: &str) -> Envelope {
    Envelope {
        from: "alice@example.net".into(),
        recipients: vec![rcpt.into()],
        dsn: None,
    }
}

/// Bytes waiting in the spool: appended and not yet taken, or taken by a drain that has not
/// finished (`.spool.taken`).
fn spool_len(ob: &Outbox) -> u64 {
    let taken = fs::metadata(ob.root().join("incoming/.spool.taken")).map_or(0, |m| m.len());
    fs::metadata(ob.root().join("incoming/.spool"))
        .unwrap()
        .len()
        + taken
}

fn queued(ob: &Outbox) -> Vec<String> {
    ob.list(Folder::Queue)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}

const MSG: &[u8] = b"From: alice@example.net\r\nSubject: hi\r\n\r\nbody\r\n";

#[test]
fn with_an_agent_a_submitted_message_is_appended_to_the_private_spool() {
    let (_d, ob, _j) = held();
    let mode = fs::metadata(ob.root().join("incoming/.spool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let id = ob.submit(&env("bob@example.org"), MSG).unwrap();
    // No file per message, nothing left in tmp/.
    assert_eq!(fs::read_dir(ob.root().join("incoming")).unwrap().count(), 1);
    assert_eq!(fs::read_dir(ob.root().join("tmp")).unwrap().count(), 0);
    assert!(spool_len(&ob) > MSG.len() as u64);
    // Queued for the user already: listed and counted, as a fresh message.
    let listed = ob.list(Folder::Queue).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].size, MSG.len() as u64);
    assert_eq!(ob.counts().unwrap().queued, 1);

    let done = ob.ingest_incoming();
    assert!(
        matches!(&done[..], [Ingested::Queued { id: got, .. }] if *got == id),
        "{done:?}"
    );
    assert_eq!(spool_len(&ob), 0);
    let st = ob.state(Folder::Queue, &id).unwrap();
    assert_eq!(st.from, "alice@example.net");
    assert_eq!(st.recipients[0].addr, "bob@example.org");
    assert_eq!(st.recipients[0].status, RecipientStatus::Pending);
    assert_eq!(ob.read_message(Folder::Queue, &id).unwrap(), MSG);
    assert_eq!(ob.counts().unwrap().queued, 1);
    // An empty spool is nothing to do.
    assert!(ob.ingest_incoming().is_empty());
}

#[test]
fn the_spool_keeps_the_order_of_submission() {
    let (_d, ob, _j) = held();
    let ids: Vec<String> = (0..20)
        .map(|i| ob.submit(&env(&format!("r{i}@example.org")), MSG).unwrap())
        .collect();
    assert_eq!(queued(&ob), ids);
    ob.ingest_incoming();
    assert_eq!(queued(&ob), ids);
}

#[test]
fn records_left_by_a_crash_after_ingestion_are_not_queued_twice() {
    let (_d, ob, mut journal) = held();
    let id = ob.submit(&env("bob@example.org"), MSG).unwrap();
    let copy = fs::read(ob.root().join("incoming/.spool")).unwrap();
    ob.ingest_incoming();
    // The crash came after the round's syncfs, before the spool was emptied.
    fs::write(ob.root().join("incoming/.spool"), &copy).unwrap();
    assert!(ob.ingest_incoming().is_empty());
    assert_eq!(spool_len(&ob), 0);
    assert_eq!(queued(&ob), std::slice::from_ref(&id));

    // Even once the message was sent and moved on.
    let mut st = ob.state(Folder::Queue, &id).unwrap();
    st.recipients[0].status = RecipientStatus::Sent;
    journal.record(&mut st, Folder::Sent).unwrap();
    fs::write(ob.root().join("incoming/.spool"), &copy).unwrap();
    assert!(ob.ingest_incoming().is_empty());
    assert!(queued(&ob).is_empty());
    assert_eq!(ob.list(Folder::Sent).unwrap()[0].id, id);
}

#[test]
fn a_record_torn_by_a_killed_writer_goes_to_failed_and_the_rest_is_queued() {
    let (_d, ob, _j) = held();
    let first = ob.submit(&env("bob@example.org"), MSG).unwrap();
    // A writer killed in the middle of its append: header and half the payload.
    let torn = encode(
        "1700000000.000001.1.abcd",
        b"linkrelay-envelope 1 {\"from\":\"a@b\"}\nxyz",
    );
    OpenOptions::new()
        .append(true)
        .open(ob.root().join("incoming/.spool"))
        .unwrap()
        .write_all(&torn[..torn.len() - 10])
        .unwrap();
    // A listing skips what does not check out.
    assert_eq!(ob.counts().unwrap().queued, 1);
    let last = ob.submit(&env("carol@example.org"), MSG).unwrap();
    assert_eq!(ob.counts().unwrap().queued, 2);

    let done = ob.ingest_incoming();
    assert_eq!(done.len(), 3, "{done:?}");
    // The records first, then what is no record.
    let Ingested::Failed { id, reason, .. } = &done[2] else {
        panic!("{done:?}");
    };
    assert!(reason.contains("checksum"), "{reason}");
    let failed = ob.state(Folder::Failed, id).unwrap();
    assert_eq!(failed.failure.as_deref(), Some(reason.as_str()));
    // The torn bytes are kept for the user to look at.
    assert_eq!(
        ob.read_message(Folder::Failed, id).unwrap(),
        &torn[..torn.len() - 10]
    );
    assert_eq!(queued(&ob), [first, last]);
    assert_eq!(spool_len(&ob), 0);
}

#[test]
fn a_message_that_does_not_parse_goes_to_failed_and_blocks_nothing() {
    let (_d, ob, _j) = held();
    let bad = encode("1700000000.000001.1.abcd", b"no envelope line");
    fs::write(ob.root().join("incoming/.spool"), &bad).unwrap();
    let good = ob.submit(&env("bob@example.org"), MSG).unwrap();
    let done = ob.ingest_incoming();
    assert_eq!(done.len(), 2, "{done:?}");
    let Ingested::Failed { reason, .. } = &done[0] else {
        panic!("{done:?}");
    };
    assert!(reason.contains("envelope line"), "{reason}");
    assert_eq!(queued(&ob), [good]);
}

#[test]
fn a_spool_that_is_a_link_or_a_fifo_is_refused_and_not_followed() {
    let (d, ob, _j) = held();
    let spool = ob.root().join("incoming/.spool");
    let elsewhere = d.path().join("elsewhere");
    fs::write(&elsewhere, b"").unwrap();
    fs::remove_file(&spool).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &spool).unwrap();
    assert!(ob.submit(&env("bob@example.org"), MSG).is_err());
    assert_eq!(fs::read(&elsewhere).unwrap(), b"");
    fs::remove_file(&spool).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &spool,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    // Neither blocks on the FIFO.
    assert!(ob.submit(&env("bob@example.org"), MSG).is_err());
    assert!(queued(&ob).is_empty());
}

#[test]
fn concurrent_submitters_and_an_ingesting_agent_lose_and_double_nothing() {
    let (_d, ob, _j) = held();
    let ids: Vec<String> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..50)
                        .map(|_| ob.submit(&env("bob@example.org"), MSG).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let agent = s.spawn(|| {
            for _ in 0..100 {
                ob.ingest_incoming();
            }
        });
        let ids = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        agent.join().unwrap();
        ids
    });
    ob.ingest_incoming();
    let mut ids = ids;
    ids.sort();
    assert_eq!(queued(&ob), ids);
    assert_eq!(spool_len(&ob), 0);
    assert_eq!(fs::read_dir(ob.root().join("failed")).unwrap().count(), 0);
}

/// The items of spool bytes, read as the agent reads them.
fn items(bytes: &[u8]) -> Vec<Item> {
    crate::spool::items(bytes, 1 << 20)
        .map(Result::unwrap)
        .collect()
}

#[test]
fn records_are_told_from_garbage() {
    let a = encode("1700000000.000001.1.abcd", b"first");
    let b = encode("1700000000.000002.1.abcd", b"second\nline");
    let joined = [a.as_slice(), b.as_slice()].concat();
    assert_eq!(
        items(&joined),
        [
            Item::Record {
                id: "1700000000.000001.1.abcd".into(),
                payload: b"first".to_vec()
            },
            Item::Record {
                id: "1700000000.000002.1.abcd".into(),
                payload: b"second\nline".to_vec()
            }
        ]
    );
    // Leading junk, then a good record: the junk alone is garbage.
    let junk = [b"junk".as_slice(), &a].concat();
    let got = items(&junk);
    assert!(matches!(&got[0], Item::Garbage { sample, len: 4, .. } if sample == b"junk"));
    assert!(matches!(&got[1], Item::Record { payload, .. } if payload == b"first"));
    // Cut short at the end.
    let got = items(&b[..b.len() - 1]);
    assert!(matches!(&got[..], [Item::Garbage { reason, .. }] if reason.contains("cut short")));
    // A flipped payload byte.
    let mut flipped = a.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(
        matches!(&items(&flipped)[..], [Item::Garbage { reason, .. }] if reason.contains("checksum"))
    );
    // A header with a bad id or length.
    for bad in [
        b"linkrelay-spool 1 ../x 5 00000000\nfirst".as_slice(),
        b"linkrelay-spool 1 1700000000.000001.1.abcd -5 00000000\nfirst",
        b"linkrelay-spool 1 1700000000.000001.1.abcd 5\nfirst",
    ] {
        assert!(
            matches!(&items(bad)[..], [Item::Garbage { .. }]),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(items(b"").is_empty());
}

#[test]
fn a_record_claiming_more_than_a_message_may_have_is_garbage_and_nothing_is_allocated_for_it() {
    let claim = b"linkrelay-spool 1 1700000000.000001.1.abcd 68719476736 00000000\nx";
    let a = encode("1700000000.000002.1.abcd", b"after");
    let got = items(&[claim.as_slice(), &a].concat());
    assert!(
        matches!(&got[0], Item::Garbage { reason, .. } if reason.contains("claims 68719476736 bytes")),
        "{got:?}"
    );
    assert!(matches!(&got[1], Item::Record { payload, .. } if payload == b"after"));
}

#[test]
fn a_sparse_64_gib_spool_is_garbage_kept_as_a_sample_and_the_records_around_it_are_queued() {
    let (_d, ob, _j) = held();
    let before = ob.submit(&env("bob@example.org"), MSG).unwrap();
    let path = ob.root().join("incoming/.spool");
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    // 64 GiB of hole after the first record: nothing written, nothing read.
    f.set_len(64 << 30).unwrap();
    drop(f);
    let after = ob.submit(&env("carol@example.org"), MSG).unwrap();
    // Listed without reading the hole.
    let listed: Vec<String> = ob.incoming_states().into_iter().map(|s| s.id).collect();
    assert_eq!(listed, [before.clone(), after.clone()]);
    let done = ob.ingest_incoming();
    assert!(
        !done.iter().any(|i| matches!(i, Ingested::Deferred { .. })),
        "{done:?}"
    );
    assert_eq!(queued(&ob), [before, after]);
    assert_eq!(spool_len(&ob), 0);
    let failed = ob.list(Folder::Failed).unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let reason = failed[0].failure.clone().unwrap();
    assert!(
        reason.contains("unusable bytes in incoming/.spool"),
        "{reason}"
    );
    assert!(reason.contains("the first 65536 are kept here"), "{reason}");
    let kept = ob.read_message(Folder::Failed, &failed[0].id).unwrap();
    assert_eq!(kept.len(), 64 * 1024);
}

#[test]
fn a_round_that_cannot_take_everything_in_keeps_garbage_for_the_round_that_can() {
    let (_d, ob, _j) = held();
    let good = ob.submit(&env("bob@example.org"), MSG).unwrap();
    let blocked = ob.submit(&env("carol@example.org"), MSG).unwrap();
    OpenOptions::new()
        .append(true)
        .open(ob.root().join("incoming/.spool"))
        .unwrap()
        .write_all(b"junk a killed writer left")
        .unwrap();
    // Something in the way of one message's queue entry (a full disk would do the same).
    fs::write(ob.root().join("queue").join(&blocked), b"").unwrap();
    for _ in 0..2 {
        let done = ob.ingest_incoming();
        assert!(
            done.iter().any(|i| matches!(i, Ingested::Deferred { .. })),
            "{done:?}"
        );
        assert!(spool_len(&ob) > 0);
        assert_eq!(fs::read_dir(ob.root().join("failed")).unwrap().count(), 0);
    }
    fs::remove_file(ob.root().join("queue").join(&blocked)).unwrap();
    let done = ob.ingest_incoming();
    assert!(
        !done.iter().any(|i| matches!(i, Ingested::Deferred { .. })),
        "{done:?}"
    );
    assert_eq!(spool_len(&ob), 0);
    assert_eq!(queued(&ob), [good, blocked]);
    // The junk, once.
    assert_eq!(fs::read_dir(ob.root().join("failed")).unwrap().count(), 1);
}

#[test]
fn a_batch_is_one_append_and_a_bad_envelope_fails_only_its_own_message() {
    let (_d, ob, _j) = held();
    let dsn = crate::dsn::Dsn {
        ret: Some(crate::dsn::Ret::Hdrs),
        envid: Some("env-1".into()),
        recipients: Vec::new(),
    };
    let with_dsn = Envelope {
        dsn: Some(dsn.clone()),
        ..env("carol@example.org")
    };
    let bad = env("not an address");
    let results = ob.submit_batch(&[
        (&env("bob@example.org"), MSG),
        (&bad, MSG),
        (&with_dsn, MSG),
    ]);
    assert_eq!(results.len(), 3);
    assert!(matches!(
        results[1],
        Err(crate::OutboxError::BadEnvelope(_))
    ));
    let (first, third) = (results[0].as_ref().unwrap(), results[2].as_ref().unwrap());
    assert!(first < third, "ids keep the order of the batch");
    let spool = fs::read(ob.root().join("incoming/.spool")).unwrap();
    assert_eq!(
        items(&spool).len(),
        2,
        "two records, nothing for the bad one"
    );
    ob.ingest_incoming();
    assert_eq!(queued(&ob), [first.clone(), third.clone()]);
    let state = ob.state(Folder::Queue, third).unwrap();
    assert_eq!(
        state.dsn,
        Some(dsn),
        "the DSN request is stored with the message"
    );
}

#[test]
fn a_drain_in_progress_holds_up_no_submitter_and_loses_nothing() {
    let (_d, ob, _j) = held();
    let first = ob.submit(&env("bob@example.org"), MSG).unwrap();
    let drain = ob.drain_spool().unwrap().unwrap();
    assert_eq!(drain.items().count(), 1);
    // While the drain holds what it took (its syncfs can take long), a submitter appends to
    // the new spool at once.
    let (tx, rx) = std::sync::mpsc::channel();
    let ob2 = ob.clone();
    std::thread::spawn(move || tx.send(ob2.submit(&env("carol@example.org"), MSG).unwrap()));
    let second = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the submitter was not held up by the drain");
    // Both are listed meanwhile.
    let listed: Vec<String> = ob
        .list(Folder::Queue)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, [first.clone(), second.clone()]);
    // A round that does not finish (a crash, a full disk) leaves what it took for the next.
    drop(drain);
    ob.ingest_incoming();
    assert_eq!(
        ob.message_ids(Folder::Queue).unwrap(),
        std::slice::from_ref(&first)
    );
    ob.ingest_incoming();
    assert_eq!(ob.message_ids(Folder::Queue).unwrap(), [first, second]);
    assert_eq!(spool_len(&ob), 0);
    assert!(!ob.root().join("incoming/.spool.taken").exists());
}
