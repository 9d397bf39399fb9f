//! Sharding: which of N shards owns a document (FNV-1a 64 of its URI, fixed forever so that
//! shards on different machines and releases agree) and which shard this process is
//! (`--shard I/N` or the scheduler's environment variables; see docs/scale.md).
//!
//! It lives here rather than with the source because both ends of a run need it: the source
//! lists only the documents its shard owns, and the sink names parts and manifests after it.

use std::fmt;
use std::str::FromStr;

use crate::fnv1a64;

/// A shard that is not `I/N` with `N ≥ 1` and `0 ≤ I < N`, as written or as the scheduler's
/// variables give it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid shard {spec:?}: {reason}")]
pub struct InvalidShard {
    /// What was given, e.g. `4/4` or `SLURM_ARRAY_TASK_ID=x`.
    pub spec: String,
    /// What is wrong with it, e.g. which variable is not set.
    pub reason: String,
}

/// The shard (0-based) that owns a document among `count` shards.
///
/// The hash is FNV-1a 64 ([`fnv1a64`]) over the UTF-8 bytes of the URI, reduced modulo
/// `count`. It is fixed, never std's randomised hasher, because shards run as separate
/// processes, possibly on separate machines and releases, and must agree on who owns what.
/// `count` 0 is treated as 1.
pub fn shard_of(doc_uri: &str, count: u32) -> u32 {
    let hash = fnv1a64(&[doc_uri.as_bytes()]);
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
    /// Shard `index` of `count`; an error unless `count ≥ 1` and `index < count`.
    pub fn new(index: u32, count: u32) -> Result<Self, InvalidShard> {
        if count == 0 || index >= count {
            return Err(InvalidShard {
                spec: format!("{index}/{count}"),
                reason: "expected I/N with N ≥ 1 and 0 ≤ I < N".into(),
            });
        }
        Ok(Self { index, count })
    }

    /// This shard's 0-based index, below [`Shard::count`].
    pub fn index(self) -> u32 {
        self.index
    }

    /// How many shards the run is split into (N, at least 1).
    pub fn count(self) -> u32 {
        self.count
    }

    /// Whether this shard processes the document: [`shard_of`] of its URI is this shard's index.
    pub fn owns(self, doc_uri: &str) -> bool {
        shard_of(doc_uri, self.count) == self.index
    }

    /// A file-name-safe label, e.g. `shard-0-of-4`.
    pub fn label(self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }
}

/// The scheduler variables [`Shard::from_scheduler_env`] reads, as (index, count) pairs, in
/// order of precedence. A count of `None` means the scheduler does not export one (a Kubernetes
/// Indexed Job only knows its own index), so it comes from `--shards` or `DOCPIPE_SHARDS`.
const SCHEDULERS: [(&str, Option<&str>); 3] = [
    ("JOB_COMPLETION_INDEX", None),
    ("SLURM_ARRAY_TASK_ID", Some("SLURM_ARRAY_TASK_COUNT")),
    (
        "AWS_BATCH_JOB_ARRAY_INDEX",
        Some("AWS_BATCH_JOB_ARRAY_SIZE"),
    ),
];

/// The variable that gives the shard count to a Kubernetes Indexed Job.
const SHARDS_VAR: &str = "DOCPIPE_SHARDS";

impl Shard {
    /// The shard a scheduler assigned to this process, from its own environment variables:
    /// `JOB_COMPLETION_INDEX` (Kubernetes Indexed Job, count from `shards` or
    /// `DOCPIPE_SHARDS`), `SLURM_ARRAY_TASK_ID` + `SLURM_ARRAY_TASK_COUNT`, or
    /// `AWS_BATCH_JOB_ARRAY_INDEX` + `AWS_BATCH_JOB_ARRAY_SIZE`. `Ok(None)` when none is set:
    /// the run is not sharded.
    ///
    /// `lookup` reads a variable (`|k| std::env::var(k).ok()` in the binary), so the rules are
    /// tested without touching the process environment. `shards` (the `--shards` flag) wins over
    /// every count variable, so a job template can pin it. An index without a count, or an index
    /// that is not below the count, is an error naming the variables involved.
    pub fn from_scheduler_env(
        lookup: impl Fn(&str) -> Option<String>,
        shards: Option<u32>,
    ) -> Result<Option<Self>, InvalidShard> {
        let Some((index_var, count_var, index)) =
            SCHEDULERS.iter().find_map(|&(index_var, count_var)| {
                lookup(index_var).map(|value| (index_var, count_var, value))
            })
        else {
            return Ok(None);
        };
        let invalid = |spec: String, reason: String| InvalidShard { spec, reason };
        let index: u32 = index.trim().parse().map_err(|_| {
            invalid(
                format!("{index_var}={index}"),
                "not a non-negative number".into(),
            )
        })?;
        let (count_source, count) = match shards {
            Some(count) => ("--shards".to_owned(), count.to_string()),
            None => {
                let count_var = count_var.unwrap_or(SHARDS_VAR);
                let count = lookup(count_var).ok_or_else(|| {
                    invalid(
                        format!("{index_var}={index}"),
                        format!(
                            "{count_var} is not set (the number of shards; or pass --shards N)"
                        ),
                    )
                })?;
                (count_var.to_owned(), count)
            }
        };
        let count: u32 = count.trim().parse().map_err(|_| {
            invalid(
                format!("{count_source}={count}"),
                "not a non-negative number".into(),
            )
        })?;
        Shard::new(index, count).map(Some).map_err(|_| {
            invalid(
                format!("{index_var}={index}, {count_source}={count}"),
                "expected a count ≥ 1 and an index below it".into(),
            )
        })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = InvalidShard;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| InvalidShard {
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

    /// Scheduler variables, the `--shards` flag, and what to expect.
    type EnvCase<'a, T> = (&'a [(&'a str, &'a str)], Option<u32>, T);

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn from_env(vars: &[(&str, &str)], shards: Option<u32>) -> Result<Option<Shard>, InvalidShard> {
        Shard::from_scheduler_env(env(vars), shards)
    }

    #[test]
    fn scheduler_variables_give_the_shard() {
        let cases: [EnvCase<Option<(u32, u32)>>; 9] = [
            (&[], None, None),
            (&[("DOCPIPE_SHARDS", "4")], None, None),
            (
                &[("JOB_COMPLETION_INDEX", "2"), ("DOCPIPE_SHARDS", "4")],
                None,
                Some((2, 4)),
            ),
            (&[("JOB_COMPLETION_INDEX", "2")], Some(3), Some((2, 3))),
            // The flag wins over the variable.
            (
                &[("JOB_COMPLETION_INDEX", "0"), ("DOCPIPE_SHARDS", "4")],
                Some(2),
                Some((0, 2)),
            ),
            (
                &[
                    ("SLURM_ARRAY_TASK_ID", "5"),
                    ("SLURM_ARRAY_TASK_COUNT", "8"),
                ],
                None,
                Some((5, 8)),
            ),
            (
                &[
                    ("AWS_BATCH_JOB_ARRAY_INDEX", "0"),
                    ("AWS_BATCH_JOB_ARRAY_SIZE", "10"),
                ],
                None,
                Some((0, 10)),
            ),
            (
                &[
                    ("AWS_BATCH_JOB_ARRAY_INDEX", " 9 "),
                    ("AWS_BATCH_JOB_ARRAY_SIZE", "10"),
                ],
                None,
                Some((9, 10)),
            ),
            // Kubernetes first when a pod somehow carries several.
            (
                &[
                    ("SLURM_ARRAY_TASK_ID", "1"),
                    ("SLURM_ARRAY_TASK_COUNT", "2"),
                    ("JOB_COMPLETION_INDEX", "3"),
                    ("DOCPIPE_SHARDS", "5"),
                ],
                None,
                Some((3, 5)),
            ),
        ];
        for (vars, shards, expected) in cases {
            let shard = from_env(vars, shards).unwrap();
            assert_eq!(
                shard.map(|s| (s.index(), s.count())),
                expected,
                "{vars:?} {shards:?}"
            );
        }
    }

    #[test]
    fn scheduler_variables_are_checked() {
        let cases: [EnvCase<&str>; 6] = [
            (
                &[("JOB_COMPLETION_INDEX", "1")],
                None,
                "DOCPIPE_SHARDS is not set",
            ),
            (
                &[("SLURM_ARRAY_TASK_ID", "1")],
                None,
                "SLURM_ARRAY_TASK_COUNT is not set",
            ),
            (
                &[
                    ("AWS_BATCH_JOB_ARRAY_INDEX", "4"),
                    ("AWS_BATCH_JOB_ARRAY_SIZE", "4"),
                ],
                None,
                "AWS_BATCH_JOB_ARRAY_INDEX=4, AWS_BATCH_JOB_ARRAY_SIZE=4",
            ),
            (
                &[("JOB_COMPLETION_INDEX", "3")],
                Some(3),
                "JOB_COMPLETION_INDEX=3, --shards=3",
            ),
            (
                &[("JOB_COMPLETION_INDEX", "x"), ("DOCPIPE_SHARDS", "2")],
                None,
                "JOB_COMPLETION_INDEX=x",
            ),
            (
                &[("JOB_COMPLETION_INDEX", "0"), ("DOCPIPE_SHARDS", "two")],
                None,
                "DOCPIPE_SHARDS=two",
            ),
        ];
        for (vars, shards, expected) in cases {
            let err = from_env(vars, shards).unwrap_err();
            assert!(err.to_string().starts_with("invalid shard"), "{err:?}");
            assert!(err.to_string().contains(expected), "{vars:?}: {err}");
        }
    }

    /// The shards of a 4-way run over fixed URIs, computed independently (Python FNV-1a 64):
    /// whichever way the shard is chosen (flag or scheduler), the same documents go to it.
    #[test]
    fn scheduler_shard_owns_the_fixed_documents() {
        let shard = from_env(
            &[
                ("SLURM_ARRAY_TASK_ID", "3"),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
            ],
            None,
        )
        .unwrap()
        .unwrap();
        assert!(shard.owns("s3://bucket/a.pdf"));
        assert!(!shard.owns("s3://bucket/b.pdf"));
        assert_eq!(shard, "3/4".parse().unwrap());
    }
}
