//! Which files of a checkpoint repository docpipe needs: the configs, the tokenizer and chat
//! template files and the safetensors weights, never the other formats a repository may also
//! hold (`*.bin`, `*.onnx`, `*.gguf`, …), which can be larger than the checkpoint itself.

use std::collections::BTreeSet;

/// The small files fetched when the repository has them. `config.json` and the tokenizer are
/// required; the others are read when present.
pub const SMALL_FILES: &[&str] = &[
    CONFIG,
    "generation_config.json",
    TOKENIZER,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
];

/// The model configuration, read first (it names the family).
pub const CONFIG: &str = "config.json";
/// The tokenizer docpipe reads.
pub const TOKENIZER: &str = "tokenizer.json";
/// The index of a sharded checkpoint: its `weight_map` names the shards.
pub const INDEX: &str = "model.safetensors.index.json";
/// The weights of an unsharded checkpoint.
pub const SINGLE: &str = "model.safetensors";

/// How a checkpoint's weights are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weights {
    /// One `model.safetensors`.
    Single,
    /// `model.safetensors.index.json` and the shards it names.
    Sharded,
}

/// Why a file listing is not a checkpoint docpipe can run: the name of the missing file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub &'static str);

/// The small files to fetch from a listing of the repository (or folder), and how its weights
/// are stored; the index is among the small files of a sharded checkpoint.
pub fn plan<'a>(
    listing: impl IntoIterator<Item = &'a str>,
) -> Result<(Vec<&'static str>, Weights), Missing> {
    let present: BTreeSet<&str> = listing.into_iter().collect();
    for required in [CONFIG, TOKENIZER] {
        if !present.contains(required) {
            return Err(Missing(required));
        }
    }
    let mut small: Vec<&'static str> = SMALL_FILES
        .iter()
        .copied()
        .filter(|f| present.contains(f))
        .collect();
    let weights = if present.contains(INDEX) {
        small.push(INDEX);
        Weights::Sharded
    } else if present.contains(SINGLE) {
        Weights::Single
    } else {
        return Err(Missing(SINGLE));
    };
    Ok((small, weights))
}

/// The shard file names of an index file's `weight_map`, each once, in order.
pub fn shards(index: &[u8]) -> Result<Vec<String>, String> {
    let value: serde_json::Value = serde_json::from_slice(index).map_err(|e| e.to_string())?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("no weight_map object")?;
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| format!("weight_map entry {tensor} is not a file name"))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(format!(
                "weight_map names {file:?}, not a file of the checkpoint"
            ));
        }
        names.insert(file.to_owned());
    }
    Ok(names.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_files_and_safetensors_are_planned() {
        let listing = [
            "config.json",
            "tokenizer.json",
            "chat_template.jinja",
            "README.md",
            "pytorch_model.bin",
            "model.onnx",
            "model.safetensors",
        ];
        let (small, weights) = plan(listing).unwrap();
        assert_eq!(
            small,
            ["config.json", "tokenizer.json", "chat_template.jinja"]
        );
        assert_eq!(weights, Weights::Single);
        let (small, weights) =
            plan(["config.json", "tokenizer.json", INDEX, "model.safetensors"]).unwrap();
        assert_eq!(small, ["config.json", "tokenizer.json", INDEX]);
        assert_eq!(weights, Weights::Sharded);
    }

    #[test]
    fn a_listing_without_config_tokenizer_or_safetensors_names_what_is_missing() {
        assert_eq!(plan(["tokenizer.json"]), Err(Missing(CONFIG)));
        assert_eq!(plan(["config.json"]), Err(Missing(TOKENIZER)));
        assert_eq!(
            plan(["config.json", "tokenizer.json", "pytorch_model.bin"]),
            Err(Missing(SINGLE))
        );
    }

    #[test]
    fn shards_come_from_the_weight_map() {
        let index = br#"{"metadata": {}, "weight_map": {
            "a": "model-00002-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors",
            "c": "model-00001-of-00002.safetensors"}}"#;
        assert_eq!(
            shards(index).unwrap(),
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        assert!(shards(br#"{"weight_map": {"a": "../x"}}"#).is_err());
        assert!(shards(b"{}").is_err());
    }
}
