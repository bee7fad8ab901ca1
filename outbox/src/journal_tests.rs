//! Tests of the outcome journal: what a crash at each point leaves, and what a replay makes
//! of it. A crash is played by writing the journal file the way a killed agent leaves it.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use crate::{Envelope, Folder, MessageState, Outbox, RecipientStatus};

fn outbox() -> (tempfile::TempDir, Outbox) {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(&dir.path().join("alice")).unwrap();
    (dir, ob)
}

fn queue_one(ob: &Outbox) -> MessageState {
    let env = Envelope {
        from: "alice@example.net".into(),
        recipients: vec!["bob@example.org".into()],
        dsn: None,
    };
    let id = ob.enqueue(&env, b"Subject: hi\r\n\r\nbody\r\n").unwrap();
    ob.state(Folder::Queue, &id).unwrap()
}

fn delivered(mut st: MessageState) -> MessageState {
    st.recipients[0].status = RecipientStatus::Sent;
    st.recipients[0].reply = Some("250 2.0.0 Ok: queued as ABC".into());
    st.sent_via = Some("isp-a".into());
    st.attempts += 1;
    st
}

/// Appends a record the way `Journal::record` writes it, without applying it: what a crash
/// between the journal's fdatasync and the folder changes leaves behind.
fn append_record(ob: &Outbox, to: Folder, st: &MessageState) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(ob.root().join("journal"))
        .unwrap();
    let line = serde_json::json!({ "to": to, "state": st });
    write!(f, "\n{line}").unwrap();
}

fn journal_len(ob: &Outbox) -> u64 {
    fs::metadata(ob.root().join("journal")).unwrap().len()
}

#[test]
fn a_record_moves_the_message_at_once_and_stays_in_the_journal_until_a_checkpoint() {
    let (_d, ob) = outbox();
    let st = queue_one(&ob);
    let (mut journal, replayed) = ob.open_journal().unwrap();
    assert_eq!(replayed, crate::Replayed::default());
    let mut sent = delivered(st.clone());
    journal.record(&mut sent, Folder::Sent).unwrap();

    assert_eq!(ob.locate(&st.id).unwrap(), Some(Folder::Sent));
    let on_disk = ob.state(Folder::Sent, &st.id).unwrap();
    assert_eq!(on_disk.recipients[0].status, RecipientStatus::Sent);
    assert_eq!(on_disk.revision, st.revision + 1);
    assert_eq!(on_disk, sent);
    assert!(journal_len(&ob) > 0);
    let mode = fs::metadata(ob.root().join("journal"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    journal.checkpoint().unwrap();
    assert_eq!(journal_len(&ob), 0);
    assert_eq!(journal.pending(), 0);
}

#[test]
fn a_deferral_updates_the_state_in_the_queue() {
    let (_d, ob) = outbox();
    let mut st = queue_one(&ob);
    let (mut journal, _) = ob.open_journal().unwrap();
    st.attempts = 1;
    st.next_attempt = 12345;
    st.last_error = Some("451 4.3.0 try later".into());
    journal.record(&mut st, Folder::Queue).unwrap();
    assert_eq!(ob.state(Folder::Queue, &st.id).unwrap(), st);
}

#[test]
fn replay_finishes_a_move_the_crash_cut_short() {
    let (_d, ob) = outbox();
    let st = queue_one(&ob);
    let mut sent = delivered(st.clone());
    sent.revision += 1;
    append_record(&ob, Folder::Sent, &sent);

    let (_journal, replayed) = ob.open_journal().unwrap();
    assert_eq!(replayed.records, 1);
    assert_eq!(replayed.applied, 1);
    assert_eq!(ob.locate(&st.id).unwrap(), Some(Folder::Sent));
    assert_eq!(ob.state(Folder::Sent, &st.id).unwrap(), sent);
    // Replayed, synced, emptied.
    assert_eq!(journal_len(&ob), 0);
}

#[test]
fn replay_moves_a_message_whose_state_was_written_but_not_moved() {
    let (_d, ob) = outbox();
    let st = queue_one(&ob);
    let (mut journal, _) = ob.open_journal().unwrap();
    let mut sent = delivered(st.clone());
    journal.record(&mut sent, Folder::Sent).unwrap();
    drop(journal);
    // Undo the rename only, as if it had not reached the disk.
    fs::rename(
        ob.root().join("sent").join(&st.id),
        ob.root().join("queue").join(&st.id),
    )
    .unwrap();

    let (_journal, replayed) = ob.open_journal().unwrap();
    assert_eq!(replayed.applied, 1);
    assert_eq!(ob.locate(&st.id).unwrap(), Some(Folder::Sent));
}

#[test]
fn replay_rewrites_a_state_file_the_crash_left_empty() {
    let (_d, ob) = outbox();
    let st = queue_one(&ob);
    let mut deferred = st.clone();
    deferred.attempts = 3;
    deferred.revision += 1;
    append_record(&ob, Folder::Queue, &deferred);
    fs::write(ob.root().join("queue").join(&st.id).join("state.json"), b"").unwrap();

    let (_journal, replayed) = ob.open_journal().unwrap();
    assert_eq!(replayed.applied, 1);
    assert_eq!(ob.state(Folder::Queue, &st.id).unwrap(), deferred);
    // Nothing was quarantined: the message is still queued, with its envelope.
    assert_eq!(ob.list(Folder::Queue).unwrap(), vec![deferred]);
}

#[test]
fn replay_never_undoes_a_retry_made_after_the_record() {
    let (_d, ob) = outbox();
    let st = queue_one(&ob);
    let (mut journal, _) = ob.open_journal().unwrap();
    let mut failed = st.clone();
    failed.recipients[0].status = RecipientStatus::Failed;
    failed.failure = Some("550 5.1.1 no such user".into());
    journal.record(&mut failed, Folder::Failed).unwrap();
    // The user retries it (durable, outside the journal), then the agent is killed before
    // any checkpoint: the journal still says "failed".
    ob.retry(&st.id).unwrap();
    drop(journal);
    assert!(journal_len(&ob) > 0);

    let (_journal, replayed) = ob.open_journal().unwrap();
    assert_eq!(replayed.applied, 0);
    assert_eq!(ob.locate(&st.id).unwrap(), Some(Folder::Queue));
    let now = ob.state(Folder::Queue, &st.id).unwrap();
    assert_eq!(now.recipients[0].status, RecipientStatus::Pending);
    assert_eq!(now.failure, None);
}

#[test]
fn replay_skips_removed_messages_and_torn_records() {
    let (_d, ob) = outbox();
    let kept = queue_one(&ob);
    let dropped = queue_one(&ob);
    let mut a = delivered(kept.clone());
    a.revision += 1;
    let mut b = delivered(dropped.clone());
    b.revision += 1;
    append_record(&ob, Folder::Sent, &a);
    append_record(&ob, Folder::Sent, &b);
    ob.remove(&dropped.id).unwrap();
    // A record cut off by the crash, followed by nothing.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(ob.root().join("journal"))
        .unwrap();
    f.write_all(b"\n{\"to\":\"sent\",\"state\":{\"version\":1,\"id\":\"")
        .unwrap();

    let (_journal, replayed) = ob.open_journal().unwrap();
    assert_eq!(replayed.records, 2);
    assert_eq!(replayed.torn, 1);
    assert_eq!(replayed.applied, 1);
    assert_eq!(ob.locate(&kept.id).unwrap(), Some(Folder::Sent));
    assert_eq!(ob.locate(&dropped.id).unwrap(), None);
}

#[test]
fn the_last_record_of_a_message_wins() {
    let (_d, ob) = outbox();
    let st = queue_one(&ob);
    let mut deferred = st.clone();
    deferred.attempts = 1;
    deferred.revision = 1;
    let mut sent = delivered(deferred.clone());
    sent.revision = 2;
    append_record(&ob, Folder::Queue, &deferred);
    append_record(&ob, Folder::Sent, &sent);

    ob.open_journal().unwrap();
    assert_eq!(ob.state(Folder::Sent, &st.id).unwrap(), sent);
}

#[test]
fn only_one_writer_holds_the_journal_while_it_records_and_none_between() {
    let (_d, ob) = outbox();
    let mut st = queue_one(&ob);
    assert!(!ob.agent_holds_it());
    let (mut journal, _) = ob.open_journal().unwrap();
    // Opened, replayed, let go: an idle user holds no descriptor.
    assert!(!ob.agent_holds_it());
    journal.record(&mut st, Folder::Queue).unwrap();
    // Recording, it holds the journal's lock until it lets go.
    assert!(ob.agent_holds_it());
    let err = ob.open_journal().unwrap_err();
    assert!(err.to_string().contains("another linkrelayd"), "{err}");
    journal.release();
    assert!(!ob.agent_holds_it());
    ob.open_journal().unwrap();
    // The next record opens it again.
    journal.record(&mut st, Folder::Queue).unwrap();
    assert_eq!(
        ob.state(Folder::Queue, &st.id).unwrap().revision,
        st.revision
    );
}

#[test]
fn a_record_for_a_message_that_is_gone_is_an_error_that_loses_nothing() {
    let (_d, ob) = outbox();
    let st = queue_one(&ob);
    let (mut journal, _) = ob.open_journal().unwrap();
    ob.remove(&st.id).unwrap();
    let mut sent = delivered(st);
    let err = journal.record(&mut sent, Folder::Sent).unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn a_shorter_state_written_in_place_leaves_nothing_of_the_longer_one() {
    let (_d, ob) = outbox();
    let st = queue_one(&ob);
    let (mut journal, _) = ob.open_journal().unwrap();
    let mut long = st.clone();
    long.last_error = Some("x".repeat(2000));
    journal.record(&mut long, Folder::Queue).unwrap();
    assert_eq!(ob.state(Folder::Queue, &st.id).unwrap(), long);
    let mut short = long.clone();
    short.last_error = None;
    let mut durable_first = false;
    journal
        .record_then(&mut short, Folder::Queue, || {
            // Durable before the folders change: the state file still holds the long one.
            durable_first = ob
                .state(Folder::Queue, &st.id)
                .unwrap()
                .last_error
                .is_some();
        })
        .unwrap();
    assert!(durable_first);
    assert_eq!(ob.state(Folder::Queue, &st.id).unwrap(), short);
    let len = fs::metadata(ob.msg_path(Folder::Queue, &st.id).join("state.json"))
        .unwrap()
        .len();
    assert_eq!(len, crate::outbox::state_json(&short).unwrap().len() as u64);
}

#[test]
fn a_sparse_64_gib_journal_is_set_aside_unread_and_a_fresh_one_takes_its_place() {
    let (_d, ob) = outbox();
    let st = queue_one(&ob);
    let f = fs::File::create(ob.root().join("journal")).unwrap();
    f.set_len(64 << 30).unwrap();
    drop(f);
    let (mut journal, replayed) = ob.open_journal().unwrap();
    assert_eq!(replayed.set_aside, Some(64 << 30));
    assert_eq!(
        fs::metadata(ob.root().join("journal.oversized"))
            .unwrap()
            .len(),
        64 << 30
    );
    // The fresh journal works.
    let mut st = delivered(st);
    journal.record(&mut st, Folder::Sent).unwrap();
    assert_eq!(ob.locate(&st.id).unwrap(), Some(Folder::Sent));
    let mode = fs::metadata(ob.root().join("journal"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
