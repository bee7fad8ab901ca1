//! Tests of `incoming/`: submit, then what the agent's ingestion makes of it, crashes included.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::{Envelope, Folder, Ingested, Outbox, OutboxError, RecipientStatus};

fn outbox() -> (tempfile::TempDir, Outbox) {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(&dir.path().join("alice")).unwrap();
    (dir, ob)
}

fn env(rcpts: &[&str]) -> Envelope {
    Envelope {
        from: "alice@example.net".into(),
        recipients: rcpts.iter().map(|s| s.to_string()).collect(),
        dsn: None,
    }
}

fn names(ob: &Outbox, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(ob.root().join(sub))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

const MSG: &[u8] = b"From: alice@example.net\r\nSubject: hi\r\n\r\nbody\r\n";

#[test]
fn a_submitted_message_is_one_private_file_until_ingested_under_its_id() {
    let (_d, ob) = outbox();
    let id = ob
        .submit(&env(&["bob@example.org", "carol@example.org"]), MSG)
        .unwrap();
    assert_eq!(names(&ob, "incoming"), std::slice::from_ref(&id));
    assert!(names(&ob, "queue").is_empty());
    // Queued for the user already: listed and counted, as a fresh message.
    let listed = ob.list(Folder::Queue).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].recipients.len(), 2);
    assert_eq!(listed[0].size, MSG.len() as u64);
    assert_eq!(ob.counts().unwrap().queued, 1);
    assert!(names(&ob, "tmp").is_empty());
    let mode = fs::metadata(ob.root().join("incoming").join(&id))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let done = ob.ingest_incoming();
    assert!(
        matches!(&done[..], [Ingested::Queued { id: got, .. }] if *got == id),
        "{done:?}"
    );
    assert!(names(&ob, "incoming").is_empty());
    assert!(names(&ob, "tmp").is_empty());
    let st = ob.state(Folder::Queue, &id).unwrap();
    assert_eq!(st.from, "alice@example.net");
    assert_eq!(
        st.recipients
            .iter()
            .map(|r| (r.addr.as_str(), r.status))
            .collect::<Vec<_>>(),
        [
            ("bob@example.org", RecipientStatus::Pending),
            ("carol@example.org", RecipientStatus::Pending)
        ]
    );
    assert_eq!(st.size, MSG.len() as u64);
    assert_eq!(ob.read_message(Folder::Queue, &id).unwrap(), MSG);
    assert_eq!(ob.list(Folder::Queue).unwrap(), [st]);
    assert_eq!(ob.counts().unwrap().queued, 1);
}

#[test]
fn a_file_left_by_a_crash_after_ingestion_is_not_queued_twice() {
    let (_d, ob) = outbox();
    let id = ob.submit(&env(&["bob@example.org"]), MSG).unwrap();
    let file = ob.root().join("incoming").join(&id);
    let copy = fs::read(&file).unwrap();
    ob.ingest_incoming();
    // The crash came after the message was queued and synced, before the file was removed.
    fs::write(&file, &copy).unwrap();
    assert!(ob.ingest_incoming().is_empty());
    assert!(names(&ob, "incoming").is_empty());
    assert_eq!(names(&ob, "queue"), std::slice::from_ref(&id));

    // Even once the message was sent and moved on.
    let (mut journal, _) = ob.open_journal().unwrap();
    let mut st = ob.state(Folder::Queue, &id).unwrap();
    st.recipients[0].status = RecipientStatus::Sent;
    journal.record(&mut st, Folder::Sent).unwrap();
    fs::write(&file, &copy).unwrap();
    assert!(ob.ingest_incoming().is_empty());
    assert!(names(&ob, "queue").is_empty());
    assert_eq!(names(&ob, "sent"), [id]);
}

#[test]
fn an_unusable_file_goes_to_failed_with_the_reason_and_blocks_nothing() {
    let (_d, ob) = outbox();
    fs::write(
        ob.root().join("incoming").join("1700000000.000001.1.abcd"),
        b"garbage\n",
    )
    .unwrap();
    let good = ob.submit(&env(&["bob@example.org"]), MSG).unwrap();
    let done = ob.ingest_incoming();
    assert_eq!(done.len(), 2, "{done:?}");
    let Ingested::Failed { id, reason, .. } = &done[0] else {
        panic!("{done:?}");
    };
    assert!(reason.contains("envelope line"), "{reason}");
    assert_eq!(
        ob.state(Folder::Failed, id).unwrap().failure.as_deref(),
        Some(reason.as_str())
    );
    assert_eq!(names(&ob, "queue"), [good]);
    assert!(names(&ob, "incoming").is_empty());
}

#[test]
fn a_bad_envelope_is_refused_and_leaves_nothing() {
    let (_d, ob) = outbox();
    let err = ob.submit(&env(&[]), MSG).unwrap_err();
    assert!(matches!(err, OutboxError::BadEnvelope(_)), "{err}");
    let err = ob
        .submit(&env(&["bob@example.org\r\nRCPT TO:<x@y>"]), MSG)
        .unwrap_err();
    assert!(matches!(err, OutboxError::BadEnvelope(_)), "{err}");
    assert!(names(&ob, "incoming").is_empty());
    assert!(names(&ob, "tmp").is_empty());
}

#[test]
fn ingestion_keeps_the_order_of_submission() {
    let (_d, ob) = outbox();
    let ids: Vec<String> = (0..5)
        .map(|_| ob.submit(&env(&["bob@example.org"]), MSG).unwrap())
        .collect();
    ob.ingest_incoming();
    let queued: Vec<String> = ob
        .list(Folder::Queue)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(queued, ids);
}

#[test]
fn a_sparse_64_gib_file_in_incoming_goes_to_failed_unread_and_the_others_are_queued() {
    let (_d, ob) = outbox();
    let fine = ob.submit(&env(&["bob@example.org"]), MSG).unwrap();
    let huge = "1700000000.000001.1.abcd";
    let f = fs::File::create(ob.root().join("incoming").join(huge)).unwrap();
    f.set_len(64 << 30).unwrap();
    // Listings skip it unread.
    let listed: Vec<String> = ob.incoming_states().into_iter().map(|s| s.id).collect();
    assert_eq!(listed, std::slice::from_ref(&fine));
    let done = ob.ingest_incoming();
    assert!(
        done.iter()
            .any(|i| matches!(i, Ingested::Failed { file, reason, .. }
            if file == huge && reason.contains("max_message_size"))),
        "{done:?}"
    );
    assert_eq!(names(&ob, "queue"), [fine]);
    assert_eq!(names(&ob, "failed").len(), 1);
    assert!(names(&ob, "incoming").is_empty());
}
