//! The autoconfig parser (`linkrelay setup` fetches the document from the network) on any
//! text, with any address: it never panics, and every server it gives is one the setup may
//! write into a config: a valid host name, a port, TLS, no empty login.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkrelay_config::autoconfig::{smtp_servers, valid_host};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line is the address whose placeholders are filled in, the rest the document.
    let (address, xml) = text.split_once('\n').unwrap_or(("alice@isp-a.example", text));
    let Ok(servers) = smtp_servers(xml, address) else {
        return;
    };
    assert!(!servers.is_empty(), "Ok with no server");
    for s in &servers {
        assert!(valid_host(&s.host), "{:?}", s.host);
        assert!(!s.host.ends_with('.') && s.host == s.host.to_ascii_lowercase());
        assert!(s.port > 0);
        assert!(s.username.as_ref().is_none_or(|u| !u.is_empty()));
    }
});
