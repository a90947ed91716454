//! A moderator: looks for listed words in every message before it is stored.
//!
//! Config keys: `words` (comma-separated, case-insensitive) and `mode`: `reject` (refuse the
//! message; the reason names the word found) or `mask` (each letter of every occurrence becomes
//! `*`, and the message goes out masked).

wit_bindgen::generate!({ path: "../../wit", world: "moderator" });


struct WordFilter;

fn config<'a>(request: &'a ModerateRequest, key: &str) -> Option<&'a str> {
    request
        .config
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Where `word` occurs in `text`, ignoring case, as char ranges.
fn occurrences(text: &[char], word: &[char]) -> Vec<usize> {
    let same = |a: char, b: char| a.to_lowercase().eq(b.to_lowercase());
    (0..=text.len().saturating_sub(word.len()))
        .filter(|&start| {
            text.len() >= word.len()
                && text[start..start + word.len()]
                    .iter()
                    .zip(word)
                    .all(|(&a, &b)| same(a, b))
        })
        .collect()
}

impl Guest for WordFilter {
    fn moderate(request: ModerateRequest) -> Result<Verdict, String> {
        let words: Vec<Vec<char>> = config(&request, "words")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(|w| w.chars().collect())
            .collect();
        let mask = match config(&request, "mode").unwrap_or("reject") {
            "reject" => false,
            "mask" => true,
            other => return Err(format!("unknown mode {other:?} (reject or mask)")),
        };
        let mut text: Vec<char> = request.content.chars().collect();
        let mut changed = false;
        for word in &words {
            let found = occurrences(&text, word);
            if found.is_empty() {
                continue;
            }
            if !mask {
                let word: String = word.iter().collect();
                return Ok(Verdict::Reject(format!("Your message contains the word \"{word}\"")));
            }
            for start in found {
                for c in &mut text[start..start + word.len()] {
                    if c.is_alphabetic() {
                        *c = '*';
                    }
                }
            }
            changed = true;
        }
        Ok(if changed {
            Verdict::Replace(text.into_iter().collect())
        } else {
            Verdict::Allow
        })
    }
}

export!(WordFilter);
