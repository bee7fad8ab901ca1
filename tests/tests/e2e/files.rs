//! The outbox on disk, as another local user or a hostile file would meet it: directories
//! 0700 and files 0600 whatever the umask of sendmail or the agent, and symbolic links inside
//! the outbox never followed out of it.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::world::bin;

use crate::util::{eventually, seed, subjects};

const WAIT: Duration = Duration::from_secs(10);

/// Every path under `root` (not following links) with its mode bits.
fn modes(root: &Path) -> BTreeMap<PathBuf, (bool, u32)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        out.insert(p.clone(), (meta.is_dir(), meta.mode() & 0o7777));
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
    }
    out
}

fn assert_private(root: &Path) {
    let all = modes(root);
    assert!(all.len() > 5, "{all:#?}");
    for (path, (dir, mode)) in &all {
        let want = if *dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:04o}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_and_the_agent_under_umask_000_leave_only_private_files() {
    let mut s = seed().await;
    let nm = FakeNm::start(&s.world.system.address, vec![], 1)
        .await
        .unwrap();
    // The agent, too, runs with a umask that would make everything world-writable.
    s.world.set_agent_prefix(
        ["sh", "-c", "umask 000; exec \"$0\" \"$@\""]
            .map(String::from)
            .to_vec(),
    );
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    for (from, subject) in [
        ("bob@bob.example", "umask-bob"),
        ("alice@isp-a.example", "umask-alice"),
    ] {
        use std::io::Write;
        let mut child = std::process::Command::new("sh");
        child
            .arg("-c")
            .arg("umask 000; exec \"$0\" sendmail -t -i")
            .arg(bin("linkrelay"));
        w.env(&mut child);
        let mut child = child
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(
                format!("From: {from}\nTo: x@dest.example\nSubject: {subject}\n\nhi\n").as_bytes(),
            )
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // sendmail made the data directory and its missing parents: private too.
    let local = w.data_dir.parent().unwrap().parent().unwrap();
    for dir in [local.to_path_buf(), local.join("share"), w.data_dir.clone()] {
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{} is {mode:04o}", dir.display());
    }
    assert_private(&w.data_dir);

    // The agent sends, rewrites state.json and moves to sent/: still private.
    s.network.set("ISP-A");
    nm.activate(ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1"))
        .await
        .unwrap();
    s.relay_a.wait_for(2, WAIT).await.unwrap();
    eventually("both messages are in sent/", w, || {
        w.outbox_entries("bob", "sent").len() == 1 && w.outbox_entries("alice", "sent").len() == 1
    })
    .await;
    assert_private(&w.data_dir);
}

/// Contents and modification times of every file under `root`.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, i64, i64)> {
    modes(root)
        .into_keys()
        .filter(|p| p.is_file())
        .map(|p| {
            let meta = std::fs::metadata(&p).unwrap();
            let data = std::fs::read(&p).unwrap();
            (p, (data, meta.mtime(), meta.mtime_nsec()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbolic_links_in_the_outbox_are_never_followed_out_of_it() {
    let mut s = seed().await;
    let nm = FakeNm::start(&s.world.system.address, vec![], 1)
        .await
        .unwrap();
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    let outside = w.dir().join("outside");
    std::fs::create_dir(&outside).unwrap();

    // A message directory swapped for a link to a directory outside the outbox (here: a real
    // queued message moved out, so that following the link would send it).
    w.send("bob@bob.example", "x@dest.example", "behind-a-link")
        .unwrap();
    let queue = w.data_dir.join("bob/queue");
    let id = w.wait_entries("bob", "queue", 1).await.remove(0);
    std::fs::rename(queue.join(&id), outside.join(&id)).unwrap();
    symlink(outside.join(&id), queue.join(&id)).unwrap();
    // In new/ (where mail clients drop files): links to /etc/passwd and to a good message.
    let new = w.data_dir.join("bob/new");
    std::fs::write(
        outside.join("mail.eml"),
        "From: bob@bob.example\nTo: y@dest.example\nSubject: linked-into-new\n\nx\n",
    )
    .unwrap();
    symlink("/etc/passwd", new.join("passwd")).unwrap();
    symlink(outside.join("mail.eml"), new.join("mail")).unwrap();
    // A failed/ entry that is a link too.
    let failed_link = w.data_dir.join("bob/failed/1700000000.000001.1.beef");
    symlink(outside.join(&id), &failed_link).unwrap();
    let before = snapshot(&outside);
    let passwd_before = std::fs::read("/etc/passwd").unwrap();

    w.send("bob@bob.example", "z@dest.example", "inside")
        .unwrap();
    s.network.set("ISP-A");
    nm.activate(ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1"))
        .await
        .unwrap();
    s.relay_a.wait_for(1, WAIT).await.unwrap();
    let out = w.run_cli(&["flush", "--wait"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        subjects(&s.relay_a),
        ["inside"],
        "only the real message went out"
    );
    assert!(
        s.relay_a
            .received()
            .iter()
            .all(|r| !r.data_text().contains("root:")),
        "/etc/passwd was never read into a message"
    );
    // Nothing outside was read into the queue, changed or moved; the links are still there.
    assert_eq!(snapshot(&outside), before);
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd_before);
    for link in [
        queue.join(&id),
        new.join("passwd"),
        new.join("mail"),
        failed_link,
    ] {
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert!(
            meta.file_type().is_symlink(),
            "{} was replaced",
            link.display()
        );
    }
    // Retry and drop refuse the link; `queue` does not show it.
    for verb in ["retry", "drop"] {
        let out = w.run_cli(&[verb, &id]).unwrap();
        assert!(!out.status.success(), "{verb} {id} followed the link");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("symbolic link"), "{verb}: {err}");
    }
    let q = linkrelay_tests::world::cli_json(w, &["queue"]);
    assert!(!q.to_string().contains(&id), "{q}");
    assert_eq!(snapshot(&outside), before);
}
