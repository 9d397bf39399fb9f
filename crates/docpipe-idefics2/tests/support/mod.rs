//! Shared test helpers: a small `.npy` reader and the fixture paths.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A little-endian, C-order `.npy` array of f32 (`<f4`) or u8/bool (`|u1`, `|b1`) values,
/// converted to f32.
pub struct Npy {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub fn read_npy(path: &Path) -> Npy {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not an npy file",
        path.display()
    );
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let body = &bytes[start + header_len..];
    let data: Vec<f32> = if header.contains("'<f4'") {
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    } else if header.contains("'|u1'") || header.contains("'|b1'") {
        body.iter().map(|&b| b as f32).collect()
    } else {
        panic!("{}: unsupported dtype in {header}", path.display())
    };
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "{}",
        path.display()
    );
    Npy { shape, data }
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/idefics2")
}

pub const MODELS: &[&str] = &["tiny-gqa-split", "tiny-mha-nosplit", "tiny-chatty"];

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn reference_dir(name: &str) -> PathBuf {
    fixtures().join("reference").join(name)
}

pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// transformers 5's extra prompt rule (see the crate docs): a space after a closing fake token
/// that is directly followed by anything but whitespace or `<`.
pub fn transformers5_spacing(text: &str) -> String {
    const FAKE: &str = "<fake_token_around_image>";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find(FAKE) {
        out.push_str(&rest[..pos + FAKE.len()]);
        rest = &rest[pos + FAKE.len()..];
        if rest
            .chars()
            .next()
            .is_some_and(|c| !c.is_whitespace() && c != '<')
        {
            out.push(' ');
        }
    }
    out.push_str(rest);
    out
}
