//! Finding the pdfium shared library. `scripts/fetch-pdfium.sh` installs it into `.cache/pdfium/`
//! of the checkout; deployments put it next to the executable or name it in `PDFIUM_LIB`.

use std::path::{Path, PathBuf};

use pdfium_render::prelude::Pdfium;

/// The environment variable naming the pdfium library file; it wins over every other place.
pub const PDFIUM_LIB_ENV: &str = "PDFIUM_LIB";

/// The cache folder, relative to the current directory or to an ancestor of the executable.
pub const CACHE_DIR: &str = ".cache/pdfium";

/// Where the pdfium library was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibraryLocation {
    /// A library file at this path.
    File(PathBuf),
    /// Not found in any folder: leave it to the dynamic loader's search path.
    System,
}

/// Looks for the library in this order: `$PDFIUM_LIB` (which must then name an existing file),
/// next to the executable, `.cache/pdfium/` under the current directory and under each ancestor
/// of the executable, and last the system library path.
pub fn locate(
    env_value: Option<&std::ffi::OsStr>,
    current_dir: Option<&Path>,
    executable: Option<&Path>,
) -> Result<LibraryLocation, String> {
    let name = Pdfium::pdfium_platform_library_name();
    if let Some(value) = env_value.filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return if path.is_file() {
            Ok(LibraryLocation::File(path))
        } else {
            Err(format!(
                "{PDFIUM_LIB_ENV}={} is not a file; {}",
                path.display(),
                not_found_hint()
            ))
        };
    }
    let exe_dir = executable.and_then(Path::parent);
    let mut candidates: Vec<PathBuf> = exe_dir.map(|d| d.join(&name)).into_iter().collect();
    candidates.extend(current_dir.map(|d| d.join(CACHE_DIR).join(&name)));
    candidates.extend(
        exe_dir
            .into_iter()
            .flat_map(Path::ancestors)
            .map(|d| d.join(CACHE_DIR).join(&name)),
    );
    Ok(candidates
        .into_iter()
        .find(|c| c.is_file())
        .map(LibraryLocation::File)
        .unwrap_or(LibraryLocation::System))
}

/// The one line telling the user how to get a library.
pub fn not_found_hint() -> String {
    format!(
        "run `make setup` (or `bash scripts/fetch-pdfium.sh`) in the docpipe checkout, or set \
         {PDFIUM_LIB_ENV} to the path of {}",
        Pdfium::pdfium_platform_library_name().to_string_lossy()
    )
}

/// Binds pdfium from the location the lookup order gives for this process.
pub(crate) fn bind() -> Result<Pdfium, String> {
    let env = std::env::var_os(PDFIUM_LIB_ENV);
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    let bindings = match locate(env.as_deref(), cwd.as_deref(), exe.as_deref())? {
        LibraryLocation::File(path) => Pdfium::bind_to_library(&path)
            .map_err(|e| format!("cannot load {}: {e}; {}", path.display(), not_found_hint()))?,
        LibraryLocation::System => Pdfium::bind_to_system_library().map_err(|_| {
            format!(
                "{} is not in {PDFIUM_LIB_ENV}, next to the executable, in {CACHE_DIR}/ or on \
                 the system library path; {}",
                Pdfium::pdfium_platform_library_name().to_string_lossy(),
                not_found_hint()
            )
        })?,
    };
    Ok(Pdfium::new(bindings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn follows_the_documented_order() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let exe = root.join("checkout/target/debug/docpipe");
        let cwd = root.join("elsewhere");
        let lib = Pdfium::pdfium_platform_library_name();
        let in_ancestor = root.join("checkout").join(CACHE_DIR).join(&lib);
        let in_cwd = cwd.join(CACHE_DIR).join(&lib);
        let beside_exe = exe.parent().unwrap().join(&lib);
        let explicit = root.join("custom.so");
        let find = |env: Option<&Path>| locate(env.map(Path::as_os_str), Some(&cwd), Some(&exe));

        assert_eq!(find(None), Ok(LibraryLocation::System));
        touch(&in_ancestor);
        assert_eq!(find(None), Ok(LibraryLocation::File(in_ancestor)));
        touch(&in_cwd);
        assert_eq!(find(None), Ok(LibraryLocation::File(in_cwd)));
        touch(&beside_exe);
        assert_eq!(find(None), Ok(LibraryLocation::File(beside_exe)));
        assert!(find(Some(&explicit)).unwrap_err().contains(PDFIUM_LIB_ENV));
        touch(&explicit);
        assert_eq!(find(Some(&explicit)), Ok(LibraryLocation::File(explicit)));
    }
}
