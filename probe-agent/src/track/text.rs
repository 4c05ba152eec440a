//! Reasons as shared texts: formatted into a reused buffer and interned, so writing a
//! flow's reason for each packet allocates only for words not seen before.

use std::{cell::RefCell, collections::HashSet, fmt, sync::Arc};

/// Distinct texts kept; beyond, the set starts over (flows keep their copies).
const KEPT: usize = 4096;

#[derive(Default)]
struct Texts {
    buffer: String,
    shared: HashSet<Arc<str>, foldhash::fast::RandomState>,
}

thread_local! {
    static TEXTS: RefCell<Texts> = RefCell::new(Texts::default());
}

/// The text `args` formats to, shared with every earlier use of the same words.
pub fn shared(args: fmt::Arguments) -> Arc<str> {
    TEXTS.with_borrow_mut(|texts| {
        let Texts { buffer, shared } = texts;
        buffer.clear();
        match args.as_str() {
            Some(fixed) => buffer.push_str(fixed),
            None => fmt::write(buffer, args).expect("formatting into a String cannot fail"),
        }
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

/// `format!` into a shared text: `text!("SYN answered by RST in {}", millis(took))`.
macro_rules! text {
    ($($words:tt)*) => {
        $crate::track::text::shared(format_args!($($words)*))
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
        write!(f, "{} ms", self.0.as_millis())
    }
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
    }
}
