//! Reasons and diagnoses as shared texts: formatted into a reused buffer and interned,
//! so writing a flow's words for each packet allocates only for words not seen before.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    fmt,
    sync::Arc,
};

/// Distinct texts kept; beyond, the set starts over (flows keep their copies).
const KEPT: usize = 4096;

#[derive(Default)]
struct Texts {
    buffer: String,
    shared: HashSet<Arc<str>, foldhash::fast::RandomState>,
    /// Texts without arguments, by where their words are: found without hashing them.
    fixed: HashMap<(usize, usize), Arc<str>, foldhash::fast::RandomState>,
    /// Texts that depend on one number at one call site (see [`numbered`]).
    numbered: HashMap<(usize, u64), Arc<str>, foldhash::fast::RandomState>,
}

thread_local! {
    static TEXTS: RefCell<Texts> = RefCell::new(Texts::default());
}

/// The text `args` formats to, shared with every earlier use of the same words.
pub fn shared(args: fmt::Arguments) -> Arc<str> {
    TEXTS.with_borrow_mut(|texts| {
        let Texts {
            buffer,
            shared,
            fixed,
            ..
        } = texts;
        if let Some(words) = args.as_str() {
            return Arc::clone(
                fixed
                    .entry((words.as_ptr() as usize, words.len()))
                    .or_insert_with(|| words.into()),
            );
        }
        buffer.clear();
        fmt::write(buffer, args).expect("formatting into a String cannot fail");
        if let Some(text) = shared.get(buffer.as_str()) {
            return Arc::clone(text);
        }
        if shared.len() >= KEPT {
            shared.clear();
        }
        let text: Arc<str> = buffer.as_str().into();
        shared.insert(Arc::clone(&text));
        text
    })
}

/// The text of call site `site` for the number `n` (milliseconds, a count): formatted
/// by `render` the first time only, as the same words come back packet after packet.
pub fn numbered(site: &'static str, n: u64, render: impl FnOnce(u64) -> Arc<str>) -> Arc<str> {
    let key = (site.as_ptr() as usize, n);
    let known = TEXTS.with_borrow(|texts| texts.numbered.get(&key).cloned());
    if let Some(text) = known {
        return text;
    }
    let text = render(n);
    TEXTS.with_borrow_mut(|texts| {
        if texts.numbered.len() >= KEPT {
            texts.numbered.clear();
        }
        texts.numbered.insert(key, Arc::clone(&text));
    });
    text
}

/// `format!` into a shared text: `text!("SYN answered by RST in {}", millis(took))`.
macro_rules! text {
    ($($words:tt)*) => {
        $crate::text::shared(format_args!($($words)*))
    };
}
pub(crate) use text;

/// A duration in seconds with one decimal ("3.0s").
pub struct Secs(pub std::time::Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1}s", self.0.as_secs_f64())
    }
}

/// A duration in whole milliseconds ("12 ms").
pub struct Millis(pub std::time::Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms", whole_millis(self.0))
    }
}

/// Whole milliseconds, saturating (a u64 holds 584 million years of them).
pub fn whole_millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_words_are_one_text() {
        let a = text!(
            "SYN answered by RST in {}",
            Millis(std::time::Duration::from_millis(3))
        );
        let b = text!(
            "SYN answered by RST in {}",
            Millis(std::time::Duration::from_millis(3))
        );
        assert_eq!(&*a, "SYN answered by RST in 3 ms");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*text!("fixed"), "fixed");
        assert!(Arc::ptr_eq(&text!("fixed"), &text!("fixed")));
    }

    #[test]
    fn a_numbered_text_is_rendered_once_per_number() {
        let mut rendered = 0;
        let mut of = |n| {
            numbered("site", n, |n| {
                rendered += 1;
                text!("{n} SYNs")
            })
        };
        let (a, b, c) = (of(3), of(3), of(4));
        assert_eq!((&*a, &*c), ("3 SYNs", "4 SYNs"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(rendered, 2);
    }
}
