//! Text helpers of the commands' tables.

/// `s` cut to `n` characters, the last one `~` when cut.
pub fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n.saturating_sub(1)).chain(['~']).collect()
    }
}
