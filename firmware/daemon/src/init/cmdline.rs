//! The kernel command line (`palisade.slot=a palisade.root=palisade-a ...`).

/// Parsed /proc/cmdline.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline {
    args: Vec<(String, Option<String>)>,
}

impl Cmdline {
    pub fn parse(text: &str) -> Cmdline {
        Cmdline {
            args: text
                .split_whitespace()
                .map(|a| match a.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (a.to_string(), None),
                })
                .collect(),
        }
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Every value given for `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.args.iter().filter(|(k, _)| k == key).filter_map(|(_, v)| v.as_deref()).collect()
    }

    /// The booted slot, `a` or `b`.
    pub fn slot(&self) -> Option<&str> {
        self.get("palisade.slot").filter(|s| *s == "a" || *s == "b")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_slot() {
        let c =
            Cmdline::parse("console=ttyS0,115200 palisade.root=palisade-b palisade.slot=b quiet\n");
        assert_eq!(c.slot(), Some("b"));
        assert_eq!(c.get("console"), Some("ttyS0,115200"));
        assert_eq!(c.get("quiet"), None);
        assert_eq!(Cmdline::parse("palisade.slot=c").slot(), None);
        assert_eq!(Cmdline::parse("").slot(), None);
    }
}
