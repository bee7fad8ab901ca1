//! The names a config gives its links, relays and users, each its own type so that one cannot
//! stand where another is meant (a relay name where a link name belongs, say).
//!
//! They are plain strings inside. Their syntax (`[a-z0-9][a-z0-9._-]*`) is checked where the
//! file is parsed; these types only carry the result. They borrow as `str`, so a map keyed by
//! one can be looked up with a `&str`, and they dereference to `str` for reading.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Defines one name type: a transparent `String` wrapper.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The name as written in the config file.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        /// Debug-formats as the quoted string, as a plain `String` name would.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(name: String) -> Self {
                $name(name)
            }
        }

        impl From<&str> for $name {
            fn from(name: &str) -> Self {
                $name(name.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

name_type!(
    /// A `[[link]]` rule's `name`: what users' `routes` refer to.
    LinkName
);
name_type!(
    /// A `[[relay]]`'s `name`: what users' `routes` list.
    RelayName
);
name_type!(
    /// A `[[user]]`'s `name`: also the user's outbox directory name.
    UserName
);

/// A user's outbox is a directory named after the user.
impl AsRef<Path> for UserName {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}
