//! End-to-end tests of the render stage: the `docpipe render` command and the `RenderPool` API,
//! driving real worker processes (`docpipe render-worker`) with the pdfium from `make setup`.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use docpipe_render::worker::FAULT_ENV;
use docpipe_render::{
    png_file_name, DocumentOptions, RenderError, RenderPool, RenderPoolConfig, RenderedPage,
    WorkerCommand,
};
use image::RgbImage;

use crate::support::{docpipe, fixture, worker};

fn pool_with(workers: usize, command: WorkerCommand, timeout: Duration) -> RenderPool {
    ranged_pool(
        workers,
        RenderPoolConfig::DEFAULT_RANGE_PAGES,
        command,
        timeout,
    )
}

fn ranged_pool(
    workers: usize,
    range_pages: usize,
    command: WorkerCommand,
    timeout: Duration,
) -> RenderPool {
    RenderPool::new(RenderPoolConfig {
        workers,
        range_pages,
        longest_edge: 980,
        page_timeout: timeout,
        pixel_budget: 100_000_000,
        worker_command: command,
    })
    .expect("pool starts (run `make setup` first)")
}

fn pool(workers: usize) -> RenderPool {
    pool_with(workers, worker(), Duration::from_secs(60))
}

fn render_all(
    pool: &RenderPool,
    path: &Path,
    options: &DocumentOptions,
) -> Vec<Result<RenderedPage, RenderError>> {
    pool.render(path, options)
        .expect("document opens")
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn failure_lines(output: &Output) -> Vec<String> {
    stderr(output)
        .lines()
        .filter(|l| l.starts_with("failed: "))
        .map(str::to_string)
        .collect()
}

fn pngs_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Mean absolute difference over all channels, in 0..=255 units.
fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y) as u64)
        .sum();
    total as f64 / a.as_raw().len() as f64
}

/// Page sizes in points, as fixtures/make_pdfs.py makes them (after /Rotate).
fn page_sizes(stem: &str) -> Vec<(f64, f64)> {
    let a4 = (595.2756, 841.8898);
    match stem {
        "manual" => vec![a4; 3],
        "scan" | "form" => vec![a4],
        "landscape" => vec![(a4.1, a4.0); 2],
        "wide" => vec![(2400.0, 300.0)],
        other => panic!("unexpected fixture {other}"),
    }
}

#[test]
fn pages_match_pdfiums_own_rendering() {
    let pool = pool(2);
    for stem in ["manual", "scan", "form", "landscape", "wide"] {
        let sizes = page_sizes(stem);
        let pages = render_all(
            &pool,
            &fixture(&format!("pdfs/{stem}.pdf")),
            &DocumentOptions::default(),
        );
        assert_eq!(pages.len(), sizes.len(), "{stem}");
        for (page, (points_w, points_h)) in pages.into_iter().zip(sizes) {
            let page = page.unwrap_or_else(|e| panic!("{stem}: {e}"));
            assert_eq!(page.page_count as usize, page_sizes(stem).len());
            let (w, h) = page.image.dimensions();
            let (long, short, exact) = if points_w >= points_h {
                (w, h, points_h * 980.0 / points_w)
            } else {
                (h, w, points_w * 980.0 / points_h)
            };
            assert_eq!(long, 980, "{stem} page {}", page.page);
            assert!(
                (short as f64 - exact).abs() <= 1.0,
                "{stem} page {}: {short} vs {exact}",
                page.page
            );

            let reference = fixture(&format!(
                "render-reference/{stem}/page-{:04}.png",
                page.page
            ));
            let reference = image::open(&reference).unwrap().to_rgb8();
            assert_eq!(
                page.image.dimensions(),
                reference.dimensions(),
                "{stem} page {}",
                page.page
            );
            let mad = mean_abs_diff(&page.image, &reference);
            assert!(
                mad < 1.0,
                "{stem} page {}: mean abs diff {mad} (x/255)",
                page.page
            );
        }
    }
}

#[test]
fn pages_carry_the_text_layer_and_page_count() {
    let pool = pool(1);
    let pages = render_all(
        &pool,
        &fixture("pdfs/manual.pdf"),
        &DocumentOptions::default(),
    );
    let first = pages[0].as_ref().unwrap();
    assert_eq!((first.page, first.page_count), (1, 3));
    assert!(first.text.contains("Operating Manual"), "{:?}", first.text);
    assert!(pages[2].as_ref().unwrap().text.contains("page 3"));
    let scan = render_all(
        &pool,
        &fixture("pdfs/scan.pdf"),
        &DocumentOptions::default(),
    );
    assert_eq!(
        scan[0].as_ref().unwrap().text.trim(),
        "",
        "a scanned page has no text layer"
    );
}

#[test]
fn rasters_follow_the_longest_edge_rule() {
    let pool = pool(1);
    let render_one = |name: &str| {
        render_all(
            &pool,
            &fixture(&format!("images/{name}")),
            &DocumentOptions::default(),
        )
        .into_iter()
        .map(|p| p.unwrap().image)
        .collect::<Vec<_>>()
    };
    let photo = render_one("photo.jpg");
    assert_eq!(photo[0].dimensions(), (980, 653));
    let logo = render_one("logo.png");
    assert_eq!(logo[0].dimensions(), (980, 653));
    assert_eq!(
        logo[0].get_pixel(5, 5).0,
        [255, 255, 255],
        "transparency becomes white"
    );
    assert_eq!(
        logo[0].get_pixel(327, 327).0,
        [197, 90, 17],
        "opaque colours are kept"
    );
    let tiff = render_one("pages.tif");
    let sizes: Vec<_> = tiff.iter().map(|p| p.dimensions()).collect();
    assert_eq!(sizes, vec![(980, 735), (392, 980)]);
    assert_eq!(tiff[1].get_pixel(200, 500).0, [90, 90, 90]);
}

#[test]
fn page_selection_and_password() {
    let pool = pool(1);
    let encrypted = fixture("bad/encrypted.pdf");
    let options = DocumentOptions {
        pages: Some("2-".parse().unwrap()),
        password: Some("secret".into()),
    };
    let stream = pool.render(&encrypted, &options).unwrap();
    assert_eq!((stream.page_count(), stream.pages()), (3, &[2, 3][..]));
    let pages: Vec<u32> = stream.map(|p| p.unwrap().page).collect();
    assert_eq!(pages, vec![2, 3]);

    let open = |password: Option<&str>| {
        let options = DocumentOptions {
            pages: None,
            password: password.map(str::to_string),
        };
        pool.render(&encrypted, &options).err()
    };
    assert!(matches!(open(None), Some(RenderError::Encrypted { .. })));
    assert!(matches!(
        open(Some("guess")),
        Some(RenderError::WrongPassword { .. })
    ));
}

#[test]
fn bad_inputs_give_errors_of_the_right_kind() {
    let pool = pool(1);
    let open = |name: &str| pool.render(&fixture(name), &DocumentOptions::default());
    for name in ["bad/empty.pdf", "bad/not-a-pdf.pdf", "bad/truncated.pdf"] {
        let error = open(name).err().unwrap_or_else(|| panic!("{name} opened"));
        assert!(
            matches!(error, RenderError::NotADocument { .. }),
            "{name}: {error}"
        );
        assert!(
            error.to_string().contains(name.trim_start_matches("bad/")),
            "{error}"
        );
    }
    for name in ["bad/bomb.pdf", "bad/bomb-image.png"] {
        let pages: Vec<_> = open(name).unwrap().collect();
        assert_eq!(pages.len(), 1);
        match &pages[0] {
            Err(RenderError::PageTooLarge {
                page: 1,
                width: 40000,
                height: 40000,
                ..
            }) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    let mixed: Vec<_> = open("bad/mixed.pdf").unwrap().collect();
    assert_eq!(mixed.len(), 3, "a failed page does not end the document");
    assert_eq!(mixed[0].as_ref().unwrap().page, 1);
    assert!(
        matches!(mixed[1], Err(RenderError::PageTooLarge { page: 2, .. })),
        "{:?}",
        mixed[1]
    );
    assert_eq!(mixed[2].as_ref().unwrap().page, 3);
    // The worker is still usable after all of that.
    assert!(render_all(
        &pool,
        &fixture("pdfs/wide.pdf"),
        &DocumentOptions::default()
    )[0]
    .is_ok());
}

#[test]
fn crashed_and_hung_workers_are_replaced() {
    let run = |fault: &str, doc: &str| {
        let command = worker().env(FAULT_ENV, format!("{fault}:{doc}"));
        let pool = pool_with(1, command, Duration::from_secs(2));
        let faulty: Vec<_> = pool
            .render(
                &fixture(&format!("pdfs/{doc}")),
                &DocumentOptions::default(),
            )
            .unwrap()
            .collect();
        let good = render_all(
            &pool,
            &fixture("pdfs/manual.pdf"),
            &DocumentOptions::default(),
        );
        (faulty, good)
    };
    let (faulty, good) = run("crash", "form.pdf");
    assert_eq!(faulty.len(), 1, "a crash ends the document's stream");
    assert!(
        matches!(
            faulty[0],
            Err(RenderError::WorkerCrashed { page: Some(1), .. })
        ),
        "{:?}",
        faulty[0]
    );
    assert_eq!(good.len(), 3, "a fresh worker renders the next document");
    assert!(good.iter().all(Result::is_ok));

    let (faulty, good) = run("hang", "landscape.pdf");
    assert_eq!(
        faulty.len(),
        2,
        "every page of the killed worker's range fails"
    );
    assert!(
        matches!(faulty[0], Err(RenderError::Timeout { page: Some(1), .. })),
        "{:?}",
        faulty[0]
    );
    assert!(
        matches!(
            faulty[1],
            Err(RenderError::WorkerCrashed { page: Some(2), .. })
        ),
        "{:?}",
        faulty[1]
    );
    assert_eq!(good.len(), 3, "a fresh worker renders the next document");
    assert!(good.iter().all(Result::is_ok));
}

/// Writes a PDF of `pages` US-letter pages, each with its number in large type and a square
/// whose place depends on the number, so that pages differ and out-of-order output would show.
fn write_numbered_pdf(path: &Path, pages: usize) {
    let mut objects = vec![
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        format!(
            "<< /Type /Pages /Count {pages} /Kids [{}] >>",
            (0..pages)
                .map(|i| format!("{} 0 R", 4 + 2 * i))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    for i in 0..pages {
        let content = format!(
            "BT /F1 64 Tf 72 600 Td (Page {}) Tj ET 0 0 1 rg {} {} 80 80 re f",
            i + 1,
            72 + (i % 5) * 90,
            100 + (i % 7) * 60
        );
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {} 0 R \
             /Resources << /Font << /F1 3 0 R >> >> >>",
            5 + 2 * i
        ));
        objects.push(format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        ));
    }
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend(format!("{} 0 obj\n{object}\nendobj\n", i + 1).bytes());
    }
    let xref = pdf.len();
    pdf.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).bytes());
    for offset in offsets {
        pdf.extend(format!("{offset:010} 00000 n \n").bytes());
    }
    pdf.extend(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .bytes(),
    );
    std::fs::write(path, pdf).unwrap();
}

/// Every PNG of a `docpipe render` document folder, by name, with its bytes.
fn png_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    pngs_in(dir)
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

#[test]
fn one_document_spread_over_workers_gives_the_same_pages_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("numbered.pdf");
    write_numbered_pdf(&pdf, 23);
    let timeout = Duration::from_secs(60);
    let alone = render_all(&pool(1), &pdf, &DocumentOptions::default());
    let shared = render_all(
        &ranged_pool(3, 2, worker(), timeout),
        &pdf,
        &DocumentOptions::default(),
    );
    assert_eq!(shared.len(), 23);
    for (alone, shared) in alone.iter().zip(&shared) {
        let (alone, shared) = (alone.as_ref().unwrap(), shared.as_ref().unwrap());
        assert_eq!(shared.page, alone.page);
        assert_eq!(shared.page_count, 23);
        assert_eq!(shared.text, alone.text);
        assert_eq!(shared.image, alone.image, "page {}", alone.page);
    }
    let numbers: Vec<u32> = shared.iter().map(|p| p.as_ref().unwrap().page).collect();
    assert_eq!(numbers, (1..=23).collect::<Vec<_>>());

    let selection = DocumentOptions {
        pages: Some("2-4,9,15-".parse().unwrap()),
        ..DocumentOptions::default()
    };
    let pages = ranged_pool(2, 1, worker(), timeout)
        .render_to_png(&pdf, &selection, &dir.path().join("selected"))
        .unwrap();
    let numbers: Vec<u32> = pages.map(|p| p.unwrap().page).collect();
    assert_eq!(numbers, [2, 3, 4, 9, 15, 16, 17, 18, 19, 20, 21, 22, 23]);
}

#[test]
fn a_crash_or_hang_fails_only_the_range_of_its_worker() {
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("numbered.pdf");
    write_numbered_pdf(&pdf, 14);
    for (fault, first_error) in [("crash", "crashed"), ("hang", "timed out")] {
        let command = worker().env(FAULT_ENV, format!("{fault}:numbered.pdf@6"));
        let pool = ranged_pool(2, 4, command, Duration::from_secs(2));
        let pages = render_all(&pool, &pdf, &DocumentOptions::default());
        assert_eq!(pages.len(), 14, "{fault}");
        for (page, item) in (1..).zip(&pages) {
            match (page, item) {
                // Pages 5-8 are the second range; its worker dies on page 6.
                (1..=5 | 9.., Ok(rendered)) => assert_eq!(rendered.page, page),
                (6, Err(e)) => assert!(
                    e.page() == Some(6) && e.to_string().contains(first_error),
                    "{fault}: {e}"
                ),
                (7 | 8, Err(e @ RenderError::WorkerCrashed { .. })) => {
                    assert_eq!(e.page(), Some(page), "{fault}: {e}")
                }
                (page, other) => panic!("{fault}: page {page}: {other:?}"),
            }
        }
    }
}

#[test]
fn cli_spreads_one_document_over_workers_with_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("numbered.pdf");
    write_numbered_pdf(&pdf, 12);
    let render = |workers: &str, out: &str, env: &[(String, String)]| {
        let out = dir.path().join(out);
        let output = docpipe(
            &[
                "render",
                pdf.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--workers",
                workers,
                "--range-pages",
                "3",
            ],
            env,
        );
        (output, png_bytes(&out.join("numbered")))
    };
    let (one, alone) = render("1", "one", &[]);
    assert!(one.status.success(), "{}", stderr(&one));
    let (two, shared) = render("2", "two", &[]);
    assert!(two.status.success(), "{}", stderr(&two));
    assert_eq!(alone.len(), 12);
    assert!(alone == shared, "two workers wrote different files");

    let fault = [(FAULT_ENV.to_owned(), "crash:numbered.pdf@8".to_owned())];
    let (crashed, written) = render("2", "crashed", &fault);
    assert_eq!(crashed.status.code(), Some(1), "{}", stderr(&crashed));
    let failures = failure_lines(&crashed);
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert!(
        failures[0].contains("numbered.pdf page 8") && failures[0].contains("and 1 more"),
        "{failures:#?}"
    );
    let names: Vec<&str> = written.iter().map(|(name, _)| name.as_str()).collect();
    let expected: Vec<String> = [1, 2, 3, 4, 5, 6, 7, 10, 11, 12]
        .map(png_file_name)
        .to_vec();
    assert_eq!(
        names, expected,
        "pages 8-9 were left of the crashed worker's range"
    );
}

#[test]
fn documents_render_concurrently_and_abandoned_streams_free_their_worker() {
    let pool = pool(2);
    let mut stream = pool
        .render(&fixture("pdfs/manual.pdf"), &DocumentOptions::default())
        .unwrap();
    assert!(stream.next().unwrap().is_ok());
    drop(stream);
    let counts: Vec<usize> = std::thread::scope(|scope| {
        let handles: Vec<_> = ["manual", "landscape", "form", "wide", "scan"]
            .into_iter()
            .map(|stem| {
                let pool = pool.clone();
                scope.spawn(move || {
                    render_all(
                        &pool,
                        &fixture(&format!("pdfs/{stem}.pdf")),
                        &DocumentOptions::default(),
                    )
                    .into_iter()
                    .filter(Result::is_ok)
                    .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(counts, vec![3, 2, 1, 1, 1]);
}

#[test]
fn cli_renders_folders_and_reports_each_bad_file() {
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let output = docpipe(
        &[
            "render",
            "fixtures/pdfs",
            "fixtures/bad",
            "fixtures/images",
            "--out",
            out_dir,
            "--workers",
            "2",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let failures = failure_lines(&output);
    assert_eq!(failures.len(), 7, "{failures:#?}");
    for (name, reason) in [
        ("empty.pdf", "empty"),
        ("not-a-pdf.pdf", "not a readable document"),
        ("truncated.pdf", "not a readable document"),
        ("encrypted.pdf", "--password"),
        ("bomb.pdf", "pixel budget"),
        ("bomb-image.png", "pixel budget"),
        ("mixed.pdf", "page 2"),
    ] {
        assert!(
            failures
                .iter()
                .any(|l| l.contains(name) && l.contains(reason)),
            "{name}: {failures:#?}"
        );
    }
    let expected = [
        ("manual", 3),
        ("scan", 1),
        ("form", 1),
        ("landscape", 2),
        ("wide", 1),
        ("photo", 1),
        ("logo", 1),
        ("pages", 2),
    ];
    for (stem, pages) in expected {
        let names = pngs_in(&out.path().join(stem));
        let wanted: Vec<String> = (1..=pages).map(docpipe_render::png_file_name).collect();
        assert_eq!(names, wanted, "{stem}");
    }
    assert_eq!(
        pngs_in(&out.path().join("mixed")),
        vec!["page-0001.png", "page-0003.png"],
        "the pages around a failed page are written"
    );
    let first = image::open(out.path().join("manual/page-0001.png"))
        .unwrap()
        .to_rgb8();
    let reference = image::open(fixture("render-reference/manual/page-0001.png"))
        .unwrap()
        .to_rgb8();
    assert!(mean_abs_diff(&first, &reference) < 1.0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("rendered 8 of 15 documents (14 pages)"),
        "{stdout}"
    );
    assert!(stdout.contains("7 failed"), "{stdout}");
}

#[test]
fn cli_pages_password_and_exit_codes() {
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let ok = docpipe(
        &[
            "render",
            "fixtures/bad/encrypted.pdf",
            "--out",
            out_dir,
            "--pages",
            "1,3",
            "--password",
            "secret",
            "--longest-edge",
            "500",
        ],
        &[],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert_eq!(
        pngs_in(&out.path().join("encrypted")),
        vec!["page-0001.png", "page-0003.png"]
    );
    let page = image::open(out.path().join("encrypted/page-0003.png")).unwrap();
    assert_eq!((page.width(), page.height()), (354, 500));

    let wrong = docpipe(
        &[
            "render",
            "fixtures/bad/encrypted.pdf",
            "--out",
            out_dir,
            "--password",
            "nope",
        ],
        &[],
    );
    assert_eq!(wrong.status.code(), Some(1));
    assert_eq!(failure_lines(&wrong).len(), 1);
    assert!(failure_lines(&wrong)[0].contains("wrong password"));

    let usage = [
        vec!["render", "fixtures/pdfs"],
        vec!["render", "fixtures/no-such-folder", "--out", out_dir],
        vec![
            "render",
            "fixtures/pdfs",
            "--out",
            out_dir,
            "--pages",
            "3-1",
        ],
        vec![
            "render",
            "fixtures/pdfs",
            "--out",
            out_dir,
            "--workers",
            "0",
        ],
    ];
    for args in usage {
        assert_eq!(docpipe(&args, &[]).status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn cli_survives_crashing_and_hanging_documents() {
    for (fault, doc, reason) in [
        ("crash", "form.pdf", "crashed"),
        ("hang", "wide.pdf", "timed out"),
    ] {
        let out = tempfile::tempdir().unwrap();
        let setting = format!("{fault}:{doc}");
        let output = docpipe(
            &[
                "render",
                "fixtures/pdfs",
                "--out",
                out.path().to_str().unwrap(),
                "--workers",
                "1",
                "--page-timeout",
                "2",
            ],
            &[(FAULT_ENV.to_owned(), setting)],
        );
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        let failures = failure_lines(&output);
        assert_eq!(failures.len(), 1, "{failures:#?}");
        assert!(
            failures[0].contains(doc) && failures[0].contains(reason),
            "{failures:#?}"
        );
        assert_eq!(pngs_in(&out.path().join("manual")).len(), 3);
        assert_eq!(pngs_in(&out.path().join("landscape")).len(), 2);
    }
}

#[test]
fn cli_says_what_to_do_without_pdfium() {
    let out = tempfile::tempdir().unwrap();
    let output = docpipe(
        &[
            "render",
            "fixtures/pdfs",
            "--out",
            out.path().to_str().unwrap(),
        ],
        &[(
            "PDFIUM_LIB".to_owned(),
            "/nonexistent/libpdfium.so".to_owned(),
        )],
    );
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("PDFIUM_LIB") && lines[0].contains("make setup"),
        "{text}"
    );
}
