use std::fmt;
use std::str::FromStr;

use crate::SourceError;

/// The shard (0-based) that owns a document among `count` shards.
///
/// The hash is FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3) over the UTF-8
/// bytes of the URI, reduced modulo `count`. It is fixed here, never std's randomised hasher,
/// because shards run as separate processes, possibly on separate machines and releases, and
/// must agree on who owns what. `count` 0 is treated as 1.
pub fn shard_of(doc_uri: &str, count: u32) -> u32 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = doc_uri.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    // The remainder is below `count`, so it fits in u32.
    (hash % u64::from(count.max(1))) as u32
}

/// Shard `index` of `count`: written `I/N` on the command line (`--shard 0/4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Shard {
    pub fn new(index: u32, count: u32) -> Result<Self, SourceError> {
        if count == 0 || index >= count {
            return Err(SourceError::Shard {
                spec: format!("{index}/{count}"),
                reason: "expected I/N with N ≥ 1 and 0 ≤ I < N".into(),
            });
        }
        Ok(Self { index, count })
    }

    pub fn index(self) -> u32 {
        self.index
    }

    pub fn count(self) -> u32 {
        self.count
    }

    pub fn owns(self, doc_uri: &str) -> bool {
        shard_of(doc_uri, self.count) == self.index
    }

    /// A file-name-safe label, e.g. `shard-0-of-4`.
    pub fn label(self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = SourceError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| SourceError::Shard {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let (index, count) = spec
            .split_once('/')
            .ok_or_else(|| invalid("expected I/N, e.g. 0/4"))?;
        let index = index
            .trim()
            .parse()
            .map_err(|_| invalid("I is not a number"))?;
        let count = count
            .trim()
            .parse()
            .map_err(|_| invalid("N is not a number"))?;
        Shard::new(index, count).map_err(|_| invalid("expected N ≥ 1 and 0 ≤ I < N"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values computed independently (Python, FNV-1a 64 by hand); they must never
    /// change, or shards of a resumed run would disagree with the ones already committed.
    #[test]
    fn assignments_are_fixed() {
        let cases = [
            ("s3://bucket/a.pdf", 4, 3),
            ("s3://bucket/b.pdf", 4, 2),
            ("/data/docs/report 2024.pdf", 7, 6),
            ("", 3, 2),
        ];
        for (uri, count, expected) in cases {
            assert_eq!(shard_of(uri, count), expected, "{uri} of {count}");
        }
    }

    #[test]
    fn fnv1a_reference_vectors() {
        // Published FNV-1a 64 test vectors: "" → cbf29ce484222325, "a" → af63dc4c8601ec8c.
        assert_eq!(
            shard_of("", u32::MAX),
            (0xcbf2_9ce4_8422_2325u64 % u64::from(u32::MAX)) as u32
        );
        assert_eq!(
            shard_of("a", u32::MAX),
            (0xaf63_dc4c_8601_ec8cu64 % u64::from(u32::MAX)) as u32
        );
    }

    #[test]
    fn shards_partition_documents() {
        let uris: Vec<String> = (0..200).map(|i| format!("s3://b/doc-{i}.pdf")).collect();
        let shards: Vec<Shard> = (0..3).map(|i| Shard::new(i, 3).unwrap()).collect();
        for uri in &uris {
            let owners = shards.iter().filter(|s| s.owns(uri)).count();
            assert_eq!(owners, 1, "{uri}");
        }
        // Every shard gets a fair share of 200 documents.
        for shard in &shards {
            let owned = uris.iter().filter(|u| shard.owns(u)).count();
            assert!((40..=95).contains(&owned), "{shard}: {owned}");
        }
    }

    #[test]
    fn parses_and_rejects_specs() {
        assert_eq!("1/4".parse::<Shard>().unwrap(), Shard::new(1, 4).unwrap());
        for bad in ["4/4", "1", "a/2", "0/0", "-1/3"] {
            let err = bad.parse::<Shard>().unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert_eq!(Shard::new(2, 5).unwrap().label(), "shard-2-of-5");
    }
}
