//! Lays out the release `linkrelayd`'s code in the order of `linkrelayd.order`: the functions
//! the agent runs from start-up to idle come first, together, instead of scattered over 6 MB.
//!
//! Why: the kernel maps a binary's code into a process 64 KiB around each page it touches
//! (fault-around), so an idle agent that had touched a few hundred scattered functions kept
//! most of its code resident. Packed together, they take a fraction of it (bench/RESULTS.md,
//! "idle RSS"). The order changes nothing else: the same code, only placed differently.
//!
//! The file lists symbol names, which change with the toolchain and the dependencies' versions;
//! names that match nothing are skipped (`--no-warn-symbol-ordering`), so a stale file costs
//! only memory. `scripts/agent-orderfile` writes it again. Used only for release builds on
//! x86_64 Linux with glibc, where rustc links with LLD (which knows `--symbol-ordering-file`);
//! `LINKRELAY_ORDERFILE=0` builds without it.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=linkrelayd.order");
    println!("cargo:rerun-if-env-changed=LINKRELAY_ORDERFILE");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let wanted = var("LINKRELAY_ORDERFILE") != "0"
        && var("PROFILE") == "release"
        && var("TARGET") == "x86_64-unknown-linux-gnu";
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("linkrelayd.order");
    if wanted && order.exists() {
        println!(
            "cargo:rustc-link-arg-bin=linkrelayd=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=linkrelayd=-Wl,--no-warn-symbol-ordering");
    }
}
