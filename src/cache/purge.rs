//! What a purge removes (a key, a key prefix or a tag), shared by the memory tier and the
//! Redis tier without either importing the other for it.

/// A purge that a fill started before it must respect.
#[derive(Debug, Clone)]
pub enum PurgeMatch {
    Key(String),
    Prefix(String),
    Tag(String),
}

impl PurgeMatch {
    pub(super) fn matches(&self, primary: &str, tags: &[String]) -> bool {
        match self {
            PurgeMatch::Key(k) => primary == k,
            PurgeMatch::Prefix(p) => primary.starts_with(p.as_str()),
            PurgeMatch::Tag(t) => tags.iter().any(|tag| tag == t),
        }
    }
}
