//! Secrets kept out of everything shown (logs, `status`, `/status`, `config
//! show`, error messages): a URL's credentials and query string. A
//! webhook's token usually sits in one or the other; the full URL is kept
//! only where it is used (the request, the key of a sink's position).

/// `url` as it may be shown: credentials as `user:***@` (a user alone,
/// which may be a token, as `***@`), a query as `?…`, no fragment. Text
/// without `://` is returned as it is.
pub fn url(url: &str) -> String {
    let Some(at) = url.find("://") else {
        return url.to_owned();
    };
    let (scheme, rest) = (&url[..at + 3], &url[at + 3..]);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(i) => match authority[..i].split_once(':') {
            Some((user, _)) => format!("{user}:***@{}", &authority[i + 1..]),
            None => format!("***@{}", &authority[i + 1..]),
        },
        None => authority.to_owned(),
    };
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    let (path, after) = tail.split_at(path_end);
    let query = if after.starts_with('?') { "?…" } else { "" };
    format!("{scheme}{authority}{path}{query}")
}

/// `text` with every URL in it shown as [`url`] shows it: a sink spec
/// (`webhook:https://...`), a list of endpoints (`ws://..,https://..`: each
/// URL runs to the next one's scheme), a config value.
pub fn text(text: &str) -> String {
    // Where each URL starts: its scheme, before a `://`.
    let mut starts = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("://") {
        let at = from + i;
        let scheme = text[..at]
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |(p, c)| p + c.len_utf8());
        starts.push(scheme);
        from = at + 3;
    }
    if starts.is_empty() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..starts[0]]);
    for (k, &start) in starts.iter().enumerate() {
        let next = starts.get(k + 1).copied().unwrap_or(text.len());
        // A URL ends at white space or a quote, or where the next begins;
        // a separator before the next one (`,`) is kept as it is.
        let slice = &text[start..next];
        let end = slice
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(slice.len());
        let (link, rest) = slice.split_at(end);
        let (link, sep) = match starts.get(k + 1) {
            Some(_) if rest.is_empty() && link.ends_with(',') => (&link[..link.len() - 1], ","),
            _ => (link, ""),
        };
        out.push_str(&url(link));
        out.push_str(sep);
        out.push_str(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_queries_are_hidden_and_the_rest_kept() {
        assert_eq!(
            url("https://user:hunter2@hooks.example.com:8443/in/abc?token=s3cr3t#x"),
            "https://user:***@hooks.example.com:8443/in/abc?…"
        );
        assert_eq!(url("http://tok123@h/p"), "http://***@h/p");
        assert_eq!(url("http://127.0.0.1:9/in"), "http://127.0.0.1:9/in");
        assert_eq!(url("https://h?key=1"), "https://h?…");
        assert_eq!(
            url("nats://u:p@127.0.0.1:4222"),
            "nats://u:***@127.0.0.1:4222"
        );
        assert_eq!(url("/plain/path"), "/plain/path");
        // An `@` in the path is not credentials.
        assert_eq!(url("https://h/a@b"), "https://h/a@b");
    }

    #[test]
    fn every_url_in_a_text_is_hidden_so() {
        assert_eq!(
            text("webhook:https://u:pw@h/x?t=1"),
            "webhook:https://u:***@h/x?…"
        );
        assert_eq!(
            text("ws://a:b@h1/ws,https://c:d@h2/api?k=v"),
            "ws://a:***@h1/ws,https://c:***@h2/api?…"
        );
        assert_eq!(
            text("webhook:https://h/x?t=a,b"),
            "webhook:https://h/x?…",
            "a comma inside a query is part of it"
        );
        assert_eq!(text("file:/tmp/signals.jsonl"), "file:/tmp/signals.jsonl");
        assert_eq!(
            text(r#"sink = ["webhook:https://u:pw@h/x", "stdout"]"#),
            r#"sink = ["webhook:https://u:***@h/x", "stdout"]"#
        );
        // Found by the fuzzer: a character of several bytes before a scheme.
        assert_eq!(text("é:http://u:p@h"), "é:http://u:***@h");
        assert_eq!(text("s\u{2026}https://h?x"), "s\u{2026}https://h?…");
        for secret in ["pw", "t=a", "hunter2"] {
            assert!(!text("webhook-batch:http://x:hunter2@h/p?t=a,pw").contains(secret));
        }
    }
}
