//! Characters that show nothing: format characters (zero-width spaces and joiners, direction
//! marks and overrides, the BOM, soft hyphens, ...) and the other default-ignorable or blank
//! code points people use to make text look empty or to forge look-alike names.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// True for characters that render as nothing (or as blank space) in a chat client.
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || c.general_category() == GeneralCategory::Format
        || matches!(c,
            '\u{034F}'                  // combining grapheme joiner
            | '\u{115F}' | '\u{1160}'   // Hangul choseong/jungseong fillers
            | '\u{17B4}' | '\u{17B5}'   // Khmer inherent vowels
            | '\u{180B}'..='\u{180F}'   // Mongolian variation selectors and vowel separator
            | '\u{2800}'                // braille pattern blank
            | '\u{3164}' | '\u{FFA0}'   // Hangul fillers
            | '\u{FE00}'..='\u{FE0F}'   // variation selectors
            | '\u{E0100}'..='\u{E01EF}' // variation selectors supplement
        )
}

/// Characters that make text look other than it is, or that no person types: control
/// characters other than newline and tab, and the bidirectional embeddings, overrides and
/// isolates (U+202A-U+202E, U+2066-U+2069) that reorder what follows them on screen.
pub fn is_deceptive(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deceptive_characters() {
        for c in ['\u{7}', '\r', '\u{1b}', '\u{202E}', '\u{2067}', '\u{85}'] {
            assert!(is_deceptive(c), "{:04X}", c as u32);
        }
        for c in ['\n', '\t', ' ', 'a', '\u{200D}', '😀'] {
            assert!(!is_deceptive(c), "{:04X}", c as u32);
        }
    }

    #[test]
    fn invisible_and_visible() {
        for c in [
            '\u{200B}', '\u{200D}', '\u{200E}', '\u{202E}', '\u{FEFF}', '\u{00AD}', '\u{2060}',
            '\u{3164}', '\u{2800}', '\u{FE0F}', ' ', '\t', '\u{3000}',
        ] {
            assert!(is_invisible(c), "{:04X}", c as u32);
        }
        for c in ['a', 'é', '字', '😀', '-', '.'] {
            assert!(!is_invisible(c), "{c}");
        }
    }
}
