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
    /// Texts that depend on one number at one call site (see [`numbered`]).
    numbered: HashMap<(usize, u64), Arc<str>, foldhash::fast::RandomState>,
}

thread_local! {
    static TEXTS: RefCell<Texts> = RefCell::new(Texts::default());
}

/// The text `args` formats to, shared with every earlier use of the same words. (A text
/// without arguments is [`fixed_text!`]: no formatting, no lookup.)
pub fn shared(args: fmt::Arguments) -> Arc<str> {
    TEXTS.with_borrow_mut(|texts| {
        let Texts { buffer, shared, .. } = texts;
        buffer.clear();
        fmt::write(buffer, args).expect("formatting into a String cannot fail");
        if let Some(text) = shared.get(buffer.as_str()) {
            return Arc::clone(text);
        }
        let text: Arc<str> = buffer.as_str().into();
        keep(shared, &text);
        text
    })
}

/// `text` shared with every earlier use of the same words: the one kept, or `text` itself
/// (kept from now on) if its words are new. For words already made, nothing is formatted.
pub fn interned(text: Arc<str>) -> Arc<str> {
    TEXTS.with_borrow_mut(|texts| {
        if let Some(kept) = texts.shared.get(&*text) {
            return Arc::clone(kept);
        }
        keep(&mut texts.shared, &text);
        text
    })
}

fn keep(shared: &mut HashSet<Arc<str>, foldhash::fast::RandomState>, text: &Arc<str>) {
    if shared.len() >= KEPT {
        shared.clear();
    }
    shared.insert(Arc::clone(text));
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

/// A text without arguments, made once per call site and shared from then on:
/// `fixed_text!("SYN sent, waiting for an answer")`.
macro_rules! fixed_text {
    ($words:literal) => {{
        static TEXT: std::sync::LazyLock<std::sync::Arc<str>> =
            std::sync::LazyLock::new(|| std::sync::Arc::from($words));
        std::sync::Arc::clone(&TEXT)
    }};
}
pub(crate) use fixed_text;

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
        let at_one_site = || fixed_text!("fixed here");
        assert_eq!(&*at_one_site(), "fixed here");
        assert!(Arc::ptr_eq(&at_one_site(), &at_one_site()));
    }

    #[test]
    fn an_interned_text_is_the_one_kept_for_its_words() {
        let kept = text!("{} SYNs", 7);
        let again: Arc<str> = Arc::from("7 SYNs");
        assert!(Arc::ptr_eq(&interned(again), &kept));
        let new: Arc<str> = Arc::from("words never formatted before");
        let first = interned(Arc::clone(&new));
        assert!(Arc::ptr_eq(&first, &new));
        assert!(Arc::ptr_eq(
            &interned(Arc::from("words never formatted before")),
            &new
        ));
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
