//! The kinds of section of hast.conf. Its own module because both the
//! parser (which section a statement is in) and the errors ("not allowed in
//! the resource section") name them, and neither should import the other.

use std::fmt;

/// The kind of section a statement is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Global,
    /// `on NODE { }` at the top level.
    Node,
    Resource,
    /// `on NODE { }` inside a resource.
    ResourceNode,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Global => "global section",
            Level::Node => "node section",
            Level::Resource => "resource section",
            Level::ResourceNode => "resource-node section",
        })
    }
}
