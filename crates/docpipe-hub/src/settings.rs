//! [`Settings`]: the environment variables of `huggingface_hub`, read the way it reads them, so
//! that docpipe and Python jobs on one machine share one cache, one token and one mirror.

use std::io::IsTerminal;
use std::path::PathBuf;

use docpipe_store::StoreOptions;

/// The hub's public endpoint, used unless `HF_ENDPOINT` names a mirror.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where checkpoints are fetched from and cached, and how.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HF_ENDPOINT`, else <https://huggingface.co>.
    pub endpoint: String,
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`; `HF_HOME` defaults to `$XDG_CACHE_HOME/huggingface`,
    /// else `~/.cache/huggingface`.
    pub hub_cache: PathBuf,
    /// `HF_TOKEN`, else the file `HF_TOKEN_PATH` names, else `$HF_HOME/token` (what
    /// `huggingface-cli login` writes).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE` set to `1`, `true`, `yes` or `on`: only the cache is used.
    pub offline: bool,
    /// Copies of object-store checkpoints: `DOCPIPE_MODEL_CACHE`, else
    /// `$XDG_CACHE_HOME/docpipe/models`, else `~/.cache/docpipe/models`.
    pub bucket_cache: PathBuf,
    /// Client and retry settings for object stores (credentials and endpoints come from the
    /// `AWS_*`, `GOOGLE_*` and `AZURE_*` variables, as for every store docpipe opens).
    pub store: StoreOptions,
    /// Whether downloads draw progress bars (stderr is a terminal).
    pub progress: bool,
}

impl Settings {
    /// The settings of this process's environment.
    pub fn from_env() -> Settings {
        let mut settings = Settings::from_vars(|key| std::env::var(key).ok());
        settings.progress = std::io::stderr().is_terminal();
        settings
    }

    /// The settings a set of variables gives (`get` returns a variable's value), with the default
    /// store options and without progress bars.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Settings {
        let get = |key: &str| get(key).filter(|value| !value.trim().is_empty());
        let home = || PathBuf::from(get("HOME").unwrap_or_else(|| "/tmp".into()));
        let cache_home = get("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home().join(".cache"));
        let hf_home = get("HF_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_home.join("huggingface"));
        let hub_cache = get("HF_HUB_CACHE")
            .or_else(|| get("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token_file = get("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("token"));
        let token = get("HF_TOKEN")
            .or_else(|| std::fs::read_to_string(token_file).ok())
            .map(|token| token.trim().to_owned())
            .filter(|token| !token.is_empty());
        let offline = get("HF_HUB_OFFLINE").is_some_and(|value| {
            matches!(
                value.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        Settings {
            endpoint: get("HF_ENDPOINT")
                .map(|endpoint| endpoint.trim_end_matches('/').to_owned())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()),
            hub_cache,
            token,
            offline,
            bucket_cache: get("DOCPIPE_MODEL_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| cache_home.join("docpipe/models")),
            store: StoreOptions::default(),
            progress: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Settings {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_vars(|key| vars.get(key).cloned())
    }

    #[test]
    fn defaults_are_those_of_huggingface_hub() {
        let s = settings(&[("HOME", "/home/u")]);
        assert_eq!(s.endpoint, "https://huggingface.co");
        assert_eq!(s.hub_cache, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(
            s.bucket_cache,
            PathBuf::from("/home/u/.cache/docpipe/models")
        );
        assert_eq!(s.token, None);
        assert!(!s.offline);
    }

    #[test]
    fn variables_override_in_the_order_of_huggingface_hub() {
        let s = settings(&[
            ("HOME", "/home/u"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HF_ENDPOINT", "http://mirror:8080/"),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_TOKEN", " hf_abc\n"),
        ]);
        assert_eq!(s.endpoint, "http://mirror:8080");
        assert_eq!(s.hub_cache, PathBuf::from("/xdg/huggingface/hub"));
        assert_eq!(s.bucket_cache, PathBuf::from("/xdg/docpipe/models"));
        assert_eq!(s.token.as_deref(), Some("hf_abc"));
        assert!(s.offline);
        let s = settings(&[("HF_HOME", "/hf"), ("HF_HUB_OFFLINE", "0")]);
        assert_eq!(s.hub_cache, PathBuf::from("/hf/hub"));
        assert!(!s.offline);
        let s = settings(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/cache")]);
        assert_eq!(s.hub_cache, PathBuf::from("/cache"));
    }

    #[test]
    fn the_token_file_is_read_when_hf_token_is_unset() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("token"), "hf_from_login\n").unwrap();
        let hf_home = home.path().display().to_string();
        assert_eq!(
            settings(&[("HF_HOME", &hf_home)]).token.as_deref(),
            Some("hf_from_login")
        );
        assert_eq!(
            settings(&[("HF_HOME", &hf_home), ("HF_TOKEN", "hf_env")])
                .token
                .as_deref(),
            Some("hf_env")
        );
        let elsewhere = home.path().join("other");
        std::fs::write(&elsewhere, "hf_path").unwrap();
        let elsewhere = elsewhere.display().to_string();
        assert_eq!(
            settings(&[("HF_HOME", "/none"), ("HF_TOKEN_PATH", &elsewhere)])
                .token
                .as_deref(),
            Some("hf_path")
        );
    }
}
