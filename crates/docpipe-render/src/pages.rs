//! Which pages to render and at what size: [`PageSelection`] (`--pages 1-3,7,10-`) and
//! [`fit_longest_edge`], the sizing rule shared by the PDF and the raster renderers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which pages of a document to render: `1-3,7,10-` (1-based, inclusive, an open end runs to
/// the last page). Pages past the end of a document are skipped rather than reported, so one
/// selection can be applied to a folder of documents of different lengths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageSelection {
    ranges: Vec<(u32, Option<u32>)>,
}

/// Why a page selection string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid page selection {input:?}: {reason} (expected e.g. 1-3,7,10-)")]
pub struct PageSelectionError {
    input: String,
    reason: String,
}

impl PageSelection {
    /// The selected 1-based page numbers of a document with `page_count` pages, ascending and
    /// without duplicates.
    pub fn pages(&self, page_count: u32) -> Vec<u32> {
        let mut selected = vec![false; page_count as usize];
        for &(start, end) in &self.ranges {
            let end = end.unwrap_or(page_count).min(page_count);
            for page in start..=end {
                selected[page as usize - 1] = true;
            }
        }
        (1..=page_count)
            .filter(|&p| selected[p as usize - 1])
            .collect()
    }
}

impl FromStr for PageSelection {
    type Err = PageSelectionError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |reason: &str| PageSelectionError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let number = |text: &str| -> Result<u32, PageSelectionError> {
            match text.trim().parse::<u32>() {
                Ok(0) => Err(error("pages are numbered from 1")),
                Ok(n) => Ok(n),
                Err(_) => Err(error(&format!("{:?} is not a page number", text.trim()))),
            }
        };
        let mut ranges = Vec::new();
        for part in input.split(',') {
            let range = match part.split_once('-') {
                Some((start, end)) if end.trim().is_empty() => (number(start)?, None),
                Some((start, end)) => {
                    let (start, end) = (number(start)?, number(end)?);
                    if end < start {
                        return Err(error(&format!("range {start}-{end} runs backwards")));
                    }
                    (start, Some(end))
                }
                None => {
                    let page = number(part)?;
                    (page, Some(page))
                }
            };
            ranges.push(range);
        }
        Ok(PageSelection { ranges })
    }
}

impl fmt::Display for PageSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (start, end)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match end {
                Some(end) if end == start => write!(f, "{start}")?,
                Some(end) => write!(f, "{start}-{end}")?,
                None => write!(f, "{start}-")?,
            }
        }
        Ok(())
    }
}

/// The output size of a `width`×`height` page (points or pixels) whose longest edge becomes
/// `longest_edge` pixels: the aspect ratio is kept, the short edge rounded to the nearest
/// pixel and never below one.
pub fn fit_longest_edge(width: f64, height: f64, longest_edge: u32) -> (u32, u32) {
    let long = longest_edge as f64;
    let short = |a: f64, b: f64| ((a * long / b).round() as u32).clamp(1, longest_edge);
    if width >= height {
        (longest_edge, short(height, width))
    } else {
        (short(width, height), longest_edge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_singles_and_open_ends() {
        let selection: PageSelection = "1-3,7,10-".parse().unwrap();
        assert_eq!(selection.pages(12), vec![1, 2, 3, 7, 10, 11, 12]);
        assert_eq!(selection.to_string(), "1-3,7,10-");
    }

    #[test]
    fn skips_pages_past_the_end_and_merges_overlaps() {
        let selection: PageSelection = "2-5,3,9".parse().unwrap();
        assert_eq!(selection.pages(4), vec![2, 3, 4]);
        assert_eq!(selection.pages(1), Vec::<u32>::new());
    }

    #[test]
    fn rejects_bad_selections() {
        for bad in ["", "0", "3-1", "a", "1-2-", "1,,2", "-4"] {
            assert!(bad.parse::<PageSelection>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fits_the_longest_edge_and_keeps_the_ratio() {
        assert_eq!(fit_longest_edge(612.0, 792.0, 980), (757, 980));
        assert_eq!(fit_longest_edge(842.0, 595.0, 980), (980, 693));
        assert_eq!(fit_longest_edge(3000.0, 2.0, 980), (980, 1));
        assert_eq!(fit_longest_edge(100.0, 100.0, 980), (980, 980));
    }
}
